"""``fedxai run``: the whole system on one machine, in one command.

Starts the Explainer, a Flower SuperLink and one SuperNode per trainer, submits
the run with ``flwr run``, reports progress from ``<task>/metrics.json``, and
stops every process it started when the run ends, fails or is interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import tomli_w

from fedxai.data import load_pool
from fedxai.settings import SettingsError, StorageSettings, parse_address
from fedxai.storage import ObjectStore, open_store, read_document
from fedxai.storage.layout import metrics_key
from fedxai.task import TaskConfig

CONNECTION = "fedxai-local"
STARTUP_TIMEOUT = 120.0
STOP_GRACE = 10.0
POLL_SECONDS = 1.0


class RunFailed(Exception):
    """The federation did not finish; the message says where to look."""


@dataclass(frozen=True)
class RunOptions:
    task: TaskConfig
    clients: int
    storage: StorageSettings
    app_dir: Path
    work_dir: Path
    start_explainer: bool = True


def default_app_dir() -> Path:
    """The source tree holding the Flower app's pyproject.toml."""
    return Path(__file__).resolve().parents[1]


def task_defaults(app_dir: Path) -> dict[str, Any]:
    pyproject = app_dir / "pyproject.toml"
    try:
        config = tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"]
    except (FileNotFoundError, KeyError) as error:
        raise SettingsError(
            f"{pyproject} has no [tool.flwr.app.config]: `fedxai run` needs the project's source tree "
            f"(pass --app-dir) ({error})"
        ) from None
    return dict(config)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs with TOML values; bare words are taken as strings."""
    overrides = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"--set {pair!r} is not KEY=VALUE")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        overrides[key.strip()] = value
    return overrides


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host.strip("[]"), port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Children:
    """The processes a run started, each in its own session so that its own
    children (Flower's superexec and app processes) stop with it."""

    log_dir: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: Mapping[str, str], cwd: Path | None = None) -> None:
        with (self.log_dir / f"{name}.log").open("wb") as log:
            self.processes[name] = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd, start_new_session=True
            )

    def dead(self) -> list[str]:
        return [name for name, process in self.processes.items() if process.poll() is not None]

    def stop_all(self) -> None:
        # A second Ctrl-C must not cut the clean-up short.
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop_all(self) -> None:
        # Flower starts its app processes in sessions of their own: find them first.
        descendants = _descendants({process.pid for process in self.processes.values()})
        for process in self.processes.values():
            _signal_group(process, signal.SIGTERM)
        for pid in descendants:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        for process in self.processes.values():  # grandchildren left behind by a parent that exited
            _signal_group(process, signal.SIGKILL)
        for pid in _descendants(descendants) | descendants:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def tail(self, name: str, lines: int = 15) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _descendants(roots: set[int]) -> set[int]:
    """Every live descendant of ``roots``, read from /proc (empty where there is none)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return set()
    parent_of = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # exited while we looked
                continue
            # "pid (comm) state ppid ...": comm may hold spaces, so split after its ')'.
            parent_of[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = set(roots)
    while frontier:
        frontier = {pid for pid, parent in parent_of.items() if parent in frontier} - found
        found |= frontier
    return found


def _signal_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def _wait_for_port(host: str, port: int, children: Children, name: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if name in children.dead():
            raise RunFailed(f"{name} exited while starting:\n{children.tail(name)}")
        try:
            with socket.create_connection((host.strip("[]"), port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RunFailed(f"{name} did not listen on port {port} within {STARTUP_TIMEOUT:.0f} s")


def _wait_for_explainer(address: str, children: Children) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + STARTUP_TIMEOUT
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if "explainer" in children.dead():
                raise RunFailed(f"the explainer exited while starting:\n{children.tail('explainer')}")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass  # not listening yet
            time.sleep(0.3)
    raise RunFailed(f"the explainer at {address} was not healthy within {STARTUP_TIMEOUT:.0f} s")


def _read_metrics(store: ObjectStore, task_name: str, started: str) -> dict[str, Any] | None:
    """This run's metrics document, or None before the aggregator wrote one."""
    document = read_document(store, metrics_key(task_name))
    return document if document and document.get("started_at", "") >= started else None


def say(out: TextIO, line: str) -> None:
    out.write(line + "\n")
    out.flush()


