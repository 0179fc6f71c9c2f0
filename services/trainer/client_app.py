"""The Flower ClientApp: local training, local evaluation, then explanations.

A training message carries the previous round's global model (with model-transfer=store,
it names the model's checkpoint in the run's store, and the trained model goes back the same
way; see ``fedxai.model_transfer``); when its config names
an ``evaluate-round``, the trainer evaluates that model and has it explained before it
trains on it, and the reply carries the evaluation. The aggregator asks for that when
every node trains and evaluates every round; the last round's model, and every round's
otherwise, comes in an evaluation message of its own.

Flower starts a fresh process per message, so nothing is kept in module state:
the data split is recomputed (deterministically) and the outbox lives on disk.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from logging import INFO
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import log
from torch import nn

from fedxai import learning
from fedxai.attacks import poison
from fedxai.data import Dataset, fit_to, load_pool, partition, train_validation_split
from fedxai.delivery import Delivery, Outbox, deliver
from fedxai.model_transfer import TransferError, put_model, read_model
from fedxai.models import Architecture, architectures
from fedxai.settings import TRAINER_STATE_DIR_VARIABLE, SettingsError, StorageSettings, explainer_token
from fedxai.storage import ObjectStore, open_store
from fedxai.storage.layout import update_model_key
from fedxai.task import CAM_METHODS, TaskConfig, validate_id_setting
from fedxai.v1 import explainer_pb2 as pb
from services.trainer.explainer_link import build_request

app = ClientApp()


@dataclass(frozen=True)
class Node:
    """This SuperNode's identity, from its ``--node-config``."""

    partition_id: int
    num_partitions: int
    client_id: str
    state_dir: Path
    data_dir: str

    @classmethod
    def from_node_config(cls, config: dict, env: Mapping[str, str]) -> Node:
        try:
            partition_id, num_partitions = int(config["partition-id"]), int(config["num-partitions"])
        except KeyError as missing:
            raise SettingsError(f"node config lacks {missing.args[0]}") from None
        if not 0 <= partition_id < num_partitions:
            raise SettingsError(f"partition-id {partition_id} is outside [0, num-partitions={num_partitions})")
        client_id = str(config.get("client-id") or f"client-{partition_id}")
        validate_id_setting("client-id", client_id, client=True)
        states = Path(env.get(TRAINER_STATE_DIR_VARIABLE) or Path.home() / ".cache" / "fedxai")
        state_dir = Path(str(config.get("state-dir") or states / client_id))
        return cls(partition_id, num_partitions, client_id, state_dir, str(config.get("data-dir", "")))


@dataclass(frozen=True)
class Local:
    """What a message works on: the task, this node, the received model and the node's data."""

    task: TaskConfig
    node: Node
    arch: Architecture
    model: nn.Module
    train_data: Dataset
    validation: Dataset
    class_names: tuple[str, ...]
    # With model-transfer=store, the run's store (opened once for the message), which the
    # models come and go through; None when they travel in the messages.
    store: ObjectStore | None


def _setup(msg: Message, context: Context) -> Local:
    task = TaskConfig.from_run_config(context.run_config)
    node = Node.from_node_config(dict(context.node_config), os.environ)
    arch = architectures()[task.architecture]
    pool = load_pool(
        task.dataset,
        node.data_dir or task.data_dir,
        arch,
        task.test_fraction,
        task.seed,
        task.max_samples,
        fit_federated=False,  # only this node's share is fitted, below
    )
    share = partition(
        pool.federated,
        node.partition_id,
        node.num_partitions,
        task.partitioning,
        task.dirichlet_alpha,
        task.seed,
    )
    train_data, validation = train_validation_split(
        fit_to(share, arch.input_shape), task.validation_fraction, task.seed + node.partition_id
    )
    config = msg.content.config_records["config"]
    store = open_store(StorageSettings.from_env(os.environ)) if "model-key" in config else None
    model = arch.factory()
    if store is None:
        model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    else:
        model.load_state_dict(global_model(config, store))
    return Local(task, node, arch, model, train_data, validation, pool.class_names, store)


def global_model(config: ConfigRecord, store: ObjectStore) -> dict[str, torch.Tensor]:
    """With model-transfer=store: the checkpoint a message's ``config`` names, read from
    ``store``, which must be the aggregator's."""
    try:
        return read_model(store, str(config["model-key"]), str(config["model-sha256"]))
    except TransferError as error:
        raise SettingsError(
            f"model-transfer=store: {error}. A trainer must use the aggregator's store "
            "(FEDXAI_OUTPUT_DIR or FEDXAI_S3_*); else run with model-transfer=message"
        ) from None


