"""Detection benchmark: does the aggregator flag the client that misbehaves, and
only that one, from its update's explanations on the probe set?

    python benchmarks/detection_bench.py [--seeds 1 2 3] [--rounds 8] [--clients 5] [--json runs.json]
    python benchmarks/detection_bench.py --report runs.json more-runs.json   # the table of saved runs

Real runs (one explainer, SuperLink and set of SuperNodes serve them all):
for every seed, a run with no attacker, and for each attack (label-flip,
backdoor; the last client attacks) a run with ``exclude-flagged`` off and one
with it on. From round 2 on, it counts how often the attacker is flagged and
how often honest clients are, by the explanations and, on the same runs, by
the baseline without explanations (the robust z-score of the cosine distance
between weight updates), and reports the final global accuracy and, for the
backdoor, how often the final global model sends a stamped digit to the
target class.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedxai.attacks import BACKDOOR_TARGET, stamp_trigger
from fedxai.data import load_pool
from fedxai.models import architectures
from fedxai.storage import LocalStore
from fedxai.storage.layout import metrics_key
from fedxai.task import TaskConfig
from fedxai.tensors import decode_state_dict
from services.cli.federation import flower_env, named, start_explainer, start_federation
from services.cli.processes import Children
from services.cli.tasks import build_task, default_app_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("none", "label-flip", "backdoor")


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def backdoor_success(store: LocalStore, checkpoint: str, task: TaskConfig) -> float:
    """Share of held-out digits of other classes that the model puts in the
    backdoor's target class once the trigger is stamped on them."""
    arch = architectures()[task.architecture]
    model = arch.factory()
    model.load_state_dict(decode_state_dict(store.get(checkpoint), checkpoint))
    model.eval()
    test = load_pool(task.dataset, task.data_dir, arch, task.test_fraction, task.seed, task.max_samples).test
    others = test.labels != BACKDOOR_TARGET
    pixels = torch.from_numpy(stamp_trigger(test.images[others])).float() / 255.0
    with torch.no_grad():
        predicted = model((pixels - arch.mean[0]) / arch.std[0]).argmax(dim=1)
    return float((predicted == BACKDOOR_TARGET).float().mean())