def _describe_round(entry: dict[str, Any], rounds: int) -> str:
    accuracy, loss = entry["global"]["accuracy"], entry["global"]["loss"]
    xai = entry.get("xai") or {}
    clients = len(entry.get("clients", {}))
    images = f"images stored {xai.get('stored', 0)}"
    flagged = [f"{xai[key]} {key}" for key in ("blank", "weak") if xai.get(key)]
    if flagged:
        images += f" ({', '.join(flagged)})"
    if xai.get("queued"):
        images += f", {xai['queued']} requests queued"
    line = (
        f"round {entry['round']}/{rounds}  global accuracy {accuracy:.1%} (loss {loss:.3f})  "
        f"{clients} clients  {images}  {entry.get('seconds', 0):.1f} s"
    )
    compared = (entry.get("comparison") or {}).get("clients", {})
    for client, figures in sorted(compared.items()):
        if figures.get("flagged"):
            classes = ", ".join(str(label) for label in figures.get("flag_classes", []))
            line += f"\n  {client} flagged: its explanations of class {classes} are outliers"
    if entry.get("excluded"):
        line += f"\n  left out of the average: {', '.join(entry['excluded'])}"
    return line


def flower_env(base: Mapping[str, str], work: Path, storage_env: Mapping[str, str]) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {
        **base,
        **storage_env,
        "PATH": f"{bin_dir}{os.pathsep}{base.get('PATH', '')}",
        "FLWR_HOME": str(work / "flwr"),
        # The ServerApp's outbox of explanation requests.
        "FEDXAI_AGGREGATOR_STATE_DIR": str(aggregator_state_dir(work)),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        # Flower polls for work every second by default; rounds wait on it.
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
    }


def aggregator_state_dir(work: Path) -> Path:
    return work / "aggregator"


def storage_environment(storage: StorageSettings) -> dict[str, str]:
    """The FEDXAI_* variables that make child processes use the same store."""
    if storage.s3 is None:
        return {"FEDXAI_OUTPUT_DIR": str(storage.output_dir.resolve())}
    s3 = storage.s3
    return {
        "FEDXAI_S3_ENDPOINT": s3.endpoint,
        "FEDXAI_S3_ACCESS_KEY": s3.access_key,
        "FEDXAI_S3_SECRET_KEY": s3.secret_key,
        "FEDXAI_S3_BUCKET": s3.bucket,
        "FEDXAI_S3_SECURE": str(s3.secure).lower(),
        "FEDXAI_S3_REGION": s3.region,
        "FEDXAI_S3_PUBLIC_ENDPOINT": s3.public_endpoint,
    }


def preflight(options: RunOptions) -> None:
    """Checks what can be checked before anything starts."""
    task = options.task
    if options.clients < max(task.min_train_nodes, task.min_evaluate_nodes):
        raise SettingsError(
            f"--clients {options.clients} is below min-train-nodes={task.min_train_nodes} / "
            f"min-evaluate-nodes={task.min_evaluate_nodes}: the run would wait forever"
        )
    if task.attack != "none" and task.attack_client >= options.clients:
        raise SettingsError(f"attack-client {task.attack_client} is not one of the {options.clients} clients")
    try:  # reads the files, or downloads them once here rather than in every node
        load_pool(task.data_dir, task.test_fraction, task.seed, task.max_samples)
    except (FileNotFoundError, ValueError) as error:
        raise SettingsError(str(error)) from None
    if options.start_explainer:
        host, port = parse_address("explainer-address", task.explainer_address)
        if not _port_is_free(host, port):
            raise SettingsError(
                f"explainer-address {task.explainer_address} is in use; stop what listens there or pass "
                "--explainer-address HOST:PORT"
            )


@dataclass(frozen=True)
class Federation:
    """A running SuperLink with its SuperNodes, ready for ``flwr run``."""

    env: dict[str, str]
    node_dirs: list[Path]

    def submit(self, children: Children, name: str, app_dir: Path, run_config: dict[str, Any]) -> None:
        """Starts ``flwr run`` for the app; its log streams to ``<name>.log``."""
        config_file = children.log_dir.parent / f"{name}-config.toml"
        config_file.write_text(tomli_w.dumps(run_config))
        children.start(
            name, ["flwr", "run", str(app_dir), CONNECTION, "--stream", "--run-config", str(config_file)], self.env
        )


