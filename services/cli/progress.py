"""What ``fedxai run`` and ``fedxai aggregator`` print while a run goes on: a
line per round as the aggregator records it in the run's ``metrics.json``, and
where the results are at the end."""

from __future__ import annotations

import time
from typing import Any, TextIO

from fedxai.settings import StorageSettings
from fedxai.storage import ObjectStore, read_document
from fedxai.storage.layout import metrics_key, run_prefix
from fedxai.task import TaskConfig
from services.cli.processes import Children

POLL_SECONDS = 1.0


class RunFailed(Exception):
    """The federation did not finish; the message says where to look."""


def say(out: TextIO, line: str) -> None:
    out.write(line + "\n")
    out.flush()


def describe_round(entry: dict[str, Any], rounds: int) -> str:
    accuracy, loss = entry["global"]["accuracy"], entry["global"]["loss"]
    xai = entry.get("xai") or {}
    clients = len(entry.get("clients", {}))
    images = f"images stored {xai.get('stored', 0)}"
    explaining = entry.get("explaining") or {}
    if "clients" in explaining and explaining["clients"] < explaining["of"]:
        images += f" by {explaining['clients']} of {explaining['of']} clients"
    flagged = [f"{xai[key]} {key}" for key in ("blank", "weak") if xai.get(key)]
    if flagged:
        images += f" ({', '.join(flagged)})"
    if xai.get("queued"):
        images += f", {xai['queued']} requests queued"
    line = (
        f"round {entry['round']}/{rounds}  global accuracy {accuracy:.1%} (loss {loss:.3f})  "
        f"{clients} clients  {images}  {entry.get('seconds', 0):.1f} s"
    )
    for client, record in sorted(entry.get("clients", {}).items()):
        for stage, error in sorted(record.get("failed", {}).items()):
            line += f"\n  {client} did not {stage}: {error}"
    compared = (entry.get("comparison") or {}).get("clients", {})
    for client, figures in sorted(compared.items()):
        if figures.get("flagged"):
            classes = ", ".join(str(label) for label in figures.get("flag_classes", []))
            line += f"\n  {client} flagged: its explanations of class {classes} are outliers"
    if entry.get("excluded"):
        line += f"\n  left out of the average: {', '.join(entry['excluded'])}"
    return line


def follow(children: Children, store: ObjectStore, task: TaskConfig, out: TextIO) -> dict[str, Any]:
    """Prints each round once the aggregator has recorded it with its clients'
    evaluation (which the next round's training may bring), until the run ends."""
    key = metrics_key(task.task_name, task.run_id)
    earlier = (read_document(store, key) or {}).get("rounds", [])
    # A resumed run's earlier rounds were reported by its first attempt, if complete by then.
    reported = {r["round"] for r in earlier if 0 < r["round"] <= task.resume_after_round and "evaluate" in r}
    while True:
        document = read_document(store, key)
        status = (document or {}).get("status")
        for entry in [r for r in (document or {}).get("rounds", []) if r["round"] > 0 and r["round"] not in reported]:
            if "evaluate" not in entry and status == "running":
                break
            say(out, describe_round(entry, task.num_server_rounds))
            reported.add(entry["round"])
        if status == "finished":
            return document or {}
        if status == "failed":
            raise RunFailed(
                f"the aggregator reported a failure: {(document or {}).get('reason')}\n{children.tail('flwr-run', 30)}"
            )
        dead = [name for name in children.dead() if name != "flwr-run"]
        if dead:
            raise RunFailed(f"{dead[0]} exited during the run:\n{children.tail(dead[0])}")
        if "flwr-run" in children.dead():
            # The stream ends with the run; give the last metrics write a moment.
            time.sleep(POLL_SECONDS)
            document = read_document(store, key)
            if document and document.get("status") == "finished":
                continue
            raise RunFailed(f"the run ended without finishing:\n{children.tail('flwr-run', 30)}")
        time.sleep(POLL_SECONDS)


def place(storage: StorageSettings, task: TaskConfig) -> str:
    """Where the run's results are, as a person would look for them."""
    prefix = run_prefix(task.task_name, task.run_id)
    if storage.s3:
        return f"s3://{storage.s3.bucket}/{prefix}/"
    return f"{storage.output_dir}/{prefix}/"


def summary(document: dict[str, Any], storage: StorageSettings, task: TaskConfig) -> str:
    last = document["rounds"][-1]["global"]
    where = place(storage, task)
    rounds = document["num_rounds"]
    return (
        f"done: run {task.run_id}, {rounds} round{'s' if rounds != 1 else ''}, global accuracy {last['accuracy']:.1%}\n"
        f"  heatmaps: {where}round-<NNN>/<client>/gradcam_class_<label>.jpg\n"
        f"  metrics:  {where}metrics.json\n"
        f"  global checkpoints: {where}round-<NNN>/global_model.safetensors\n"
        f"  logs:     {where}logs/\n"
    )
