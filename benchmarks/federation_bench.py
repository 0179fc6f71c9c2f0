"""Federation benchmark: round time against a bare Flower app and the clients'
compute, the cost of XAI (the trainers' explanations alone, then with the
aggregator explaining the global model and every update), and accuracy against
central training.

    python benchmarks/federation_bench.py [--rounds 3] [--repeats 2] [--accuracy]
    python benchmarks/federation_bench.py --accuracy --skip-rounds --dataset fashion-mnist --architecture tiny_rgb_net

The bare Flower app runs on a SuperLink and SuperNodes with Flower's own settings
(each message's ClientApp in a new `flwr-clientapp` process); FedXAI's variants on
the ones `fedxai run` starts (`fedxai trainer`), and once more, as xai-on-cold, on
the bare app's. Both federations stay up, and the variants take turns within each
repetition, so that load on the machine hits them alike.
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

from fedxai import learning
from fedxai.data import load_pool, partition, train_validation_split
from fedxai.models import architectures
from fedxai.storage import LocalStore
from fedxai.storage.layout import metrics_key
from fedxai.task import TaskConfig
from services.cli.federation import flower_env, named, start_explainer, start_federation
from services.cli.processes import Children
from services.cli.tasks import build_task, default_app_dir

BARE_APP = Path(__file__).resolve().parent / "bare_flower_app"
REPO_ROOT = Path(__file__).resolve().parents[1]


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run_variant(children: Children, federation, name: str, app_dir: Path, config: dict[str, Any]) -> None:
    federation.submit(children, name, app_dir, config)
    if children.processes[name].wait() != 0:
        raise RuntimeError(f"{name} failed:\n{children.tail(name, 30)}")


def ours_rounds(store: LocalStore, task: TaskConfig) -> list[dict[str, Any]]:
    document = json.loads(store.get(metrics_key(task.task_name, task.run_id)))
    if document["status"] != "finished":
        raise RuntimeError(f"{task.task_name} did not finish")
    return [entry for entry in document["rounds"] if entry["round"] > 0]


def critical_paths(entries: list[dict[str, Any]]) -> list[tuple[float, float, float]]:
    """Each round's compute on its critical path, from one run's rounds: the slowest
    training message (its training, and the previous round's evaluation and explanation
    when they ride along), the slowest evaluation message if the round has one (its
    evaluation and explanation), and the aggregator's own work. The bare app reports
    its clients' mean times, not the slowest's."""
    carried = {e["evaluated_in_round"]: e for e in entries if e.get("evaluated_in_round", e["round"]) != e["round"]}
    paths = []
    for entry in entries:
        if "clients" not in entry:
            paths.append((entry["train"]["train-seconds"], entry["evaluate"]["eval-seconds"], 0.0))
            continue
        earlier = carried.get(entry["round"], {}).get("clients", {})
        own = entry.get("evaluated_in_round", entry["round"]) == entry["round"]
        training = [
            record["train"]["train-seconds"] + _evaluation_seconds(earlier.get(client, {}))
            for client, record in entry["clients"].items()
            if "train" in record
        ]
        evaluating = [_evaluation_seconds(record) for record in entry["clients"].values()] if own else []
        paths.append((max(training, default=0.0), max(evaluating, default=0.0), float(entry.get("server_seconds", 0))))
    return paths


def _evaluation_seconds(client: dict[str, Any]) -> float:
    evaluation = client.get("evaluate", {})
    return evaluation.get("eval-seconds", 0.0) + evaluation.get("xai-seconds", 0.0)


def bench_rounds(args: argparse.Namespace, work: Path, env: dict[str, str]) -> None:
    """Bare Flower on a federation with Flower's settings, as a user would run it;
    FedXAI on one as `fedxai run` starts it. The variants take turns."""
    out_dir = work / "out"
    store = LocalStore(out_dir)
    storage_env = {"FEDXAI_OUTPUT_DIR": str(out_dir)}
    # One set of processes per federation: their names are the same.
    children, bare_children = Children(work / "logs", env), Children(work / "bare-logs", env)
    for folder in (children.log_dir, bare_children.log_dir, work / "fedxai", work / "bare"):
        folder.mkdir(parents=True, exist_ok=True)
    explainer = f"127.0.0.1:{args.explainer_port}"
    common = {"num-server-rounds": args.rounds, "data-dir": str(args.data_dir), "max-samples": args.max_samples}
    # xai-trainers: only the trainers' explanations; xai-on adds the aggregator's probe explanations;
    # xai-on-cold is xai-on on the bare app's federation, whose SuperNodes launch ClientApps as Flower does.
    rounds: dict[str, list[dict[str, Any]]] = {
        "bare": [], "xai-on-cold": [], "xai-off": [], "xai-trainers": [], "xai-on": [],
    }  # fmt: skip
    try:
        start_explainer(children, explainer, storage_env)
        ours = start_federation(children, work / "fedxai", args.clients, flower_env(env, work / "fedxai", storage_env))
        # Flower's own settings; the store's variable is for xai-on-cold's aggregator (the bare app has none).
        defaults = {
            k: v for k, v in flower_env(env, work / "bare", storage_env).items() if not k.startswith("FLWR_SUPEREXEC")
        }
        bare = start_federation(bare_children, work / "bare", args.clients, defaults, flower_defaults=True)
        for repeat in range(args.repeats):
            for variant in rounds:
                name = f"bench-{variant}-{repeat}"
                started = time.monotonic()
                if variant == "bare":
                    timing = work / f"{name}.json"
                    run_variant(bare_children, bare, name, BARE_APP, {**common, "timing-file": str(timing)})
                    entries = json.loads(timing.read_text())
                else:
                    task = named(
                        build_task(
                            default_app_dir(),
                            {
                                "task-name": name,
                                "xai-enabled": variant != "xai-off",
                                "explain-federation": variant.startswith("xai-on"),
                                "explainer-address": explainer,
                                # As `fedxai run` sets it: these trainers share the aggregator's store.
                                "model-transfer": "store",
                                **common,
                            },
                        )
                    )
                    cold = variant == "xai-on-cold"
                    federation, processes = (bare, bare_children) if cold else (ours, children)
                    run_variant(processes, federation, name, default_app_dir(), task.to_run_config())
                    entries = ours_rounds(store, task)
                paths = critical_paths(entries)
                rounds[variant] += [{**e, "critical_path": p} for e, p in zip(entries, paths, strict=True)]
                out(f"  {name}: {time.monotonic() - started:.1f} s")
    finally:
        children.stop_all()
        bare_children.stop_all()

    out()
    out(f"{args.clients} clients, {args.rounds} rounds x {args.repeats} repeats, {args.max_samples or 'all'} samples")
    out("variant      | round s (median) | vs bare | critical path s: train msg  eval msg  server | round / crit. path")
    bare_seconds = statistics.median(r["seconds"] for r in rounds["bare"])
    for variant, entries in rounds.items():
        seconds = statistics.median(r["seconds"] for r in entries)
        paths = [entry["critical_path"] for entry in entries]
        train, evaluate, server = (statistics.median(v) for v in zip(*paths, strict=True))
        # Each round against its own critical path, then the median.
        ratio = statistics.median(r["seconds"] / sum(r["critical_path"]) for r in entries)
        out(
            f"{variant:12} | {seconds:16.2f} | {seconds / bare_seconds:6.3f}x | "
            f"{train:26.2f} {evaluate:9.2f} {server:7.2f} | {ratio:.2f}x"
        )
    out("targets: xai-on <= 0.6x bare; round <= 1.3x its critical path")
    out("(the bare app reports its clients' mean times, not the slowest's: its critical path is understated)")


def bench_accuracy(args: argparse.Namespace, work: Path, env: dict[str, str]) -> None:
    """3 IID clients, 5 rounds on the 10,000-image split, against the same CNN
    trained centrally on the union of the clients' training data for as many epochs."""
    clients, rounds = 3, 5
    task = named(
        build_task(
            default_app_dir(),
            {
                "task-name": "bench-accuracy",
                "num-server-rounds": rounds,
                "dataset": args.dataset,
                "architecture": args.architecture,
                "data-dir": str(args.data_dir or ""),
                "explainer-address": f"127.0.0.1:{args.explainer_port}",
                "min-train-nodes": clients,
                "min-evaluate-nodes": clients,
            },
        )
    )
    out_dir = work / "out"
    storage_env = {"FEDXAI_OUTPUT_DIR": str(out_dir)}
    children = Children(work / "logs", env)
    children.log_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        start_explainer(children, task.explainer_address, storage_env)
        federation = start_federation(children, work, clients, flower_env(env, work, storage_env))
        run_variant(children, federation, "bench-accuracy", default_app_dir(), task.to_run_config())
    finally:
        children.stop_all()
    federated = ours_rounds(LocalStore(out_dir), task)[-1]["global"]["accuracy"]
    out(f"federated run: {time.monotonic() - started:.0f} s")

    arch = architectures()[task.architecture]
    pool = load_pool(task.dataset, task.data_dir, arch, task.test_fraction, task.seed)
    shares = [
        train_validation_split(
            partition(pool.federated, i, clients, "iid", task.dirichlet_alpha, task.seed),
            task.validation_fraction,
            task.seed + i,
        )[0]
        for i in range(clients)
    ]
    union = type(shares[0])(np.concatenate([s.images for s in shares]), np.concatenate([s.labels for s in shares]))
    torch.manual_seed(task.seed)
    model = arch.factory()
    learning.train(
        model,
        union,
        arch,
        epochs=rounds * task.local_epochs,
        batch_size=task.batch_size,
        learning_rate=task.learning_rate,
        optimizer_name=task.optimizer,
        seed=task.seed,
    )
    central = learning.evaluate(model, pool.test, arch).accuracy
    out(f"{task.dataset} with {arch.name}")
    out(f"test set: {len(pool.test)} images; clients' training data: {len(union)} images")
    out(f"federated ({clients} IID clients, {rounds} rounds x {task.local_epochs} epoch): {federated:.2%}")
    out(f"central ({rounds * task.local_epochs} epochs on the same data):             {central:.2%}")
    out(f"gap: {(central - federated) * 100:.2f} percentage points (target: within 2)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-samples", type=int, default=4000, help="cap on the pool for the round benchmark")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="the dataset's folder (default: the shared MNIST split for mnist, else its default place)",
    )
    parser.add_argument("--dataset", default="mnist", help="data source of the accuracy comparison")
    parser.add_argument("--architecture", default="mnist_cnn", help="architecture of the accuracy comparison")
    parser.add_argument("--explainer-port", type=int, default=50071)
    parser.add_argument("--accuracy", action="store_true", help="also run the accuracy comparison (~5 min)")
    parser.add_argument("--skip-rounds", action="store_true", help="only the accuracy comparison")
    args = parser.parse_args()
    if args.dataset != "mnist" and not args.skip_rounds:
        parser.error("the round benchmark runs on MNIST: add --skip-rounds to compare accuracy on another dataset")
    if args.data_dir is None and args.dataset == "mnist":
        args.data_dir = REPO_ROOT.parent / "shared" / "data" / "mnist"
    args.data_dir = args.data_dir and args.data_dir.resolve()
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="fedxai-bench-") as tmp:
        if not args.skip_rounds:
            bench_rounds(args, Path(tmp) / "rounds", env)
        if args.accuracy:
            out()
            bench_accuracy(args, Path(tmp) / "accuracy", env)


if __name__ == "__main__":
    main()