def start_superlink(
    children: Children,
    work: Path,
    env: dict[str, str],
    host: str = "127.0.0.1",
    port: int = 0,
    tls: tuple[str, str, str] | None = None,
) -> int:
    """A SuperLink (Fleet, Control and Runtime APIs on one port), and the ``flwr``
    connection to it in ``$FLWR_HOME/config.toml``. ``tls``: certificate, key
    and CA files. Returns the port."""
    port = port or _free_port()
    # `flwr run` reaches the SuperLink where it listens; a wildcard means loopback will do.
    reach = "127.0.0.1" if host in ("0.0.0.0", "::", "[::]") else host
    if tls:
        cert, key, ca = tls
        security = ["--ssl-certfile", cert, "--ssl-keyfile", key, "--ssl-ca-certfile", ca]
        connection: dict[str, Any] = {"address": f"{reach}:{port}", "root-certificates": ca}
    else:
        security = ["--insecure"]
        connection = {"address": f"{reach}:{port}", "insecure": True}
    children.start(
        "superlink",
        [
            "flower-superlink", *security, "--host", host, "--port", str(port),
            "--disable-runtime-dependency-installation", "--database", str(work / "superlink.db"),
        ],
        env,
        cwd=work,
    )  # fmt: skip
    _wait_for_port(reach, port, children, "superlink")
    flwr_home = Path(env["FLWR_HOME"])
    flwr_home.mkdir(parents=True, exist_ok=True)
    flower_config = {"superlink": {"default": CONNECTION, CONNECTION: connection}}
    (flwr_home / "config.toml").write_text(tomli_w.dumps(flower_config))
    return port


def start_federation(children: Children, work: Path, clients: int, env: dict[str, str]) -> Federation:
    """A SuperLink and one SuperNode per client, all on loopback."""
    superlink_port = start_superlink(children, work, env)
    # The trainers share this machine's cores: more torch threads than cores
    # make every one of them wait on the others. A value the user set wins.
    threads = env.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // clients))
    node_env = {**env, "OMP_NUM_THREADS": threads}
    node_dirs = []
    for partition_id in range(clients):
        node_dir = work / "nodes" / f"client-{partition_id}"
        node_dir.mkdir(parents=True, exist_ok=True)
        node_dirs.append(node_dir)
        node_config = f"partition-id={partition_id} num-partitions={clients} state-dir={json.dumps(str(node_dir))}"
        children.start(
            f"supernode-{partition_id}",
            [
                "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{superlink_port}",
                "--host", "127.0.0.1", "--port", str(_free_port()), "--node-config", node_config,
            ],
            node_env,
            cwd=node_dir,
        )  # fmt: skip
    return Federation(env, node_dirs)


def start_explainer(children: Children, address: str, env: Mapping[str, str]) -> None:
    children.start("explainer", [sys.executable, "-m", "fedxai.cli", "explainer", "--address", address], env)
    _wait_for_explainer(address, children)


def run_federation(options: RunOptions, base_env: Mapping[str, str], out: TextIO) -> dict[str, Any]:
    """Runs the federation to the end; returns the final metrics document."""
    preflight(options)
    task = options.task
    store = open_store(options.storage)
    store.check()
    work = options.work_dir.resolve()
    children = Children(work / "logs")
    children.log_dir.mkdir(parents=True, exist_ok=True)
    storage_env = storage_environment(options.storage)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    where = (
        f"s3://{options.storage.s3.bucket} at {options.storage.s3.endpoint}"
        if options.storage.s3
        else f"{options.storage.output_dir}/"
    )
    say(
        out,
        f"FedXAI: task {task.task_name}, {options.clients} clients, {task.num_server_rounds} rounds, "
        f"XAI {'on' if task.xai_enabled else 'off'}, storage {where}; logs in {children.log_dir}/",
    )
    try:
        if options.start_explainer:
            start_explainer(children, task.explainer_address, {**base_env, **storage_env})
            say(out, f"explainer ready on {task.explainer_address}")
        federation = start_federation(children, work, options.clients, flower_env(base_env, work, storage_env))
        say(out, f"superlink and {options.clients} supernodes started")
        federation.submit(children, "flwr-run", options.app_dir, task.to_run_config())
        document = _follow(children, store, task, started, out)
        if task.xai_enabled:
            _flush_outboxes([*federation.node_dirs, aggregator_state_dir(work) / task.task_name], task, out)
        return document
    finally:
        children.stop_all()


