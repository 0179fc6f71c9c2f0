"""The Flower ServerApp: FedAvg over the trainers, with the global model tested,
checkpointed and recorded after every round."""

from __future__ import annotations

import os

import torch
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedxai.data import load_pool
from fedxai.models import ARCHITECTURES
from fedxai.settings import StorageSettings
from fedxai.storage import open_store
from fedxai.task import TaskConfig
from services.aggregator.recorder import RecordingFedAvg, RunRecorder

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    task = TaskConfig.from_run_config(context.run_config)
    store = open_store(StorageSettings.from_env(os.environ))
    store.check()
    arch = ARCHITECTURES[task.architecture]
    pool = load_pool(task.data_dir, task.test_fraction, task.seed, task.max_samples)
    recorder = RunRecorder(store, task, arch, pool.test)
    strategy = RecordingFedAvg(
        recorder,
        fraction_train=task.fraction_train,
        fraction_evaluate=task.fraction_evaluate,
        min_train_nodes=task.min_train_nodes,
        min_evaluate_nodes=task.min_evaluate_nodes,
        min_available_nodes=max(task.min_train_nodes, task.min_evaluate_nodes),
    )
    torch.manual_seed(task.seed)
    initial = ArrayRecord(arch.factory().state_dict())
    try:
        strategy.start(
            grid=grid,
            initial_arrays=initial,
            num_rounds=task.num_server_rounds,
            evaluate_fn=recorder.evaluate_global,
        )
    except BaseException:
        recorder.finish("failed")  # the monitor and `fedxai run` read the status
        raise
    recorder.finish("finished")
