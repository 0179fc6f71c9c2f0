"""A bare Flower app: FedAvg over the same CNN, data and training as FedXAI.

It times each round (train and evaluate on the clients, aggregation) into the
run config's ``timing-file`` for the benchmark to read.
"""

import json
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedxai import learning
from fedxai.data import load_pool, partition, train_validation_split
from fedxai.models import MNIST_CNN

ARCH = MNIST_CNN
client = ClientApp()
server = ServerApp()


def _local(msg: Message, context: Context):
    config = context.run_config
    partition_id, partitions = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    pool = load_pool("mnist", str(config["data-dir"]), ARCH, 0.2, int(config["seed"]), int(config["max-samples"]))
    share = partition(pool.federated, partition_id, partitions, "iid", 0.5, int(config["seed"]))
    train_data, validation = train_validation_split(share, 0.2, int(config["seed"]) + partition_id)
    model = ARCH.factory()
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    return config, model, train_data, validation


@client.train()
def train(msg: Message, context: Context) -> Message:
    config, model, train_data, _ = _local(msg, context)
    server_round = int(msg.content.config_records["config"]["server-round"])
    started = time.perf_counter()
    scores = learning.train(
        model,
        train_data,
        ARCH,
        epochs=int(config["local-epochs"]),
        batch_size=int(config["batch-size"]),
        learning_rate=float(config["learning-rate"]),
        optimizer_name="sgd",
        seed=int(config["seed"]) + 1000 * server_round + int(context.node_config["partition-id"]),
    )
    metrics = {"num-examples": scores.examples, "train-seconds": time.perf_counter() - started}
    return Message(
        RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)}), reply_to=msg
    )


@client.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    _, model, _, validation = _local(msg, context)
    started = time.perf_counter()
    scores = learning.evaluate(model, validation, ARCH)
    metrics = {
        "eval-accuracy": scores.accuracy,
        "num-examples": scores.examples,
        "eval-seconds": time.perf_counter() - started,
    }
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


class TimedFedAvg(FedAvg):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rounds: list[dict] = []
        self.started = 0.0

    def configure_train(self, server_round, arrays, config, grid):
        self.started = time.monotonic()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        arrays, metrics = super().aggregate_train(server_round, replies)
        self.rounds.append({"round": server_round, "train": dict(metrics or {})})
        return arrays, metrics

    def aggregate_evaluate(self, server_round, replies):
        metrics = super().aggregate_evaluate(server_round, replies)
        self.rounds[-1].update(evaluate=dict(metrics or {}), seconds=time.monotonic() - self.started)
        return metrics


@server.main()
def main(grid: Grid, context: Context) -> None:
    torch.manual_seed(int(context.run_config["seed"]))
    strategy = TimedFedAvg(min_available_nodes=2)
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(ARCH.factory().state_dict()),
        num_rounds=int(context.run_config["num-server-rounds"]),
    )
    Path(str(context.run_config["timing-file"])).write_text(json.dumps(strategy.rounds))
