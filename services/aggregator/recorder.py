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
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp.strategy import FedAvg

from fedxai import learning
from fedxai.data import Dataset
from fedxai.errors import InvalidArgument
from fedxai.model_transfer import TransferError, put_model, read_model
from fedxai.models import Architecture
from fedxai.records import RoundRecord, RunRecord, RunStatus
from fedxai.storage import ObjectStore
from fedxai.storage.layout import global_model_key, metrics_key, update_model_key
from fedxai.task import TaskConfig
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


def evaluation_of(reply: Message) -> dict[str, Any]:
    """A reply's evaluation of the model it received: an evaluation reply's metrics, or
    what a training reply carries under "evaluation" when it evaluated before training."""
    if reply.metadata.message_type == MessageType.TRAIN:
        return dict(reply.content.config_records["evaluation"])
    return dict(reply.content.metric_records["metrics"])


def _reason(reply: Message) -> str:
    return reply.error.reason or f"Flower error code {reply.error.code}"


def _flat_update(trained: ArrayRecord, start: dict[str, np.ndarray]) -> np.ndarray:
    """A client's weight update: its trained weights minus the round's starting ones, flattened."""
    arrays = dict(zip(trained.keys(), trained.to_numpy_ndarrays(), strict=True))
    flat = np.concatenate([(arrays[name] - value).ravel() for name, value in start.items()])
    return flat.astype(np.float32, copy=False)


