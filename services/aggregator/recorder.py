"""Everything the aggregator keeps about a run: global checkpoints and the run's
``metrics.json``, rewritten after every round and whenever a round's comparisons
of explanations come in."""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, wait
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp.strategy import FedAvg

from fedxai import learning
from fedxai.data import Dataset
from fedxai.models import Architecture
from fedxai.records import RoundRecord, RunRecord, RunStatus
from fedxai.storage import ObjectStore
from fedxai.storage.layout import global_model_key, metrics_key
from fedxai.task import TaskConfig
from fedxai.tensors import encode_state_dict, sha256_hex
from services.aggregator.comparison import weight_outliers
from services.aggregator.probe import ProbeExplainer

# Client metrics that are counts, summed per round rather than averaged.
XAI_COUNTS = (
    "xai-sent",
    "xai-stored",
    "xai-queued",
    "xai-rejected",
    "xai-blank",
    "xai-weak",
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def client_of(reply: Message) -> str:
    """The client id a reply reports (its node id if it reports none)."""
    if "client" in reply.content:
        return str(reply.content["client"]["client-id"])
    return str(reply.metadata.src_node_id)


def _client_metrics(replies: Iterable[Message]) -> dict[str, dict[str, Any]]:
    """Each valid reply's metrics under the client id it reported."""
    return {
        client_of(reply): dict(reply.content.metric_records["metrics"]) for reply in replies if not reply.has_error()
    }


def _reason(reply: Message) -> str:
    return reply.error.reason or f"Flower error code {reply.error.code}"


def _flat_update(trained: ArrayRecord, start: dict[str, np.ndarray]) -> np.ndarray:
    """A client's weight update: its trained weights minus the round's starting ones, flattened."""
    arrays = dict(zip(trained.keys(), trained.to_numpy_ndarrays(), strict=True))
    return np.concatenate([(arrays[name] - value).ravel() for name, value in start.items()]).astype(np.float32)


class RunRecorder:
    """Writes the run's ``metrics.json``: a new one, or, with ``previous``, the record of
    a run that continues after round ``task.resume_after_round``."""

    def __init__(
        self,
        store: ObjectStore,
        task: TaskConfig,
        arch: Architecture,
        test_data: Dataset,
        previous: RunRecord | None = None,
        class_names: tuple[str, ...] = (),  # the dataset's; empty: the architecture's
    ) -> None:
        self.store = store
        self.task = task
        self.arch = arch
        self.test_data = test_data
        self.round_started = time.monotonic()
        self._server_seconds = 0.0  # this round's, so far
        self.document: RunRecord = {
            "task": task.task_name,
            "run_id": task.run_id,
            "status": "running",
            "num_rounds": task.num_server_rounds,
            "started_at": _now(),
            "updated_at": _now(),
            "finished_at": None,
            "reason": None,  # why a failed run failed
            "config": task.to_run_config(),
            "class_names": list(class_names or (arch.class_name(label) for label in range(arch.num_classes))),
            "rounds": [],
        }
        self._pending: dict[str, Any] = {}
        self._checkpoints: dict[int, tuple[str, str]] = {}
        self._client_by_node: dict[int, str] = {}
        self._failures: dict[int, dict[str, str]] = {}  # this round's, by node id
        # By round: comparisons of the probe-set maps, which may come in after the
        # round's entry (or before it), and of the weight updates.
        self._comparisons: dict[int, dict[str, Any]] = {}
        # The delivery lane records comparisons while the round goes on.
        self._lock = threading.RLock()
        if previous is not None:
            self._continue(previous)

    def _continue(self, previous: RunRecord) -> None:
        """Keeps the rounds up to the one the run continues after; the later ones,
        cut short, are done again."""
        after = self.task.resume_after_round
        kept = [entry for entry in previous["rounds"] if entry["round"] <= after]
        self.document["started_at"] = previous["started_at"]
        self.document["rounds"] = kept
        self.document["resumed"] = [*previous.get("resumed", []), {"after_round": after, "at": _now()}]
        for entry in kept:
            if "checkpoint" in entry:
                self._checkpoints[entry["round"]] = (entry["checkpoint"], entry["checkpoint_sha256"])
            if "comparison" in entry:
                self._comparisons[entry["round"]] = entry["comparison"]

    def describe_probe(self, probe: dict[str, Any]) -> None:
        self.document["probe"] = probe
        self._write()

    def record_comparison(self, server_round: int, comparison: dict[str, Any]) -> None:
        with self._lock:
            self._comparisons.setdefault(server_round, {}).update(comparison)
            self._write()

    def record_explaining(self, explaining: dict[str, Any]) -> None:
        self._pending.setdefault("explaining", {}).update(explaining)

    def record_exclusion(self, excluded: list[str], note: str) -> None:
        self._pending["excluded"] = excluded
        self._pending["exclusion"] = note

    def start_round(self) -> None:
        self.round_started = time.monotonic()
        self._server_seconds = 0.0

    @contextmanager
    def server_work(self) -> Iterator[None]:
        """Counts the time spent inside as the aggregator's own work in the round."""
        started = time.monotonic()
        try:
            yield
        finally:
            self._server_seconds += time.monotonic() - started

    def record_train(self, replies: list[Message], aggregated: MetricRecord | None, sent_to: set[int]) -> None:
        self._pending["train"] = dict(aggregated or {})
        for client, metrics in _client_metrics(replies).items():
            self._client(client)["train"] = metrics
        self._record_failures("train", replies, sent_to)

    def record_evaluate(self, replies: list[Message], aggregated: MetricRecord | None, sent_to: set[int]) -> None:
        self._record_failures("evaluate", replies, sent_to)
        clients = _client_metrics(replies)
        self._pending["evaluate"] = {k: v for k, v in dict(aggregated or {}).items() if k not in XAI_COUNTS}
        self._pending["xai"] = {
            key.removeprefix("xai-"): int(sum(m.get(key, 0) for m in clients.values())) for key in XAI_COUNTS
        }
        for client, metrics in clients.items():
            self._client(client)["evaluate"] = metrics

    def _client(self, client: str) -> dict[str, Any]:
        return self._pending.setdefault("clients", {}).setdefault(client, {})

    def _record_failures(self, stage: str, replies: list[Message], sent_to: set[int]) -> None:
        """Notes why each node ``sent_to`` did not answer (an error carries the node id
        at most), and which client each node that answered is."""
        # The SuperLink answers for a node that went away; its error names the message, not the node.
        for_gone_nodes = []
        for reply in replies:
            node = reply.metadata.src_node_id
            if not reply.has_error():
                if "client" in reply.content:
                    self._client_by_node[node] = client_of(reply)
            elif node == SUPERLINK_NODE_ID:
                for_gone_nodes.append(_reason(reply))
            else:
                self._failures.setdefault(node, {})[stage] = _reason(reply)
        answered = {reply.metadata.src_node_id for reply in replies}
        for node in sorted(sent_to - answered):
            reason = for_gone_nodes.pop() if for_gone_nodes else "no reply before the round's timeout"
            self._failures.setdefault(node, {})[stage] = reason

    def _name_failures(self) -> None:
        """Files the round's failures under client ids, once the round's replies have
        told which node is which (a node new to a resumed run fails before it says)."""
        for node, failed in self._failures.items():
            self._client(self._client_by_node.get(node, f"node {node}"))["failed"] = failed
        self._failures = {}

    def checkpoint(self, server_round: int, arrays: ArrayRecord) -> tuple[str, str]:
        """Stores the round's global model, once; returns its key and SHA-256."""
        if server_round not in self._checkpoints:
            key = global_model_key(self.task.task_name, self.task.run_id, server_round)
            metadata = {
                "architecture": self.arch.name,
                "task": self.task.task_name,
                "run": self.task.run_id,
                "round": str(server_round),
            }
            data = encode_state_dict(arrays.to_torch_state_dict(), metadata)
            self.store.put(key, data, "application/octet-stream", metadata=metadata)
            self._checkpoints[server_round] = (key, sha256_hex(data))
        return self._checkpoints[server_round]

    def evaluate_global(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Flower's centralised evaluation, called last in every round: tests the
        global model, makes sure its checkpoint is stored and rewrites metrics.json."""
        started = time.monotonic()
        recorded = [entry for entry in self.document["rounds"] if entry["round"] == server_round]
        if recorded:  # the round a resumed run starts from
            return MetricRecord({"accuracy": recorded[0]["global"]["accuracy"], "loss": recorded[0]["global"]["loss"]})
        model = self.arch.factory()
        model.load_state_dict(arrays.to_torch_state_dict())
        scores = learning.evaluate(model, self.test_data, self.arch)
        entry: dict[str, Any] = {
            "round": server_round,
            "global": {"loss": scores.loss, "accuracy": scores.accuracy, "examples": scores.examples},
        }
        if server_round > 0:
            entry["checkpoint"], entry["checkpoint_sha256"] = self.checkpoint(server_round, arrays)
            now = time.monotonic()
            entry["seconds"] = round(now - self.round_started, 3)
            entry["server_seconds"] = round(self._server_seconds + now - started, 3)
            self._name_failures()
            entry.update(self._pending)
            self._pending = {}
        with self._lock:
            self.document["rounds"].append(cast(RoundRecord, entry))
            self._write()
        return MetricRecord({"accuracy": scores.accuracy, "loss": scores.loss})

    def finish(self, status: RunStatus, queued: int = 0, reason: str | None = None) -> None:
        with self._lock:
            self.document["status"] = status
            self.document["finished_at"] = _now()
            self.document["reason"] = reason
            if "probe" in self.document:
                self.document["probe"]["queued"] = queued
            self._write()

    def _write(self) -> None:
        with self._lock:
            self.document["updated_at"] = _now()
            for entry in self.document["rounds"]:
                if entry["round"] in self._comparisons:
                    entry["comparison"] = self._comparisons[entry["round"]]
            data = json.dumps(self.document, indent=2).encode()
            self.store.put(metrics_key(self.task.task_name, self.task.run_id), data, "application/json")


class RecordingFedAvg(FedAvg):
    """FedAvg that hands each round's per-client replies to the recorder, has the
    updates and the aggregate explained on the probe set (``probe``), and, with
    ``exclude_flagged``, leaves out the updates whose explanations are outliers."""

    def __init__(
        self, recorder: RunRecorder, probe: ProbeExplainer | None, exclude_flagged: bool, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.recorder = recorder
        self.probe = probe
        self.exclude_flagged = exclude_flagged
        self._round_start: dict[str, np.ndarray] = {}
        self._sent_to: set[int] = set()  # the nodes the last message of each kind went to
        # Flower counts a resumed run's rounds from 1 again; the run's own numbers go on.
        self.round_offset = recorder.task.resume_after_round

    def _drawn(self, server_round: int, names: list, count: int, kind: str) -> list:
        """``count`` of ``names``, drawn with the task's seed anew each round (``kind``
        keeps the draws of clients and of updates apart)."""
        draw = random.Random(f"{self.recorder.task.seed}-{server_round}-{kind}")
        return sorted(draw.sample(sorted(names), min(count, len(names))))

    def evaluate_fn(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """The recorder's evaluation of the global model, under the run's round number."""
        return self.recorder.evaluate_global(server_round + self.round_offset, arrays)

    def configure_train(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
        self.recorder.start_round()
        with self.recorder.server_work():
            return self._configure_train(server_round + self.round_offset, arrays, config, grid)

    def _configure_train(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
        self._round_start = dict(zip(arrays.keys(), arrays.to_numpy_ndarrays(), strict=True))
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._sent_to = {message.metadata.dst_node_id for message in messages}
        return messages

    def aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
        with self.recorder.server_work():
            return self._aggregate_train(server_round + self.round_offset, list(replies))

    def _aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
        trained = {client_of(r): r.content["arrays"] for r in replies if not r.has_error() and "arrays" in r.content}
        if len(trained) >= 2:
            updates = {client: _flat_update(arrays, self._round_start) for client, arrays in trained.items()}
            weights = weight_outliers(updates, self.recorder.task.flag_threshold)
            self.recorder.record_comparison(server_round, {"weights": weights})
        explained, sample = [], list(trained)
        if self.probe is not None:
            # Every update is explained, to catch the one that misbehaves (fraction-explain is for
            # the trainers' own explanations), up to max-explained-clients of them.
            cap = self.recorder.task.max_explained_clients
            sample = self._drawn(server_round, list(trained), cap, "updates")
            self.recorder.record_explaining({"updates": len(sample), "updates_of": len(trained)})
            explained = self.probe.explain_updates(
                server_round, {client: trained[client].to_torch_state_dict() for client in sample}
            )
        kept = replies
        if self.exclude_flagged:
            kept = self._without_flagged(server_round, replies, sample, explained)
        arrays, metrics = super().aggregate_train(server_round, kept)
        self.recorder.record_train(replies, metrics, self._sent_to)
        if self.probe is not None and arrays is not None:
            self.probe.explain_global(
                server_round, arrays.to_torch_state_dict(), self.recorder.checkpoint(server_round, arrays)
            )
        return arrays, metrics

    def _without_flagged(
        self, server_round: int, replies: list[Message], clients: list[str], explained: list[Future]
    ) -> list[Message]:
        """The replies to aggregate: all but the flagged ones among ``clients`` (those
        whose updates were explained), once their explanations are in (the round waits)."""
        wait(explained)
        flagged = self.probe.maps.flagged(server_round, clients) if self.probe is not None else None
        if flagged is None:
            self.recorder.record_exclusion([], "not checked: the updates' explanations were not delivered")
            return replies
        self.recorder.record_exclusion(flagged, f"left out of the average: {', '.join(flagged) or 'none'}")
        return [reply for reply in replies if reply.has_error() or client_of(reply) not in flagged]

    def configure_evaluate(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
        with self.recorder.server_work():
            return self._configure_evaluate(server_round + self.round_offset, arrays, config, grid)

    def _configure_evaluate(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
        task = self.recorder.task
        # Trainers evaluate exactly this model: they can name its checkpoint to
        # the explainer instead of sending the weights.
        config["checkpoint-key"], config["checkpoint-sha256"] = self.recorder.checkpoint(server_round, arrays)
        config["run-id"] = task.run_id  # where their explanations go
        config["explain"] = True
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        self._sent_to = {message.metadata.dst_node_id for message in messages}
        if not task.xai_enabled:
            return messages
        # Rounded first: 0.07 * 100 is 7.000000000000001 in floating point, which is 7 clients.
        count = min(math.ceil(round(task.fraction_explain * len(messages), 9)), task.max_explained_clients)
        explaining = set(self._drawn(server_round, sorted(self._sent_to), count, "clients"))
        self.recorder.record_explaining(
            {
                "clients": len(explaining),
                "of": len(messages),
                "fraction_explain": task.fraction_explain,
                "max_explained_clients": task.max_explained_clients,
            }
        )
        # Flower's messages share one payload: the others get a copy that says not to explain.
        quiet = RecordDict(
            {self.arrayrecord_key: arrays, self.configrecord_key: ConfigRecord({**config, "explain": False})}
        )
        return [
            m
            if m.metadata.dst_node_id in explaining
            else Message(content=quiet, dst_node_id=m.metadata.dst_node_id, message_type=MessageType.EVALUATE)
            for m in messages
        ]

    def aggregate_evaluate(self, server_round, replies):  # type: ignore[no-untyped-def]
        with self.recorder.server_work():
            replies = list(replies)
            metrics = super().aggregate_evaluate(server_round + self.round_offset, replies)
            self.recorder.record_evaluate(replies, metrics, self._sent_to)
            return metrics
