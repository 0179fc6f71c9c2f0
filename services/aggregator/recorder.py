"""Everything the aggregator keeps about a run: global checkpoints and
``<task>/metrics.json``, rewritten after every round."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from fedxai import learning
from fedxai.data import Dataset
from fedxai.models import Architecture
from fedxai.storage import ObjectStore
from fedxai.storage.layout import global_model_key, metrics_key
from fedxai.task import TaskConfig
from fedxai.tensors import encode_state_dict, sha256_hex

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


def _client_metrics(replies: Iterable[Message]) -> dict[str, dict[str, Any]]:
    """Each valid reply's metrics under the client id it reported."""
    found = {}
    for reply in replies:
        if reply.has_error():
            continue
        client = (
            str(reply.content["client"]["client-id"]) if "client" in reply.content else str(reply.metadata.src_node_id)
        )
        found[client] = dict(reply.content.metric_records["metrics"])
    return found


class RunRecorder:
    def __init__(self, store: ObjectStore, task: TaskConfig, arch: Architecture, test_data: Dataset) -> None:
        self.store = store
        self.task = task
        self.arch = arch
        self.test_data = test_data
        self.round_started = time.monotonic()
        self.document: dict[str, Any] = {
            "task": task.task_name,
            "status": "running",
            "num_rounds": task.num_server_rounds,
            "started_at": _now(),
            "updated_at": _now(),
            "config": task.to_run_config(),
            "rounds": [],
        }
        self._pending: dict[str, Any] = {}
        self._checkpoints: dict[int, tuple[str, str]] = {}

    def start_round(self) -> None:
        self.round_started = time.monotonic()

    def record_train(self, replies: list[Message], aggregated: MetricRecord | None) -> None:
        self._pending["train"] = dict(aggregated or {})
        for client, metrics in _client_metrics(replies).items():
            self._pending.setdefault("clients", {}).setdefault(client, {})["train"] = metrics

    def record_evaluate(self, replies: list[Message], aggregated: MetricRecord | None) -> None:
        clients = _client_metrics(replies)
        self._pending["evaluate"] = {k: v for k, v in dict(aggregated or {}).items() if k not in XAI_COUNTS}
        self._pending["xai"] = {
            key.removeprefix("xai-"): int(sum(m.get(key, 0) for m in clients.values())) for key in XAI_COUNTS
        }
        for client, metrics in clients.items():
            self._pending.setdefault("clients", {}).setdefault(client, {})["evaluate"] = metrics

    def checkpoint(self, server_round: int, arrays: ArrayRecord) -> tuple[str, str]:
        """Stores the round's global model, once; returns its key and SHA-256."""
        if server_round not in self._checkpoints:
            key = global_model_key(self.task.task_name, server_round)
            metadata = {"architecture": self.arch.name, "task": self.task.task_name, "round": str(server_round)}
            data = encode_state_dict(arrays.to_torch_state_dict(), metadata)
            self.store.put(key, data, "application/octet-stream", metadata=metadata)
            self._checkpoints[server_round] = (key, sha256_hex(data))
        return self._checkpoints[server_round]

    def evaluate_global(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Flower's centralised evaluation, called last in every round: tests the
        global model, makes sure its checkpoint is stored and rewrites metrics.json."""
        model = self.arch.factory()
        model.load_state_dict(arrays.to_torch_state_dict())
        scores = learning.evaluate(model, self.test_data, self.arch)
        entry: dict[str, Any] = {
            "round": server_round,
            "global": {"loss": scores.loss, "accuracy": scores.accuracy, "examples": scores.examples},
        }
        if server_round > 0:
            entry["checkpoint"], entry["checkpoint_sha256"] = self.checkpoint(server_round, arrays)
            entry["seconds"] = round(time.monotonic() - self.round_started, 3)
            entry.update(self._pending)
            self._pending = {}
        self.document["rounds"].append(entry)
        self._write()
        return MetricRecord({"accuracy": scores.accuracy, "loss": scores.loss})

    def finish(self, status: str) -> None:
        self.document["status"] = status
        self._write()

    def _write(self) -> None:
        self.document["updated_at"] = _now()
        data = json.dumps(self.document, indent=2).encode()
        self.store.put(metrics_key(self.task.task_name), data, "application/json")


class RecordingFedAvg(FedAvg):
    """FedAvg that hands each round's per-client replies to the recorder."""

    def __init__(self, recorder: RunRecorder, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.recorder = recorder

    def configure_train(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
        self.recorder.start_round()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
        replies = list(replies)
        arrays, metrics = super().aggregate_train(server_round, replies)
        self.recorder.record_train(replies, metrics)
        return arrays, metrics

    def configure_evaluate(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
        # Trainers evaluate exactly this model: they can name its checkpoint to
        # the explainer instead of sending the weights.
        config["checkpoint-key"], config["checkpoint-sha256"] = self.recorder.checkpoint(server_round, arrays)
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):  # type: ignore[no-untyped-def]
        replies = list(replies)
        metrics = super().aggregate_evaluate(server_round, replies)
        self.recorder.record_evaluate(replies, metrics)
        return metrics