def run_aggregator(
    task: TaskConfig,
    storage: StorageSettings,
    app_dir: Path,
    work_dir: Path,
    address: tuple[str, int],
    base_env: Mapping[str, str],
    out: TextIO,
    tls: tuple[str, str, str] | None = None,
) -> dict[str, Any]:
    """The aggregator of a multi-host deployment: a SuperLink that trainers on
    other hosts join, and the run submitted to it, followed to its end."""
    store = open_store(storage)
    store.check()
    work = work_dir.resolve()
    children = Children(work / "logs")
    children.log_dir.mkdir(parents=True, exist_ok=True)
    env = flower_env(base_env, work, storage_environment(storage))
    started = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        host, port = address
        start_superlink(children, work, env, host, port, tls)
        say(out, f"superlink on {host}:{port}; task {task.task_name} waits for {task.min_train_nodes} trainers")
        Federation(env, []).submit(children, "flwr-run", app_dir, task.to_run_config())
        return _follow(children, store, task, started, out)
    finally:
        children.stop_all()


def _follow(children: Children, store: ObjectStore, task: TaskConfig, started: str, out: TextIO) -> dict[str, Any]:
    """Prints each round as the aggregator records it, until the run ends."""
    reported = 0
    while True:
        document = _read_metrics(store, task.task_name, started)
        rounds = [r for r in (document or {}).get("rounds", []) if r["round"] > 0]
        for entry in rounds[reported:]:
            say(out, _describe_round(entry, task.num_server_rounds))
        reported = len(rounds)
        status = (document or {}).get("status")
        if status == "finished":
            return document or {}
        if status == "failed":
            raise RunFailed(f"the aggregator reported a failure:\n{children.tail('flwr-run', 30)}")
        dead = [name for name in children.dead() if name != "flwr-run"]
        if dead:
            raise RunFailed(f"{dead[0]} exited during the run:\n{children.tail(dead[0])}")
        if "flwr-run" in children.dead():
            # The stream ends with the run; give the last metrics write a moment.
            time.sleep(POLL_SECONDS)
            document = _read_metrics(store, task.task_name, started)
            if document and document.get("status") == "finished":
                continue
            raise RunFailed(f"the run ended without finishing:\n{children.tail('flwr-run', 30)}")
        time.sleep(POLL_SECONDS)


def _flush_outboxes(node_dirs: list[Path], task: TaskConfig, out: TextIO) -> None:
    """Delivers explanation requests that trainers and the aggregator queued while
    the explainer was away."""
    from fedxai.delivery import Outbox, deliver

    for node_dir in node_dirs:
        outbox = Outbox(node_dir / "outbox")
        if not outbox.pending():
            continue
        delivery = deliver(task.explainer_address, task.explainer_timeout, outbox, ca_file=task.explainer_ca_file)
        say(
            out,
            f"{node_dir.name}: delivered {delivery.sent} queued explanation requests"
            + (f", {delivery.queued} still queued in {outbox.directory}" if delivery.queued else ""),
        )


def summary(document: dict[str, Any], options: RunOptions) -> str:
    task = options.task.task_name
    last = document["rounds"][-1]["global"]
    if options.storage.s3:
        place = f"s3://{options.storage.s3.bucket}/{task}/"
    else:
        place = f"{options.storage.output_dir}/{task}/"
    return (
        f"done: {document['num_rounds']} rounds, global accuracy {last['accuracy']:.1%}\n"
        f"  heatmaps: {place}round-<NNN>/<client>/gradcam_class_<label>.jpg\n"
        f"  metrics:  {place}metrics.json\n"
        f"  global checkpoints: {place}round-<NNN>/global_model.safetensors\n"
    )


def build_task(app_dir: Path, overrides: dict[str, Any], clients: int | None = None) -> TaskConfig:
    """The default task from pyproject.toml with command-line overrides, validated.

    With a known number of ``clients`` below the default minimum, the minimum is
    lowered to it, unless it was set.
    """
    defaults = task_defaults(app_dir)
    for key in ("min-train-nodes", "min-evaluate-nodes"):
        if clients is not None and key not in overrides and isinstance(defaults.get(key), int):
            overrides = {**overrides, key: min(defaults[key], clients)}
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise SettingsError(f"unknown task setting {unknown[0]!r} (known: {', '.join(sorted(defaults))})")
    return TaskConfig.from_run_config({**defaults, **overrides})