def put_update(
    config: ConfigRecord, task_name: str, client_id: str, state_dict: Mapping[str, torch.Tensor], store: ObjectStore
) -> ConfigRecord:
    """With model-transfer=store: puts the model trained in the round ``config`` names in
    ``store``, where the aggregator reads it; the record that names it in the reply."""
    key = update_model_key(task_name, str(config["run-id"]), int(config["server-round"]), client_id)  # type: ignore[arg-type]
    return ConfigRecord({"key": key, "sha256": put_model(store, key, state_dict)})


def _reply(msg: Message, node: Node, metrics: MetricRecord, arrays: ArrayRecord | None = None) -> Message:
    content = RecordDict({"metrics": metrics, "client": ConfigRecord({"client-id": node.client_id})})
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    local = _setup(msg, context)
    task, node, arch, model, train_data = local.task, local.node, local.arch, local.model, local.train_data
    config = msg.content.config_records["config"]
    server_round = int(config["server-round"])  # type: ignore[arg-type]
    # The model received is the previous round's global model: when the aggregator asks,
    # it is evaluated (and explained) here first, sparing a message of its own.
    evaluation = None
    if "evaluate-round" in config:
        evaluation = _evaluate_and_explain(local, config, int(config["evaluate-round"]))  # type: ignore[arg-type]
    if task.attack != "none" and node.partition_id == task.attack_client:
        train_data = poison(train_data, task.attack, task.seed + node.partition_id)
    log(INFO, "%s: round %d, training on %d samples", node.client_id, server_round, len(train_data))
    started = time.perf_counter()
    scores = learning.train(
        model,
        train_data,
        arch,
        epochs=task.local_epochs,
        batch_size=task.batch_size,
        learning_rate=task.learning_rate,
        optimizer_name=task.optimizer,
        seed=task.seed + 1000 * server_round + node.partition_id,
    )
    metrics = MetricRecord(
        {
            "train-loss": scores.loss,
            "train-accuracy": scores.accuracy,
            "num-examples": scores.examples,
            "train-seconds": time.perf_counter() - started,
        }
    )
    if local.store is not None:  # the global model came through the store: the trained one goes back so
        reply = _reply(msg, node, metrics)
        reply.content["update"] = put_update(config, task.task_name, node.client_id, model.state_dict(), local.store)
    else:
        reply = _reply(msg, node, metrics, ArrayRecord(model.state_dict()))
    if evaluation is not None:
        # A config record: Flower's FedAvg takes exactly one metric record from a training reply.
        reply.content["evaluation"] = ConfigRecord(dict(evaluation))
    return reply


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    local = _setup(msg, context)
    config = msg.content.config_records["config"]
    metrics = _evaluate_and_explain(local, config, int(config["server-round"]))  # type: ignore[arg-type]
    return _reply(msg, local.node, metrics)


def _evaluate_and_explain(local: Local, config: ConfigRecord, evaluated_round: int) -> MetricRecord:
    """Evaluates the received model (the global model of ``evaluated_round``) on this
    node's validation split and, with XAI on, has it explained."""
    task, node, arch, model, validation = local.task, local.node, local.arch, local.model, local.validation
    started = time.perf_counter()
    scores = learning.evaluate(model, validation, arch)
    evaluated = time.perf_counter()
    delivery = Delivery()
    if task.xai_enabled:
        # The aggregator picks which clients explain each round (fraction-explain); the
        # others still send what their outbox holds from earlier rounds.
        request: pb.ExplainRequest | None = None
        if bool(config.get("explain", True)):
            request = build_request(
                task_id=task.task_name,
                # The aggregator names the run when `flwr run` left it unnamed.
                run_id=str(config.get("run-id", task.run_id)),
                round_number=evaluated_round,
                client_id=node.client_id,
                arch=arch,
                model=model,
                data=validation,
                class_names=local.class_names,
                per_class=task.samples_per_class,
                cam_method=CAM_METHODS[task.cam_method],
            )
        # The aggregator stored the model it sent for evaluation: naming that
        # checkpoint spares sending the weights, and the explainer decodes a
        # model all trainers share once.
        checkpoint = None
        if "checkpoint-key" in config:
            checkpoint = pb.ModelRef(
                key=str(config["checkpoint-key"]),
                architecture=arch.name,
                sha256=str(config["checkpoint-sha256"]),
            )
        outbox = Outbox(node.state_dir / "outbox")
        delivery = deliver(
            task.explainer_address,
            task.explainer_timeout,
            outbox,
            request,
            task.explainer_ca_file,
            checkpoint,
            token=explainer_token(os.environ),
        )
    return MetricRecord(
        {
            "eval-loss": scores.loss,
            "eval-accuracy": scores.accuracy,
            "num-examples": scores.examples,
            "xai-sent": delivery.sent,
            "xai-stored": delivery.stored,
            "xai-queued": delivery.queued,
            "xai-rejected": delivery.rejected,
            "xai-blank": delivery.blank,
            "xai-weak": delivery.weak,
            "eval-seconds": evaluated - started,
            "xai-seconds": time.perf_counter() - evaluated,
        }
    )
