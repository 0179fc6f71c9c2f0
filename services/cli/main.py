"""The ``fedxai`` command line: argument parsing, and a handler per command."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from fedxai.errors import StoreError
from fedxai.settings import (
    DEFAULT_EXPLAINER_ADDRESS,
    MIB,
    ExplainerSettings,
    SettingsError,
    StorageSettings,
    is_loopback,
    parse_address,
    read_secret,
)
from fedxai.storage import ObjectStore, open_store
from fedxai.task import TaskConfig

DESCRIPTION = (
    "FedXAI: federated learning with Flower and Grad-CAM explanations. `fedxai run` starts everything on "
    "this machine; the other commands serve one part of it each. Storage, for every command: S3/MinIO when "
    "FEDXAI_S3_ENDPOINT is set (with FEDXAI_S3_ACCESS_KEY, FEDXAI_S3_SECRET_KEY, FEDXAI_S3_BUCKET, "
    "FEDXAI_S3_SECURE), else the folder --output-dir (FEDXAI_OUTPUT_DIR, default: outputs)."
)
log = logging.getLogger("fedxai")


def _storage(args: argparse.Namespace) -> StorageSettings:
    storage = StorageSettings.from_env(os.environ)
    if args.output_dir:
        storage = StorageSettings(s3=storage.s3, output_dir=Path(args.output_dir))
    return storage


def _open_store(args: argparse.Namespace, *, create: bool) -> ObjectStore:
    store = open_store(_storage(args))
    store.check(create=create)
    return store


def _explainer(args: argparse.Namespace) -> int:
    # Imported here so `fedxai --help` stays fast (no torch import).
    from services.explainer.server import serve

    settings = ExplainerSettings(
        address=args.address,
        max_message_bytes=args.max_message_mib * MIB,
        max_batch_size=args.max_batch_size,
        memory_budget_bytes=args.memory_budget_mib * MIB,
        workers=args.workers,
        cached_models=args.cached_models,
        tls_cert_file=args.tls_cert_file,
        tls_key_file=args.tls_key_file,
        callers_file=args.callers_file,
        allow_unauthenticated=args.allow_unauthenticated,
    )
    serve(settings, _open_store(args, create=True))
    return 0


def _task_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Task settings given on the command line: --set pairs and the shortcut flags."""
    from services.cli.tasks import parse_overrides

    overrides = parse_overrides(args.set)
    for key, value in (
        ("num-server-rounds", args.rounds),
        ("data-dir", args.data_dir and str(Path(args.data_dir).resolve())),
        ("explainer-address", args.explainer_address),
    ):
        if value is not None:
            overrides[key] = value
    if args.no_xai:
        overrides["xai-enabled"] = False
    return overrides


def _task(
    args: argparse.Namespace, app_dir: Path, clients: int | None = None, shared_store: bool = False
) -> TaskConfig:
    """The task to run: a new run, or the run ``--resume`` names, continued. With
    ``shared_store`` (trainers on this machine, using the aggregator's store), the models
    go through the store unless the command line says otherwise."""
    from services.cli.federation import named, resumed_task
    from services.cli.tasks import build_task

    overrides = _task_overrides(args)
    if shared_store:
        overrides.setdefault("model-transfer", "store")
    if args.resume:
        return resumed_task(app_dir, overrides, _storage(args), args.resume)
    return named(build_task(app_dir, overrides, clients))


def _run(args: argparse.Namespace) -> int:
    from services.cli.federation import RunOptions, Simulation, dry_run, run_federation
    from services.cli.progress import RunFailed, summary
    from services.cli.tasks import default_app_dir

    if args.clients < 1:
        raise SettingsError("--clients must be at least 1")
    resources = {"client_cpus": args.client_cpus, "client_gpus": args.client_gpus}
    given = {name: value for name, value in resources.items() if value is not None}  # the others keep their defaults
    simulation = None
    if args.simulation:
        simulation = Simulation(**given)
        if simulation.client_cpus < 1 or simulation.client_gpus < 0:
            raise SettingsError("--client-cpus must be at least 1 and --client-gpus not negative")
    elif given:
        raise SettingsError("--client-cpus and --client-gpus set the resources of simulated clients: add --simulation")
    app_dir = Path(args.app_dir) if args.app_dir else default_app_dir()
    options = RunOptions(
        # Simulated clients get their messages in memory: the store would only add reads and writes.
        task=_task(args, app_dir, args.clients, shared_store=simulation is None),
        clients=args.clients,
        storage=_storage(args),
        app_dir=app_dir,
        work_dir=Path(args.work_dir),
        start_explainer=not args.external_explainer,
        simulation=simulation,
    )
    if args.dry_run:
        dry_run(options, os.environ, sys.stdout)
        return 0
    try:
        document = run_federation(options, os.environ, sys.stdout)
    except RunFailed as error:
        sys.stderr.write(f"fedxai: run failed: {error}\n")
        return 1
    sys.stdout.write(summary(document, options.storage, options.task))
    return 0


