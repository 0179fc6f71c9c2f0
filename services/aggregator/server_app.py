"""The Flower ServerApp: FedAvg over the trainers, with the global model tested,
checkpointed and recorded after every round, and, with XAI on, the global model
and every client's update explained on the probe set and compared."""

from __future__ import annotations

import dataclasses
import os
from datetime import UTC, datetime
from logging import INFO
from pathlib import Path
from typing import cast

import torch
from flwr.app import ArrayRecord, Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from fedxai.data import Pool, load_pool, probe_set
from fedxai.models import Architecture, architectures
from fedxai.records import RunRecord
from fedxai.settings import SettingsError, StorageSettings, explainer_token
from fedxai.storage import ObjectStore, open_store, read_document
from fedxai.storage.layout import metrics_key, new_run_id
from fedxai.task import TaskConfig
from fedxai.tensors import decode_state_dict, sha256_hex
from services.aggregator.probe import ProbeExplainer, RoundMaps
from services.aggregator.prompt_grid import PromptGrid, longest_pause
from services.aggregator.recorder import RecordingFedAvg, RunRecorder

app = ServerApp()
# Where the aggregator keeps what outlives a message: its outbox of explanation requests.
STATE_DIR_VARIABLE = "FEDXAI_AGGREGATOR_STATE_DIR"
DEFAULT_STATE_DIR = Path("~/.cache/fedxai/aggregator")


def _probe_explainer(task: TaskConfig, arch: Architecture, pool: Pool, recorder: RunRecorder) -> ProbeExplainer:
    probe = probe_set(pool, task.probe_dir, task.probe_per_class, task.seed)
    state_dir = Path(os.environ.get(STATE_DIR_VARIABLE) or DEFAULT_STATE_DIR.expanduser())
    recorder.describe_probe(
        {
            "source": task.probe_dir or "the aggregator's held-out split",
            "images": len(probe),
            "per_class": task.probe_per_class,
            "method": task.probe_cam_method,
            "distance": "1 - Spearman rank correlation of the two maps of each probe image, mean per class",
            "flag_threshold": task.flag_threshold,
            "exclude_flagged": task.exclude_flagged,
        }
    )
    maps = RoundMaps(probe.labels, task.flag_threshold, recorder.record_comparison)
    token = explainer_token(os.environ)
    return ProbeExplainer(task, arch, probe, state_dir / task.task_name, maps, token, pool.class_names)


def _resume_point(store: ObjectStore, task: TaskConfig) -> tuple[RunRecord, ArrayRecord]:
    """The record of the run to continue, and its global model of the round it continues after."""
    previous = cast(RunRecord | None, read_document(store, metrics_key(task.task_name, task.run_id)))
    if previous is None:
        raise SettingsError(f"run-id {task.run_id!r}: task {task.task_name} has no such run to continue")
    entry = next((e for e in previous["rounds"] if e["round"] == task.resume_after_round and "checkpoint" in e), None)
    if entry is None:
        raise SettingsError(f"resume-after-round {task.resume_after_round}: run {task.run_id} stored no model then")
    data = store.get(entry["checkpoint"])
    if sha256_hex(data) != entry["checkpoint_sha256"]:
        raise SettingsError(f"{entry['checkpoint']} is not the checkpoint metrics.json names (SHA-256 differs)")
    model = architectures()[task.architecture].factory()
    model.load_state_dict(decode_state_dict(data, entry["checkpoint"]))  # in the model's order of tensors
    return previous, ArrayRecord(model.state_dict())


@app.main()
def main(grid: Grid, context: Context) -> None:
    task = TaskConfig.from_run_config(context.run_config)
    if not task.run_id:  # `fedxai run` names its runs; a bare `flwr run` does not
        task = dataclasses.replace(task, run_id=new_run_id(datetime.now(UTC)))
    store = open_store(StorageSettings.from_env(os.environ))
    store.check()
    log(INFO, "run %s of task %s, storage: %s", task.run_id, task.task_name, store.describe())
    arch = architectures()[task.architecture]
    torch.manual_seed(task.seed)
    if task.resume_after_round:
        previous, initial = _resume_point(store, task)
        log(INFO, "run %s continues from its global model of round %d", task.run_id, task.resume_after_round)
    else:
        previous, initial = None, ArrayRecord(arch.factory().state_dict())
    pool = load_pool(task.dataset, task.data_dir, arch, task.test_fraction, task.seed, task.max_samples)
    recorder = RunRecorder(store, task, arch, pool.test, previous, pool.class_names)
    probe = None
    if task.xai_enabled and task.explain_federation:
        probe = _probe_explainer(task, arch, pool, recorder)
    strategy = RecordingFedAvg(
        recorder,
        probe,
        task.exclude_flagged,
        fraction_train=task.fraction_train,
        fraction_evaluate=task.fraction_evaluate,
        min_train_nodes=task.min_train_nodes,
        min_evaluate_nodes=task.min_evaluate_nodes,
        min_available_nodes=max(task.min_train_nodes, task.min_evaluate_nodes),
    )
    try:
        strategy.start(
            grid=PromptGrid(grid, longest_pause=longest_pause(os.environ)),
            initial_arrays=initial,
            num_rounds=task.num_server_rounds - task.resume_after_round,
            evaluate_fn=strategy.evaluate_fn,
        )
        recorder.settle()
    except BaseException as error:
        # The monitor and `fedxai run` read the status and the reason.
        recorder.finish("failed", reason=f"{type(error).__name__}: {error}")
        raise
    finally:
        queued = probe.close() if probe is not None else 0
    recorder.finish("finished", queued)