def score_run(store: LocalStore, task: TaskConfig, attacker: str | None) -> dict[str, Any]:
    document = json.loads(store.get(metrics_key(task.task_name, task.run_id)))
    if document["status"] != "finished":
        raise RuntimeError(f"{task.task_name} did not finish")
    rounds = [entry for entry in document["rounds"] if entry["round"] >= 2]
    flags: dict[str, dict[str, list[bool]]] = {"explanations": {}, "weights": {}}
    for entry in rounds:
        comparison = entry["comparison"]
        for client, figures in comparison["clients"].items():
            flags["explanations"].setdefault(client, []).append(bool(figures.get("flagged")))
        for client, figures in comparison["weights"].items():
            flags["weights"].setdefault(client, []).append(bool(figures.get("flagged")))
    scored: dict[str, Any] = {
        "accuracy": document["rounds"][-1]["global"]["accuracy"],
        "seconds": statistics.median(entry["seconds"] for entry in document["rounds"][1:]),
        "backdoor": backdoor_success(store, document["rounds"][-1]["checkpoint"], task),
    }
    for signal, by_client in flags.items():
        honest = [flag for client, values in by_client.items() if client != attacker for flag in values]
        scored[f"{signal}/honest"] = float(np.mean(honest))
        scored[f"{signal}/clean_rounds"] = float(np.mean([not any(f) for f in zip(*by_client.values(), strict=True)]))
        if attacker is not None:
            scored[f"{signal}/attacker"] = float(np.mean(by_client[attacker]))
    return scored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--max-samples", type=int, default=0, help="cap on the pool (0: all)")
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "mnist")
    parser.add_argument("--explainer-port", type=int, default=50072)
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("--report", type=Path, nargs="+", help="print the table of runs saved with --json, run nothing")
    args = parser.parse_args()
    if args.report:
        saved = [run for path in args.report for run in json.loads(path.read_text())]
        args.seeds = sorted({run["seed"] for run in saved})
        report(saved, args)
        return
    attacker_id = args.clients - 1
    attacker = f"client-{attacker_id}"
    env = dict(os.environ)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fedxai-detection-") as tmp:
        work = Path(tmp)
        store = LocalStore(work / "out")
        storage_env = {"FEDXAI_OUTPUT_DIR": str(work / "out")}
        children = Children(work / "logs", env)
        children.log_dir.mkdir(parents=True, exist_ok=True)
        explainer = f"127.0.0.1:{args.explainer_port}"
        try:
            start_explainer(children, explainer, storage_env)
            federation = start_federation(children, work, args.clients, flower_env(env, work, storage_env))
            for seed in args.seeds:
                for scenario in args.scenarios:
                    for exclude in (False,) if scenario == "none" else (False, True):
                        settings = {
                            "task-name": f"detect-{scenario}-{'exclude' if exclude else 'keep'}-{seed}",
                            "explainer-address": explainer,
                            "num-server-rounds": args.rounds,
                            "min-train-nodes": args.clients,
                            "min-evaluate-nodes": args.clients,
                            "data-dir": str(args.data_dir.resolve()),
                            "max-samples": args.max_samples,
                            "seed": seed,
                            "attack": scenario,
                            "attack-client": attacker_id,
                            "exclude-flagged": exclude,
                        }
                        task = named(build_task(default_app_dir(), settings))
                        started = time.monotonic()
                        federation.submit(children, task.task_name, default_app_dir(), task.to_run_config())
                        if children.processes[task.task_name].wait() != 0:
                            raise RuntimeError(f"{task.task_name} failed:\n{children.tail(task.task_name, 30)}")
                        scored = score_run(store, task, None if scenario == "none" else attacker)
                        results.append({"scenario": scenario, "exclude": exclude, "seed": seed, **scored})
                        if args.json:  # as it goes: a long benchmark keeps what it measured
                            args.json.write_text(json.dumps(results, indent=2))
                        out(f"  {task.task_name}: {time.monotonic() - started:.0f} s  {json.dumps(scored)}")
        finally:
            children.stop_all()
    report(results, args)


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    def mean(rows: list[dict[str, Any]], key: str) -> str:
        values = [row[key] for row in rows if key in row]
        return f"{np.mean(values):.0%}" if values else "n/a"

    out()
    out(
        f"{args.clients} IID clients (client-{args.clients - 1} attacks), {args.rounds} rounds, seeds "
        f"{', '.join(map(str, args.seeds))}; flags counted from round 2"
    )
    out(
        "| scenario | attacker flagged: explanations / weights | honest client-rounds flagged: explanations / "
        "weights | rounds without a flag: explanations / weights | global accuracy: all updates / exclude-flagged "
        "| stamped digits sent to class 0: all / exclude-flagged |"
    )
    out("| --- | --- | --- | --- | --- | --- |")
    for scenario in SCENARIOS:
        keep = [r for r in results if r["scenario"] == scenario and not r["exclude"]]
        excluded = [r for r in results if r["scenario"] == scenario and r["exclude"]]
        accuracy = f"{np.mean([r['accuracy'] for r in keep]):.2%}"
        backdoor = mean(keep, "backdoor")
        if excluded:
            accuracy += f" / {np.mean([r['accuracy'] for r in excluded]):.2%}"
            backdoor += f" / {mean(excluded, 'backdoor')}"
        out(
            f"| {scenario} | {mean(keep, 'explanations/attacker')} / {mean(keep, 'weights/attacker')} "
            f"| {mean(keep, 'explanations/honest')} / {mean(keep, 'weights/honest')} "
            f"| {mean(keep, 'explanations/clean_rounds')} / {mean(keep, 'weights/clean_rounds')} "
            f"| {accuracy} | {backdoor} |"
        )
    out(f"median round: {statistics.median(r['seconds'] for r in results):.1f} s")
    out("targets (label-flip): attacker flagged >= 90%, honest <= 5%; no attacker: rounds without a flag >= 95%")


if __name__ == "__main__":
    main()