def _aggregator(args: argparse.Namespace) -> int:
    from services.cli.federation import run_aggregator
    from services.cli.progress import RunFailed, summary
    from services.cli.tasks import default_app_dir

    app_dir = Path(args.app_dir) if args.app_dir else default_app_dir()
    task = _task(args, app_dir)
    address = parse_address("--address", args.address)
    tls = (args.tls_cert_file, args.tls_key_file, args.tls_ca_file)
    if any(tls) and not all(tls):
        raise SettingsError("--tls-cert-file, --tls-key-file and --tls-ca-file go together")
    storage = _storage(args)
    try:
        document = run_aggregator(
            task, storage, app_dir, Path(args.work_dir), address, os.environ, sys.stdout, tls if all(tls) else None
        )
    except RunFailed as error:
        sys.stderr.write(f"fedxai: run failed: {error}\n")
        return 1
    sys.stdout.write(summary(document, storage, task))
    return 0


def _trainer(args: argparse.Namespace) -> int:
    from services.trainer.warm_node import WarmNode

    # Flower's logger prints for itself (in the ClientApps too): not once more through ours.
    logging.getLogger("flwr").propagate = False
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per poll of the Runtime API otherwise
    return WarmNode(list(args.supernode_args)).serve()


def _superexec(args: argparse.Namespace) -> int:
    from services.cli.superexec import serve

    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request the relay passes on otherwise
    return serve(list(args.superexec_args))


def _health(args: argparse.Namespace) -> int:
    """Exit status 0 when the service at --address reports SERVING (for container health checks)."""
    from services.cli.status import explainer_health

    answer, serving = explainer_health(args.address, args.tls_ca_file, args.timeout, args.service)
    (sys.stdout if serving else sys.stderr).write(f"{args.address}: {answer}\n")
    return 0 if serving else 1


def _status(args: argparse.Namespace) -> int:
    from services.cli.status import report

    return report(args, _storage(args), sys.stdout)


def _monitor(args: argparse.Namespace) -> int:
    import uvicorn

    from services.cli.credentials import MONITOR_USER
    from services.monitor.app import create_app

    host, port = parse_address("--address", args.address)
    password = read_secret("--password-file", args.password_file) if args.password_file else ""
    if not (password or args.allow_unauthenticated or is_loopback(host)):
        raise SettingsError(
            f"--address {args.address} lets other machines read every run: give --password-file, "
            "or --allow-unauthenticated to show them to anyone"
        )
    store = _open_store(args, create=False)
    log.info("monitor storage: %s", store.describe())
    if not password:
        log.warning("no password: anyone who reaches %s sees every run", args.address)
    app = create_app(store, MONITOR_USER, password)
    # No websockets: the page polls, and the websockets stack only adds deprecation noise.
    uvicorn.run(app, host=host.strip("[]"), port=port, log_level=args.log_level.lower(), ws="none")
    return 0


def _credentials(args: argparse.Namespace) -> int:
    from services.cli.credentials import CALLERS_FILE, make_credentials

    directory = Path(args.directory)
    if args.keep_existing and (directory / CALLERS_FILE).exists():
        sys.stdout.write(f"credentials in {directory} kept\n")
        return 0
    written = make_credentials(directory, args.trainer)
    sys.stdout.write(f"wrote {', '.join(written)} into {directory}\n")
    return 0


def _download_mnist(args: argparse.Namespace) -> int:
    from fedxai.datasets import MNIST
    from fedxai.mnist import available_splits

    directory = Path(args.directory)
    if available_splits(directory):  # a folder people filled themselves is used as it is
        sys.stdout.write(f"MNIST IDX files already in {directory}\n")
        return 0
    try:
        MNIST.download(directory)
    except FileNotFoundError as error:
        raise SettingsError(str(error)) from None
    sys.stdout.write(f"MNIST IDX files in {directory}\n")
    return 0


def _add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output-dir", help="folder for images and metrics when not using S3 (FEDXAI_OUTPUT_DIR; default: outputs)"
    )


def _add_access_arguments(parser: argparse.ArgumentParser, flag: str, help_text: str) -> None:
    """Who may use a server; on loopback, without ``flag``, anyone on this machine."""
    parser.add_argument(flag, default="", help=help_text)
    parser.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help=f"serve anyone on a non-loopback address without {flag}",
    )


