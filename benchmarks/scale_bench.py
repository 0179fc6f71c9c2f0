"""Scale benchmark: round time, peak memory of every process and the explainer's
queue as the number of clients grows, on Flower's deployment engine (one SuperNode
per client) and on its simulation engine (Ray).

    python benchmarks/scale_bench.py [--rounds 3] [--runs deployment:10 simulation:10 simulation:50 simulation:100]

Each run is a real `fedxai run` with XAI on, on the whole data split. Round time is
the median of the rounds after the first (which pays for starting up). Peak memory is
the largest sum, over every process that was not there before the run started, of its
proportional set size (PSS: shared pages split among the processes that share them),
sampled every 0.5 s. The queue is how many other Explain calls were in progress when a
call started, from the explainer's log. Replies that Flower gave up on are listed under
their run, from its record: each costs its round Flower's timeout.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
FEDXAI = str(Path(sys.executable).with_name("fedxai"))
GIB = 1024**3
IN_PROGRESS = re.compile(r"explaining \d+ samples for \S+ \((\d+) calls in progress\)")


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def pids() -> set[int]:
    return {int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()}


def pss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):  # gone meanwhile, or not ours to read
        pass
    return 0


def run_once(engine: str, clients: int, args: argparse.Namespace, work: Path) -> dict:
    before = pids()
    command = [
        FEDXAI, "run", "--clients", str(clients), "--rounds", str(args.rounds), "--data-dir", str(args.data_dir),
        "--output-dir", str(work / "out"), "--work-dir", str(work / "work"),
        "--explainer-address", f"127.0.0.1:{args.explainer_port}", "--set", "max-samples=0",
    ]  # fmt: skip
    if engine == "simulation":
        command.append("--simulation")
    started = time.monotonic()
    peak = 0
    with (work / "fedxai-run.log").open("wb") as log:
        run = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=work)
        while run.poll() is None:
            peak = max(peak, sum(pss_bytes(pid) for pid in pids() - before))
            time.sleep(0.5)
    if run.returncode != 0:
        raise RuntimeError(f"{engine} with {clients} clients failed:\n{(work / 'fedxai-run.log').read_text()[-3000:]}")
    (run_dir,) = (work / "out" / "xaitest" / "runs").iterdir()
    document = json.loads((run_dir / "metrics.json").read_text())
    later = [entry for entry in document["rounds"] if entry["round"] > 1]
    queue = [int(n) - 1 for n in IN_PROGRESS.findall((run_dir / "logs" / "explainer.log").read_text())]
    explaining = later[-1].get("explaining", {})
    # A reply Flower gave up on (a ClientApp that crashed, a SuperNode gone) costs its round
    # Flower's timeout: say so beside the round time.
    failures = [
        f"round {entry['round']} {client} {kind}: {reason}"
        for entry in document["rounds"]
        for client, figures in entry.get("clients", {}).items()
        for kind, reason in figures.get("failed", {}).items()
    ]
    return {
        "wall": time.monotonic() - started,
        "round": statistics.median(entry["seconds"] for entry in later),
        "server": statistics.median(entry.get("server_seconds", 0.0) for entry in later),
        "trained": len(later[-1].get("clients", {})),
        "explaining": f"{explaining.get('clients', '?')} + {explaining.get('updates', '?')} updates",
        "accuracy": document["rounds"][-1]["global"]["accuracy"],
        "calls": len(queue),
        "queue_max": max(queue, default=0),
        "queue_median": statistics.median(queue) if queue else 0,
        "peak": peak,
        "failures": failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--runs", nargs="+", default=["deployment:10", "simulation:10", "simulation:50", "simulation:100"]
    )
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "mnist")
    parser.add_argument("--explainer-port", type=int, default=50081)
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2: the first round pays for starting up")
    args.data_dir = args.data_dir.resolve()
    results = []
    for run in args.runs:
        engine, clients = run.split(":")
        with tempfile.TemporaryDirectory(prefix="fedxai-scale-") as tmp:
            result = run_once(engine, int(clients), args, Path(tmp))
        out(f"  {engine} {clients} clients: {result['wall']:.0f} s")
        for failure in result["failures"]:
            out(f"    failed reply, {failure}")
        results.append((engine, int(clients), result))
    out()
    out(f"{args.rounds} rounds each, XAI on, the whole split; round s = median of rounds 2..{args.rounds}")
    out(
        "engine     | clients | trained | explaining per round | round s | s per client trained | server s | "
        "explainer calls | queue max (median) | peak memory, all processes | accuracy | failed replies"
    )
    for engine, clients, r in results:
        out(
            f"{engine:10} | {clients:7} | {r['trained']:7} | {r['explaining']:20} | {r['round']:7.1f} | "
            f"{r['round'] / max(r['trained'], 1):20.2f} | {r['server']:8.1f} | {r['calls']:15} | "
            f"{r['queue_max']:9} ({r['queue_median']:g}) | {r['peak'] / GIB:21.2f} GiB | {r['accuracy']:8.1%} | "
            f"{len(r['failures'])}"
        )
    out("targets: 100 clients within 6 GiB; round time grows no worse than linearly with the clients trained")


if __name__ == "__main__":
    main()
