"""``fedxai run`` and ``fedxai aggregator``: the federation's processes, described,
started, followed to the end of the run and stopped.

``fedxai run`` starts the Explainer, a Flower SuperLink (with ``fedxai superexec``,
which launches its ServerApps) and one SuperNode per trainer on this machine and
submits the run with ``flwr run``; ``fedxai aggregator`` starts only the SuperLink
(with its ``fedxai superexec``), for trainers on other hosts. Both name
the run (``run-id``), keep every process's log in the store next to the run's
results, and stop every process they started when the run ends, fails or is
interrupted.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import tomli_w

from fedxai.data import load_pool
from fedxai.errors import StoreError
from fedxai.settings import (
    TARGET_SCHEMES,
    TRAINER_STATE_DIR_VARIABLE,
    SettingsError,
    StorageSettings,
    parse_address,
)
from fedxai.storage import ObjectStore, open_store, read_document
from fedxai.storage.layout import log_key, metrics_key, new_run_id
from fedxai.task import TaskConfig, validate_id_setting
from services.cli.processes import Children, Process
from services.cli.progress import RunFailed, follow, place, say
from services.cli.tasks import build_task, task_defaults

CONNECTION = "fedxai-local"
STARTUP_TIMEOUT = 120.0


@dataclass(frozen=True)
class Simulation:
    """Flower's simulation engine (Ray) runs the clients, instead of one SuperNode each."""

    client_cpus: int = 1  # Ray runs as many clients at once as the machine's cores allow
    client_gpus: float = 0.0

    def federation_config(self, clients: int) -> str:
        """``flwr run --federation-config``: how many clients, with what resources."""
        return (
            f"num-supernodes={clients} client-resources-num-cpus={self.client_cpus} "
            f"client-resources-num-gpus={self.client_gpus}"
        )


@dataclass(frozen=True)
class RunOptions:
    task: TaskConfig
    clients: int
    storage: StorageSettings
    app_dir: Path
    work_dir: Path
    start_explainer: bool = True
    simulation: Simulation | None = None


def named(task: TaskConfig) -> TaskConfig:
    """The task with its run id: the one given, or a new one."""
    return task if task.run_id else replace(task, run_id=new_run_id(datetime.now(UTC)))


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


def flower_env(base: Mapping[str, str], work: Path, storage_env: Mapping[str, str]) -> dict[str, str]:
    """What Flower's processes get on top of ``base``."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        # Where trainers keep their state (outboxes) when their node config names no folder:
        # the clients the simulation engine runs.
        TRAINER_STATE_DIR_VARIABLE: str(nodes_dir(work)),
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


def nodes_dir(work: Path) -> Path:
    """Each trainer's state folder is ``<this>/<client-id>``."""
    return work / "nodes"


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
    if options.simulation is not None and importlib.util.find_spec("ray") is None:
        raise SettingsError(
            "--simulation runs the clients on Flower's simulation engine, which needs Ray: "
            "pip install 'fedxai[simulation]'"
        )
    if task.attack != "none" and task.attack_client >= options.clients:
        raise SettingsError(f"attack-client {task.attack_client} is not one of the {options.clients} clients")
    from fedxai.models import architectures  # torch, once the task is to run

    try:  # reads the files, or downloads them once here rather than in every node
        load_pool(
            task.dataset,
            task.data_dir,
            architectures()[task.architecture],
            task.test_fraction,
            task.seed,
            task.max_samples,
        )
    except (FileNotFoundError, ValueError) as error:
        raise SettingsError(str(error)) from None
    if options.start_explainer:
        if task.explainer_address.startswith(TARGET_SCHEMES):
            raise SettingsError(
                f"explainer-address {task.explainer_address}: fedxai run starts one explainer, at a HOST:PORT; "
                "add --external-explainer to use replicas you run yourself"
            )
        host, port = parse_address("explainer-address", task.explainer_address)
        if not _port_is_free(host, port):
            raise SettingsError(
                f"explainer-address {task.explainer_address} is in use; stop what listens there or pass "
                "--explainer-address HOST:PORT"
            )


# The processes, described.


def explainer_process(address: str, env: dict[str, str]) -> Process:
    return Process("explainer", [sys.executable, "-m", "services.cli", "explainer", "--address", address], env)


@dataclass(frozen=True)
class SuperLink:
    process: Process
    port: int
    # The `flwr` connection to it, written to $FLWR_HOME/config.toml.
    connection: dict[str, Any]
    # `fedxai superexec`, which launches its ServerApps; None where the SuperLink launches them itself.
    superexec: Process | None = None