def _add_task_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, help="federated rounds (task setting num-server-rounds)")
    parser.add_argument(
        "--data-dir", help="the dataset's folder (task setting data-dir); default: the dataset's own place"
    )
    parser.add_argument(
        "--explainer-address",
        help=f"HOST:PORT of the explainer (default {DEFAULT_EXPLAINER_ADDRESS}), or a gRPC target naming "
        "replicas: dns:///NAME:PORT, ipv4:A:PORT,B:PORT",
    )
    parser.add_argument("--no-xai", action="store_true", help="train without explanations")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any task setting, e.g. --set local-epochs=2"
    )
    _add_storage_arguments(parser)
    parser.add_argument("--work-dir", default=".fedxai", help="logs, Flower state and trainer outboxes")
    parser.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="continue this run of the task, stopped or failed, after the last round it stored "
        "(its recorded settings, with the ones given here on top)",
    )
    parser.add_argument("--app-dir", help="the project source tree holding the Flower app (default: this one)")


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.ArgumentDefaultsHelpFormatter
    # No abbreviated flags: `--round 3` must not pass for `--rounds 3`.
    parser = argparse.ArgumentParser(
        prog="fedxai", description=DESCRIPTION, formatter_class=formatter, allow_abbrev=False
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=help_text, description=description, formatter_class=formatter, allow_abbrev=False
        )
        sub.set_defaults(command_parser=sub)  # errors show this command's usage, not the top level's
        return sub

    defaults = ExplainerSettings()
    explainer = command("explainer", "serve the Explainer gRPC service", "Serve the Explainer over gRPC.")
    explainer.add_argument("--address", default=defaults.address, help="HOST:PORT to listen on")
    explainer.add_argument(
        "--max-message-mib", type=int, default=defaults.max_message_bytes // MIB, help="largest request"
    )
    explainer.add_argument(
        "--max-batch-size", type=int, default=defaults.max_batch_size, help="most samples per Explain call"
    )
    explainer.add_argument(
        "--memory-budget-mib",
        type=int,
        default=defaults.memory_budget_bytes // MIB,
        help="memory Explain calls may hold at once; beyond it they wait, then get RESOURCE_EXHAUSTED",
    )
    explainer.add_argument("--workers", type=int, default=defaults.workers, help="requests served at once")
    explainer.add_argument(
        "--cached-models",
        type=int,
        default=defaults.cached_models,
        help="decoded models kept for the next requests (0: none)",
    )
    explainer.add_argument("--tls-cert-file", default="", help="PEM certificate chain: serve TLS")
    explainer.add_argument("--tls-key-file", default="", help="PEM private key of the certificate")
    _add_access_arguments(explainer, "--callers-file", "who may call, and for what (made by `fedxai credentials`)")
    _add_storage_arguments(explainer)
    explainer.set_defaults(handler=_explainer)

    run = command(
        "run",
        "run the federation with XAI on this machine",
        "Start the explainer, a Flower SuperLink and one SuperNode per client (or, with --simulation, a "
        "SuperLink that simulates the clients), run the task under a new run id and stop everything at the end.",
    )
    run.add_argument("--clients", type=int, default=2, help="trainers (SuperNodes, or simulated clients) to start")
    run.add_argument(
        "--simulation",
        action="store_true",
        help="run the clients on Flower's simulation engine (Ray; pip install 'fedxai[simulation]') "
        "rather than one SuperNode each: for many clients on one machine",
    )
    run.add_argument("--client-cpus", type=int, help="with --simulation: CPUs each client takes (default 1)")
    run.add_argument("--client-gpus", type=float, help="with --simulation: GPUs (or a share) each takes (default 0)")
    _add_task_arguments(run)
    run.add_argument(
        "--external-explainer", action="store_true", help="use an explainer already serving at the address"
    )
    run.add_argument(
        "--dry-run", action="store_true", help="print every process it would start, with its environment, and exit"
    )
    run.set_defaults(handler=_run)

    aggregator = command(
        "aggregator",
        "serve a SuperLink for trainers on other hosts and run the task on it",
        "Start a Flower SuperLink on --address, submit the task, report each round, and exit when the run "
        "ends. Trainers join with `flower-supernode --superlink HOST:PORT`.",
    )
    aggregator.add_argument("--address", default="0.0.0.0:9092", help="HOST:PORT for the SuperLink")
    aggregator.add_argument("--tls-cert-file", default="", help="SuperLink TLS certificate (PEM)")
    aggregator.add_argument("--tls-key-file", default="", help="SuperLink TLS private key (PEM)")
    aggregator.add_argument("--tls-ca-file", default="", help="CA that signed the certificate (PEM)")
    _add_task_arguments(aggregator)
    aggregator.set_defaults(handler=_aggregator)

    trainer = command(
        "trainer",
        "run a Flower SuperNode whose ClientApps start with torch already imported",
        "Start `flower-supernode SUPERNODE_ARGS --isolation process` and launch each of its ClientApps in a "
        "process forked from this one, which has imported torch and Flower already: about 3 s less per message "
        "than Flower's own launcher. The SuperNode reaches the SuperLink (--superlink, with --insecure or "
        "--root-certificates) through a relay on loopback that answers a pull as soon as a message arrives, "
        "rather than after the SuperNode's 3 s pause. The SuperNode's Runtime API (--host, --port) must stay "
        "on loopback.",
    )
    trainer.add_argument(
        "supernode_args", nargs="*", metavar="SUPERNODE_ARGS", help="flower-supernode's flags, after --"
    )
    trainer.set_defaults(handler=_trainer)

    superexec = command(
        "superexec",
        "run Flower's SuperExec for a SuperLink's ServerApps, through a relay that spares them Flower's 1 s waits",
        "Start `flower-superexec SUPEREXEC_ARGS` for a SuperLink started with `--isolation process`, its Runtime "
        "API (--runtime-api-address, with --insecure or --root-certificates) reached through a relay on loopback. "
        "A ServerApp that pulls a trainer's reply before the reply is uploaded in full is answered once it is, "
        "rather than after Flower's 1 s wait. `fedxai run` and `fedxai aggregator` start one beside their SuperLink.",
    )
    superexec.add_argument(
        "superexec_args", nargs="*", metavar="SUPEREXEC_ARGS", help="flower-superexec's flags, after --"
    )
    superexec.set_defaults(handler=_superexec)

    health = command(
        "health",
        "check a gRPC service's health (exit 0 when SERVING)",
        "Ask a gRPC server's standard health service whether it serves; for container health checks.",
    )
    health.add_argument("--address", default=DEFAULT_EXPLAINER_ADDRESS, help="HOST:PORT of the server")
    health.add_argument("--service", default="", help="service name; empty: the whole server")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    health.add_argument("--tls-ca-file", default="", help="CA certificate: connect with TLS")
    health.set_defaults(handler=_health)

    status = command(
        "status",
        "show which services answer and the runs going on (exit 1 when one is down)",
        "Check the explainer's health, the SuperLink and its SuperNodes (through the `flwr` connection in "
        "--work-dir), the store, and list the runs whose status is running.",
    )
    status.add_argument("--explainer-address", default=DEFAULT_EXPLAINER_ADDRESS, help="HOST:PORT of the explainer")
    status.add_argument("--tls-ca-file", default="", help="CA certificate of the explainer: connect with TLS")
    status.add_argument("--work-dir", default=".fedxai", help="the work dir of `fedxai run` or `fedxai aggregator`")
    status.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for each service")
    _add_storage_arguments(status)
    status.set_defaults(handler=_status)

    monitor = command(
        "monitor",
        "serve the monitoring page (read-only) over the store",
        "Serve a web page with each run's metrics per round and its heatmaps.",
    )
    monitor.add_argument("--address", default="127.0.0.1:8080", help="HOST:PORT to listen on")
    _add_access_arguments(
        monitor, "--password-file", "ask for user fedxai and this password (made by `fedxai credentials`)"
    )
    _add_storage_arguments(monitor)
    monitor.set_defaults(handler=_monitor)

    credentials = command(
        "credentials",
        "make tokens for the explainer's callers and the monitor's password",
        "Write callers.toml (for `fedxai explainer --callers-file`), a token file per caller (the aggregator, "
        "each trainer, a reader and an operator) and monitor.password into DIRECTORY, readable by their owner only.",
    )
    credentials.add_argument("directory", help="folder for the files")
    credentials.add_argument(
        "--trainer", action="append", default=[], metavar="CLIENT_ID", help="a trainer's client id (repeatable)"
    )
    credentials.add_argument(
        "--keep-existing", action="store_true", help="do nothing when DIRECTORY has a callers file already"
    )
    credentials.set_defaults(handler=_credentials)

    download = command(
        "download-mnist",
        "fetch MNIST's IDX files into a folder, once",
        "Download MNIST with torchvision into DIRECTORY, unless its IDX files are there already.",
    )
    download.add_argument("directory", help="folder for the IDX files (the --data-dir of `run`)")
    download.set_defaults(handler=_download_mnist)
    return parser


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # SIGTERM unwinds like Ctrl-C, so every `finally` (stopping child processes) runs.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return int(args.handler(args))
    except SettingsError as error:
        parser.exit(2, f"fedxai: error: {error}\n")
    except StoreError as error:
        parser.exit(1, f"fedxai: storage error: {error}\n")
    except KeyboardInterrupt:
        parser.exit(130, "fedxai: interrupted; every process it started is stopped\n")
