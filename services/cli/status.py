"""``fedxai status``: which services answer, and which runs are going on."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from fedxai.errors import StoreError
from fedxai.records import run_state
from fedxai.settings import StorageSettings
from fedxai.storage import ObjectStore, open_store, run_records
from services.cli.federation import CONNECTION

# `flwr` starts in about two seconds before it asks anything.
FLWR_STARTUP_SECONDS = 20.0


def explainer_health(address: str, ca_file: str, timeout: float, service: str = "") -> tuple[str, bool]:
    """The health service's answer ("SERVING", or why not) and whether it serves."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from fedxai.channels import open_channel

    with open_channel(address, ca_file) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as error:
            return f"{error.code().name}: {error.details()}", False
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return name, reply.status == health_pb2.HealthCheckResponse.SERVING


def superlink_nodes(work_dir: Path, timeout: float) -> tuple[str, bool]:
    """The SuperNodes the SuperLink of ``work_dir`` knows, as ``flwr supernode list`` says."""
    flwr_home = work_dir.resolve() / "flwr"
    if not (flwr_home / "config.toml").exists():
        return f"no SuperLink connection in {flwr_home} (none started with this --work-dir)", False
    flwr = str(Path(sys.executable).parent / "flwr")
    try:
        result = subprocess.run(
            [flwr, "supernode", "list", CONNECTION, "--format", "json"],
            env={**os.environ, "FLWR_HOME": str(flwr_home)},
            capture_output=True,
            text=True,
            timeout=FLWR_STARTUP_SECONDS + timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "not answering", False
    try:
        answer = json.loads(result.stdout)
    except json.JSONDecodeError:
        answer = {}
    if not answer.get("success"):
        # Flower's last line says why (its first ones say which connection it tried).
        said = (str(answer.get("error-message") or "") or result.stdout + result.stderr).strip().splitlines()
        return f"not answering ({said[-1] if said else 'no answer'})", False
    nodes = answer.get("nodes", [])
    online = [node for node in nodes if node.get("status") == "online"]
    return f"answering; {len(online)} of {len(nodes)} SuperNodes online", True


def active_runs(store: ObjectStore, now: datetime) -> list[str]:
    """A line per run that the store says is running (or was, until it went quiet)."""
    lines = []
    for task, run, document in run_records(store):
        state = run_state(document, now)
        if state in ("running", "stale"):
            rounds = [r for r in document.get("rounds", []) if r.get("round", 0) > 0]
            lines.append(
                f"{task} run {run}: {state}, round {len(rounds)}/{document.get('num_rounds')}, "
                f"last update {document.get('updated_at')}"
            )
    return lines


def report(args: argparse.Namespace, storage: StorageSettings, out: TextIO) -> int:
    """Prints one line per service and the active runs; 1 when something is down."""
    down = 0

    def line(name: str, answer: str, up: bool) -> None:
        nonlocal down
        down += not up
        out.write(f"{'ok  ' if up else 'DOWN'} {name}: {answer}\n")

    line("explainer", *explainer_health(args.explainer_address, args.tls_ca_file, args.timeout))
    line("superlink", *superlink_nodes(Path(args.work_dir), args.timeout))
    store = open_store(storage)
    try:
        store.check(create=False)
    except StoreError as error:
        line("store", str(error), False)
        return 1
    line("store", store.describe(), True)
    runs = active_runs(store, datetime.now(UTC))
    out.write("runs going on:\n" + "".join(f"  {run}\n" for run in runs) if runs else "no run going on\n")
    return 1 if down else 0