def superlink(
    work: Path,
    env: dict[str, str],
    host: str = "127.0.0.1",
    port: int = 0,
    tls: tuple[str, str, str] | None = None,
    simulation: bool = False,
    flower_defaults: bool = False,
) -> SuperLink:
    """A SuperLink (Fleet, Control and Runtime APIs on one port), with ``fedxai superexec``
    launching its ServerApps. ``tls``: certificate, key and CA files; ``simulation``: it runs
    the clients itself, on Flower's simulation engine, and its ServerApps too;
    ``flower_defaults``: it launches its ServerApps itself, as Flower does."""
    port = port or _free_port()
    # `flwr run` reaches the SuperLink where it listens; a wildcard means loopback will do.
    reach = "127.0.0.1" if host in ("0.0.0.0", "::", "[::]") else host
    if tls:
        cert, key, ca = tls
        security = ["--ssl-certfile", cert, "--ssl-keyfile", key, "--ssl-ca-certfile", ca]
        connection: dict[str, Any] = {"address": f"{reach}:{port}", "root-certificates": ca}
        client_security = ["--root-certificates", ca]
    else:
        security = ["--insecure"]
        connection = {"address": f"{reach}:{port}", "insecure": True}
        client_security = ["--insecure"]
    # No --database: Flower keeps its state and the messages' objects in memory. With a
    # file, every object of every message goes through SQLite on disk: it took a 4.8 MB
    # model 0.9 s to reach the SuperLink, and a reply 2.3 s, where it now takes 0.3 s.
    argv = [
        "flower-superlink", *security, "--host", host, "--port", str(port),
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip
    superexec = None
    if simulation:
        argv.append("--simulation")
    elif not flower_defaults:
        argv += ["--isolation", "process"]
        launcher = [sys.executable, "-m", "services.cli", "superexec", "--"]
        superexec_argv = [*launcher, *client_security, "--runtime-api-address", f"{reach}:{port}"]
        superexec = Process("superexec", superexec_argv, env, cwd=work)
    return SuperLink(Process("superlink", argv, env, cwd=work), port, connection, superexec)


def supernodes(
    work: Path,
    clients: int,
    superlink_port: int,
    env: dict[str, str],
    base_env: Mapping[str, str],
    flower_defaults: bool = False,
) -> list[Process]:
    """One SuperNode per client, on loopback, each with its own state folder; under
    `fedxai trainer`, or launching its ClientApps as Flower does (``flower_defaults``)."""
    # The trainers share this machine's cores: more torch threads than cores
    # make every one of them wait on the others. A value the user set wins.
    threads = base_env.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // clients))
    node_env = {**env, "OMP_NUM_THREADS": threads}
    processes = []
    for partition_id in range(clients):
        node_dir = nodes_dir(work) / f"client-{partition_id}"
        node_config = f"partition-id={partition_id} num-partitions={clients} state-dir={json.dumps(str(node_dir))}"
        # `fedxai trainer`: a SuperNode whose ClientApps start with torch imported.
        launcher = ["flower-supernode"] if flower_defaults else [sys.executable, "-m", "services.cli", "trainer", "--"]
        argv = [
            *launcher, "--insecure", "--superlink", f"127.0.0.1:{superlink_port}",
            "--host", "127.0.0.1", "--port", str(_free_port()), "--node-config", node_config,
        ]  # fmt: skip
        processes.append(Process(f"supernode-{partition_id}", argv, node_env, cwd=node_dir))
    return processes


def run_config_file(work: Path, name: str) -> Path:
    return work / f"{name}-config.toml"


def submission(name: str, work: Path, app_dir: Path, env: dict[str, str], federation_config: str = "") -> Process:
    """``flwr run`` of the app with the run config in ``<work>/<name>-config.toml``
    (``federation_config``: the simulated clients)."""
    argv = ["flwr", "run", str(app_dir), CONNECTION, "--stream", "--run-config", str(run_config_file(work, name))]
    if federation_config:
        argv += ["--federation-config", federation_config]
    return Process(name, argv, env)


def plan(options: RunOptions, base_env: Mapping[str, str]) -> list[Process]:
    """Every process ``fedxai run`` starts, in order (the ports are chosen now)."""
    work = options.work_dir.resolve()
    storage_env = storage_environment(options.storage)
    env = flower_env(base_env, work, storage_env)
    simulation = options.simulation
    link = superlink(work, env, simulation=simulation is not None)
    nodes = [] if simulation else supernodes(work, options.clients, link.port, env, base_env)
    federation_config = simulation.federation_config(options.clients) if simulation else ""
    launchers = [link.superexec] if link.superexec else []
    submitted = submission("flwr-run", work, options.app_dir, env, federation_config)
    processes = [link.process, *launchers, *nodes, submitted]
    if options.start_explainer:
        processes.insert(0, explainer_process(options.task.explainer_address, storage_env))
    return processes


def dry_run(options: RunOptions, base_env: Mapping[str, str], out: TextIO) -> None:
    """What ``fedxai run --dry-run`` prints: each process, the run config, and nothing started."""
    preflight(options)
    inherited = len(base_env)
    say(
        out,
        f"run {options.task.run_id} of task {options.task.task_name} would start, in order "
        "(free ports are picked again at start):\n",
    )
    for process in plan(options, base_env):
        say(out, process.describe() + "\n")
    say(out, f"each with this shell's {inherited} environment variables beneath the ones shown.")
    say(out, f"run config (flwr run --run-config):\n{tomli_w.dumps(options.task.to_run_config())}")
    say(out, f"results and logs would go to {place(options.storage, options.task)}")


# Starting them.


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


def start_explainer(children: Children, address: str, env: dict[str, str]) -> None:
    children.start(explainer_process(address, env))
    _wait_for_explainer(address, children)


def start_superlink(children: Children, link: SuperLink) -> None:
    """Starts the SuperLink (and its ``fedxai superexec``), waits for it, and writes the
    ``flwr`` connection to it."""
    children.start(link.process)
    _wait_for_port(link.connection["address"].rsplit(":", 1)[0], link.port, children, "superlink")
    if link.superexec is not None:
        children.start(link.superexec)
    flwr_home = Path(link.process.env["FLWR_HOME"])
    flwr_home.mkdir(parents=True, exist_ok=True)
    flower_config = {"superlink": {"default": CONNECTION, CONNECTION: link.connection}}
    (flwr_home / "config.toml").write_text(tomli_w.dumps(flower_config))


@dataclass(frozen=True)
class Federation:
    """A running SuperLink with its SuperNodes, ready for ``flwr run``."""

    work: Path
    env: dict[str, str]
    node_dirs: list[Path]
    federation_config: str = ""  # the simulated clients, when the SuperLink simulates them

    def submit(self, children: Children, name: str, app_dir: Path, run_config: dict[str, Any]) -> None:
        """Starts ``flwr run`` for the app; its log streams to ``<name>.log``."""
        process = submission(name, self.work, app_dir, self.env, self.federation_config)
        run_config_file(self.work, name).write_text(tomli_w.dumps(run_config))
        children.start(process)


def start_federation(
    children: Children,
    work: Path,
    clients: int,
    env: dict[str, str],
    simulation: Simulation | None = None,
    flower_defaults: bool = False,
) -> Federation:
    """A SuperLink and one SuperNode per client, all on loopback; or, with
    ``simulation``, a SuperLink that simulates the clients. ``flower_defaults``: the
    processes launch their apps as Flower does, with no relays (the benchmark's bare app)."""
    link = superlink(work, env, simulation=simulation is not None, flower_defaults=flower_defaults)
    start_superlink(children, link)
    if simulation is not None:
        node_dirs = [nodes_dir(work) / f"client-{partition_id}" for partition_id in range(clients)]
        return Federation(work, env, node_dirs, simulation.federation_config(clients))
    nodes = supernodes(work, clients, link.port, env, children.base_env, flower_defaults)
    for node in nodes:
        assert node.cwd is not None
        node.cwd.mkdir(parents=True, exist_ok=True)
        children.start(node)
    return Federation(work, env, [node.cwd for node in nodes if node.cwd is not None])


def resumed_task(app_dir: Path, overrides: dict[str, Any], storage: StorageSettings, run_id: str) -> TaskConfig:
    """The task of run ``run_id`` as the run recorded it, with the command line's
    settings on top, continuing after the last round whose global model it stored."""
    validate_id_setting("--resume", run_id)
    task_name = build_task(app_dir, overrides).task_name
    store = open_store(storage)
    store.check()
    document = read_document(store, metrics_key(task_name, run_id))
    if document is None:
        raise SettingsError(f"--resume {run_id}: task {task_name} has no such run")
    stored = [entry["round"] for entry in document.get("rounds", []) if "checkpoint" in entry]
    if not stored:
        raise SettingsError(f"--resume {run_id}: the run stored no global model yet; start a new run instead")
    # Recorded settings that this version no longer knows are dropped (with their default back).
    known = task_defaults(app_dir)
    recorded = {key: value for key, value in document.get("config", {}).items() if key in known}
    return build_task(app_dir, {**recorded, **overrides, "run-id": run_id, "resume-after-round": max(stored)})


def open_run_store(storage: StorageSettings, task: TaskConfig) -> ObjectStore:
    """The store, checked, with no run of that id in it yet (a run never writes over
    another), or, for a run that continues, with that run in it, marked running again."""
    store = open_store(storage)
    store.check()
    key = metrics_key(task.task_name, task.run_id)
    if not task.resume_after_round:
        if store.exists(key):
            raise SettingsError(f"run-id {task.run_id!r}: task {task.task_name} has a run of that id already")
        return store
    document = read_document(store, key)
    if document is None:
        raise SettingsError(f"run-id {task.run_id!r}: task {task.task_name} has no such run to continue")
    # Until the aggregator takes the record over, the end of the previous attempt must not read as this one's.
    document.update(status="running", reason=None, finished_at=None)
    store.put(key, json.dumps(document, indent=2).encode(), "application/json")
    return store


def resuming(task: TaskConfig) -> str:
    return f" (continuing after round {task.resume_after_round})" if task.resume_after_round else ""


def _started(work_dir: Path, base_env: Mapping[str, str]) -> tuple[Path, Children]:
    work = work_dir.resolve()
    children = Children(work / "logs", base_env)
    children.log_dir.mkdir(parents=True, exist_ok=True)
    return work, children


def run_federation(options: RunOptions, base_env: Mapping[str, str], out: TextIO) -> dict[str, Any]:
    """Runs the federation to the end; returns the final metrics document."""
    preflight(options)
    task = options.task
    store = open_run_store(options.storage, task)
    work, children = _started(options.work_dir, base_env)
    storage_env = storage_environment(options.storage)
    where = (
        f"s3://{options.storage.s3.bucket} at {options.storage.s3.endpoint}"
        if options.storage.s3
        else f"{options.storage.output_dir}/"
    )
    say(
        out,
        f"FedXAI: task {task.task_name}, run {task.run_id}, {options.clients} clients, {task.num_server_rounds} "
        f"rounds{resuming(task)}, {task.architecture} on {task.dataset}, XAI {'on' if task.xai_enabled else 'off'}, "
        f"storage {where}; logs in "
        f"{children.log_dir}/",
    )
    try:
        if options.start_explainer:
            start_explainer(children, task.explainer_address, storage_env)
            say(out, f"explainer ready on {task.explainer_address}")
        env = flower_env(base_env, work, storage_env)
        federation = start_federation(children, work, options.clients, env, options.simulation)
        if options.simulation is None:
            say(out, f"superlink and {options.clients} supernodes started")
        else:
            resources = options.simulation
            say(
                out,
                f"superlink started; it simulates {options.clients} clients "
                f"({resources.client_cpus} CPU, {resources.client_gpus:g} GPU each)",
            )
        federation.submit(children, "flwr-run", options.app_dir, task.to_run_config())
        document = follow(children, store, task, out)
        if task.xai_enabled:
            _flush_outboxes([*federation.node_dirs, aggregator_state_dir(work) / task.task_name], task, out)
        return document
    finally:
        children.stop_all()
        keep_logs(store, task, children, out)


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
    store = open_run_store(storage, task)
    work, children = _started(work_dir, base_env)
    env = flower_env(base_env, work, storage_environment(storage))
    try:
        host, port = address
        start_superlink(children, superlink(work, env, host, port, tls))
        say(
            out,
            f"superlink on {host}:{port}; run {task.run_id} of task {task.task_name}{resuming(task)} waits for "
            f"{task.min_train_nodes} trainers",
        )
        Federation(work, env, []).submit(children, "flwr-run", app_dir, task.to_run_config())
        return follow(children, store, task, out)
    finally:
        children.stop_all()
        keep_logs(store, task, children, out)


def keep_logs(store: ObjectStore, task: TaskConfig, children: Children, out: TextIO) -> None:
    """Copies each process's log next to the run's results."""
    for name in children.processes:
        path = children.log_path(name)
        try:
            store.put(log_key(task.task_name, task.run_id, name), path.read_bytes(), "text/plain; charset=utf-8")
        except (OSError, StoreError) as error:
            say(out, f"the log of {name} stays in {path} only: {error}")


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