def models_from_store(
    store: ObjectStore, task: TaskConfig, server_round: int, replies: list[Message]
) -> tuple[list[Message], dict[int, str]]:
    """With model-transfer=store: the replies whose trained model the store gives back as
    they name it, the model put in their content (and deleted from the store: it is
    averaged now), and, by node, why the others' could not be read (they are left out).
    Replies that carry their model, or none, are kept as they are."""
    received, failed = [], {}
    for reply in replies:
        if reply.has_error() or "update" not in reply.content:
            received.append(reply)
            continue
        named = reply.content.config_records["update"]
        try:
            key = update_model_key(task.task_name, task.run_id, server_round, client_of(reply))
            if str(named.get("key")) != key:  # a trainer puts its own model, nobody else's
                raise TransferError(f"its reply names {str(named.get('key'))!r}, not {key}")
            state = read_model(store, key, str(named.get("sha256")))
        except (TransferError, InvalidArgument) as error:
            failed[reply.metadata.src_node_id] = f"its trained model: {error}"
            continue
        store.delete(key)
        reply.content["arrays"] = ArrayRecord(state)
        received.append(reply)
    return received, failed


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
        # By round: what its entry will hold, gathered until the global model's test writes it.
        self._pending: dict[int, dict[str, Any]] = {}
        # The global model's test runs beside the next round, one round after another.
        self._tests = ThreadPoolExecutor(max_workers=1, thread_name_prefix="global-test")
        self._tested: list[Future] = []
        self._checkpoints: dict[int, tuple[str, str]] = {}
        self._client_by_node: dict[int, str] = {}
        # By round, then node id: the failures not yet filed under a client id.
        self._failures: dict[int, dict[int, dict[str, str]]] = {}
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

    def record_explaining(self, server_round: int, explaining: dict[str, Any]) -> None:
        self._update_round(server_round, {"explaining": explaining})

    def record_exclusion(self, server_round: int, excluded: list[str], note: str) -> None:
        self._update_round(server_round, {"excluded": excluded, "exclusion": note})

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

    def record_train(
        self, server_round: int, replies: list[Message], aggregated: MetricRecord | None, sent_to: set[int]
    ) -> None:
        clients = {client: {"train": metrics} for client, metrics in _client_metrics(replies).items()}
        self._update_round(server_round, {"train": dict(aggregated or {}), "clients": clients})
        self._record_failures(server_round, "train", replies, sent_to)

    def record_evaluate(
        self,
        server_round: int,
        replies: list[Message],
        aggregated: MetricRecord | None,
        sent_to: set[int],
        in_round: int,
    ) -> None:
        """The clients' evaluation of the global model of ``server_round``, which came in
        round ``in_round``: in that round's own replies, or in the next round's training
        replies (see ``evaluation_of``)."""
        clients = {client_of(reply): evaluation_of(reply) for reply in replies if not reply.has_error()}
        part: dict[str, Any] = {
            "evaluated_in_round": in_round,
            "evaluate": {k: v for k, v in dict(aggregated or {}).items() if k not in XAI_COUNTS},
            "xai": {key.removeprefix("xai-"): int(sum(m.get(key, 0) for m in clients.values())) for key in XAI_COUNTS},
            "clients": {client: {"evaluate": metrics} for client, metrics in clients.items()},
        }
        self._update_round(server_round, part)
        self._record_failures(server_round, "evaluate", replies, sent_to)
        if in_round != server_round:  # the round is over: its reader should see why now
            self._name_failures(known_only=True)

    def awaits_evaluation(self, server_round: int) -> bool:
        """Whether ``server_round`` (a round of training, not round 0) is recorded, but
        not yet its clients' evaluation."""
        entry = self._written(server_round)
        return server_round >= 1 and entry is not None and "evaluate" not in entry

    def _written(self, server_round: int) -> dict[str, Any] | None:
        with self._lock:
            found = [entry for entry in self.document["rounds"] if entry["round"] == server_round]
            return cast(dict[str, Any], found[0]) if found else None

    def _update_round(self, server_round: int, part: dict[str, Any]) -> None:
        """Merges ``part`` into the round's entry, one level deep (and per client), or
        into what the entry will hold if the round is not recorded yet."""
        with self._lock:
            entry = self._written(server_round)
            target = self._pending.setdefault(server_round, {}) if entry is None else entry
            for key, value in part.items():
                if key == "clients":
                    for client, record in value.items():
                        kept = target.setdefault("clients", {}).setdefault(client, {})
                        kept.update({**record, "failed": {**kept.get("failed", {}), **record.get("failed", {})}})
                        if not kept["failed"]:
                            del kept["failed"]
                elif isinstance(value, dict):
                    target.setdefault(key, {}).update(value)
                else:
                    target[key] = value
            if entry is not None:
                self._write()

    def record_failure(self, server_round: int, node: int, stage: str, reason: str) -> None:
        """Notes why a node that replied is left out of the round's ``stage`` nonetheless."""
        self._failures.setdefault(server_round, {}).setdefault(node, {})[stage] = reason

    def _record_failures(self, server_round: int, stage: str, replies: list[Message], sent_to: set[int]) -> None:
        """Notes why each node ``sent_to`` did not answer (an error carries the node id
        at most), and which client each node that answered is."""
        failures = self._failures.setdefault(server_round, {})
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
                failures.setdefault(node, {})[stage] = _reason(reply)
        answered = {reply.metadata.src_node_id for reply in replies}
        for node in sorted(sent_to - answered):
            reason = for_gone_nodes.pop() if for_gone_nodes else "no reply before the round's timeout"
            failures.setdefault(node, {})[stage] = reason

    def _name_failures(self, known_only: bool = False) -> None:
        """Files the failures under client ids: at the end of a round, once its replies have
        told which node is which (a node new to a resumed run fails before it says), under
        the node id if not; with ``known_only``, those of the nodes known already."""
        for server_round, failures in self._failures.items():
            nodes = [node for node in failures if not known_only or node in self._client_by_node]
            named = {self._client_by_node.get(node, f"node {node}"): {"failed": failures.pop(node)} for node in nodes}
            self._update_round(server_round, {"clients": named})
        self._failures = {server_round: failures for server_round, failures in self._failures.items() if failures}

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
            self._checkpoints[server_round] = (key, put_model(self.store, key, arrays.to_torch_state_dict(), metadata))
        return self._checkpoints[server_round]

    def evaluate_global(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's centralised evaluation, called last in every round: makes sure the
        global model's checkpoint is stored and has the model tested beside the next
        round, its entry written to metrics.json then. Flower needs no figures back."""
        self._raise_failed_test()
        recorded = self._written(server_round)
        if recorded is not None:  # the round a resumed run starts from
            return MetricRecord({"accuracy": recorded["global"]["accuracy"], "loss": recorded["global"]["loss"]})
        entry: dict[str, Any] = {"round": server_round}
        if server_round > 0:
            entry["checkpoint"], entry["checkpoint_sha256"] = self.checkpoint(server_round, arrays)
            entry["seconds"] = round(time.monotonic() - self.round_started, 3)
            entry["server_seconds"] = round(self._server_seconds, 3)
            self._name_failures()
        self._tested.append(self._tests.submit(self._test, entry, arrays.to_torch_state_dict()))
        return None

    def _test(self, entry: dict[str, Any], state: dict[str, Any]) -> None:
        """In the test thread: tests the global model and writes the round's entry."""
        started = time.monotonic()
        model = self.arch.factory()
        model.load_state_dict(state)
        scores = learning.evaluate(model, self.test_data, self.arch)
        entry["global"] = {"loss": scores.loss, "accuracy": scores.accuracy, "examples": scores.examples}
        if entry["round"] > 0:
            entry["global_test_seconds"] = round(time.monotonic() - started, 3)
        with self._lock:
            entry.update(self._pending.pop(entry["round"], {}))
            self.document["rounds"].append(cast(RoundRecord, entry))
            self._write()

    def _raise_failed_test(self) -> None:
        for test in [test for test in self._tested if test.done()]:
            self._tested.remove(test)
            test.result()  # raises what the test raised

    def settle(self) -> None:
        """Waits for the global models' tests still running; raises what one raised."""
        self._tests.shutdown(wait=True)
        self._raise_failed_test()

    def finish(self, status: RunStatus, queued: int = 0, reason: str | None = None) -> None:
        self._tests.shutdown(wait=True)  # their entries come first
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
    ``exclude_flagged``, leaves out the updates whose explanations are outliers.

    When every round trains and evaluates on every node (fraction-train and
    fraction-evaluate 1, the default), the nodes evaluate a round's global model at
    the start of the next round's training message, which carries that model anyway,
    rather than in a message of its own: a round is then one exchange with each node,
    not two, each of which costs Flower's transfers and polling. The last round's
    model is evaluated in an evaluation message."""

    def __init__(
        self, recorder: RunRecorder, probe: ProbeExplainer | None, exclude_flagged: bool, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.recorder = recorder
        self.probe = probe
        self.exclude_flagged = exclude_flagged
        self.folds_evaluation = self.fraction_train == 1.0 and self.fraction_evaluate == 1.0
        self._round_start: dict[str, np.ndarray] = {}
        self._sent_to: set[int] = set()  # the nodes the last message of each kind went to
        self._folded: int | None = None  # the round whose evaluation this round's training messages carry
        self._deferred: int | None = None  # the round whose evaluation waits for the next training messages
        # Flower counts a resumed run's rounds from 1 again; the run's own numbers go on.
        self.round_offset = recorder.task.resume_after_round

    def _drawn(self, server_round: int, names: list, count: int, kind: str) -> list:
        """``count`` of ``names``, drawn with the task's seed anew each round (``kind``
        keeps the draws of clients and of updates apart)."""
        draw = random.Random(f"{self.recorder.task.seed}-{server_round}-{kind}")
        return sorted(draw.sample(sorted(names), min(count, len(names))))

    def evaluate_fn(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """The recorder's evaluation of the global model, under the run's round number."""
        return self.recorder.evaluate_global(server_round + self.round_offset, arrays)

    def configure_train(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
        self.recorder.start_round()
        with self.recorder.server_work():
            return self._configure_train(server_round + self.round_offset, arrays, config, grid)

    def _configure_train(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
        self._round_start = dict(zip(arrays.keys(), arrays.to_numpy_ndarrays(), strict=True))
        # ``arrays`` is the previous round's global model (or, resumed, the one continued from,
        # which the run's first attempt may have recorded before its clients evaluated it).
        evaluated = server_round - 1
        resumed_unevaluated = server_round == self.round_offset + 1 and self.recorder.awaits_evaluation(evaluated)
        folds = self._deferred == evaluated or (self.folds_evaluation and resumed_unevaluated)
        self._folded = evaluated if folds else None
        if self._folded is not None:
            # A copy: Flower hands every round the same config record.
            config = ConfigRecord({**config, **self._evaluation_config(evaluated, arrays), "evaluate-round": evaluated})
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._sent_to = {message.metadata.dst_node_id for message in messages}
        if self._folded is not None:
            messages = self._tell_who_explains(evaluated, messages, arrays, config, MessageType.TRAIN)
        return self._delivered(evaluated, messages, arrays)

    def aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
        with self.recorder.server_work():
            return self._aggregate_train(server_round + self.round_offset, list(replies))

    def _aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
        if self._folded is not None:
            evaluated = [reply for reply in replies if reply.has_error() or "evaluation" in reply.content]
            self._record_evaluation(self._folded, evaluated, in_round=server_round)
        with_models, failed = models_from_store(self.recorder.store, self.recorder.task, server_round, replies)
        for node, reason in failed.items():
            self.recorder.record_failure(server_round, node, "train", reason)
        trained = {
            client_of(r): r.content.array_records["arrays"]
            for r in with_models
            if not r.has_error() and "arrays" in r.content.array_records
        }
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
            self.recorder.record_explaining(server_round, {"updates": len(sample), "updates_of": len(trained)})
            explained = self.probe.explain_updates(
                server_round, {client: trained[client].to_torch_state_dict() for client in sample}
            )
        kept = with_models
        if self.exclude_flagged:
            kept = self._without_flagged(server_round, with_models, sample, explained)
        arrays, metrics = super().aggregate_train(server_round, kept)
        self.recorder.record_train(server_round, replies, metrics, self._sent_to)
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
            note = "not checked: the updates' explanations were not delivered"
            self.recorder.record_exclusion(server_round, [], note)
            return replies
        note = f"left out of the average: {', '.join(flagged) or 'none'}"
        self.recorder.record_exclusion(server_round, flagged, note)
        return [reply for reply in replies if reply.has_error() or client_of(reply) not in flagged]

    def configure_evaluate(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
        with self.recorder.server_work():
            return self._configure_evaluate(server_round + self.round_offset, arrays, config, grid)

    def _configure_evaluate(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
        self._deferred = None
        if self.folds_evaluation and server_round < self.recorder.task.num_server_rounds:
            self._deferred = server_round  # to the next round's training messages
            return []
        config.update(self._evaluation_config(server_round, arrays))
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        self._sent_to = {message.metadata.dst_node_id for message in messages}
        messages = self._tell_who_explains(server_round, messages, arrays, config, MessageType.EVALUATE)
        return self._delivered(server_round, messages, arrays)

    def _delivered(self, model_round: int, messages: list[Message], arrays: ArrayRecord) -> list[Message]:
        """``messages``; with model-transfer=store, copies that name the checkpoint of
        ``arrays``, the global model of ``model_round``, instead of carrying it (its key and
        SHA-256), and the run the trainers put their trained models in."""
        task = self.recorder.task
        if task.model_transfer != "store":
            return messages
        key, sha256 = self.recorder.checkpoint(model_round, arrays)
        named = {"model-key": key, "model-sha256": sha256, "run-id": task.run_id}
        delivered = []
        for message in messages:
            content = RecordDict({name: r for name, r in message.content.items() if name != self.arrayrecord_key})
            config = message.content.config_records[self.configrecord_key]
            content[self.configrecord_key] = ConfigRecord({**config, **named})
            metadata = message.metadata
            delivered.append(Message(content, dst_node_id=metadata.dst_node_id, message_type=metadata.message_type))
        return delivered

    def _evaluation_config(self, server_round: int, arrays: ArrayRecord) -> dict[str, Any]:
        """What a node needs to evaluate the global model of ``server_round`` and have it explained."""
        key, sha256 = self.recorder.checkpoint(server_round, arrays)
        # Trainers evaluate exactly this model: they can name its checkpoint to
        # the explainer instead of sending the weights. The run id says where their explanations go.
        run_id = self.recorder.task.run_id
        return {"checkpoint-key": key, "checkpoint-sha256": sha256, "run-id": run_id, "explain": True}

    def _tell_who_explains(
        self, server_round: int, messages: list[Message], arrays: ArrayRecord, config: ConfigRecord, kind: str
    ) -> list[Message]:
        """``messages``, the ones to the nodes not drawn to explain (fraction-explain)
        with a config that says not to."""
        task = self.recorder.task
        if not task.xai_enabled:
            return messages
        # Rounded first: 0.07 * 100 is 7.000000000000001 in floating point, which is 7 clients.
        count = min(math.ceil(round(task.fraction_explain * len(messages), 9)), task.max_explained_clients)
        explaining = set(self._drawn(server_round, sorted(self._sent_to), count, "clients"))
        self.recorder.record_explaining(
            server_round,
            {
                "clients": len(explaining),
                "of": len(messages),
                "fraction_explain": task.fraction_explain,
                "max_explained_clients": task.max_explained_clients,
            },
        )
        # Flower's messages share one payload: the others get a copy that says not to explain.
        quiet = RecordDict(
            {self.arrayrecord_key: arrays, self.configrecord_key: ConfigRecord({**config, "explain": False})}
        )
        return [
            m
            if m.metadata.dst_node_id in explaining
            else Message(content=quiet, dst_node_id=m.metadata.dst_node_id, message_type=kind)
            for m in messages
        ]

    def aggregate_evaluate(self, server_round, replies):  # type: ignore[no-untyped-def]
        if self._deferred is not None:
            return None
        with self.recorder.server_work():
            server_round += self.round_offset
            return self._record_evaluation(server_round, list(replies), in_round=server_round)

    def _record_evaluation(self, server_round: int, replies: list[Message], in_round: int) -> MetricRecord | None:
        """Aggregates the clients' evaluation of the global model of ``server_round`` and records it."""
        valid = [RecordDict({"metrics": MetricRecord(evaluation_of(r))}) for r in replies if not r.has_error()]
        metrics = self.evaluate_metrics_aggr_fn(valid, self.weighted_by_key) if valid else None
        self.recorder.record_evaluate(server_round, replies, metrics, self._sent_to, in_round)
        return metrics
