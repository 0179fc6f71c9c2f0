"""The ``fedxai`` command."""

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
    parse_address,
)


def _explainer(args: argparse.Namespace) -> int:
    # Imported here so `fedxai --help` stays fast (no torch import).
    from fedxai.storage import open_store
    from services.explainer.server import serve

    settings = ExplainerSettings(
        address=args.address,
        max_message_bytes=args.max_message_mib * MIB,
        max_batch_size=args.max_batch_size,
        workers=args.workers,
        cached_models=args.cached_models,
        tls_cert_file=args.tls_cert_file,
        tls_key_file=args.tls_key_file,
    )
    store = open_store(StorageSettings.from_env(os.environ))
    store.check()
    serve(settings, store)
    return 0


def _task_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Task settings given on the command line: --set pairs and the shortcut flags."""
    from fedxai.launcher import parse_overrides

    overrides = parse_overrides(args.set)
    for key, value in (
        ("num-server-rounds", args.rounds),
        ("data-dir", args.data_dir and str(Path(args.data_dir).resolve())),
        ("explainer-address", args.explainer_address),
    ):
        if value:
            overrides[key] = value
    if args.no_xai:
        overrides["xai-enabled"] = False
    return overrides


def _storage(args: argparse.Namespace) -> StorageSettings:
    storage = StorageSettings.from_env(os.environ)
    if args.output_dir:
        storage = StorageSettings(s3=storage.s3, output_dir=Path(args.output_dir))
    return storage


def _run(args: argparse.Namespace) -> int:
    from fedxai.launcher import RunFailed, RunOptions, build_task, default_app_dir, run_federation, summary

    if args.clients < 1:
        raise SettingsError("--clients must be at least 1")
    app_dir = Path(args.app_dir) if args.app_dir else default_app_dir()
    options = RunOptions(
        task=build_task(app_dir, _task_overrides(args), args.clients),
        clients=args.clients,
        storage=_storage(args),
        app_dir=app_dir,
        work_dir=Path(args.work_dir),
        start_explainer=not args.external_explainer,
    )
    try:
        document = run_federation(options, os.environ, sys.stdout)
    except RunFailed as error:
        sys.stderr.write(f"fedxai: run failed: {error}\n")
        return 1
    sys.stdout.write(summary(document, options))
    return 0


def _aggregator(args: argparse.Namespace) -> int:
    from fedxai.launcher import RunFailed, build_task, default_app_dir, run_aggregator

    app_dir = Path(args.app_dir) if args.app_dir else default_app_dir()
    task = build_task(app_dir, _task_overrides(args))
    address = parse_address("--address", args.address)
    tls = (args.tls_cert_file, args.tls_key_file, args.tls_ca_file)
    if any(tls) and not all(tls):
        raise SettingsError("--tls-cert-file, --tls-key-file and --tls-ca-file go together")
    try:
        document = run_aggregator(
            task,
            _storage(args),
            app_dir,
            Path(args.work_dir),
            address,
            os.environ,
            sys.stdout,
            tls if all(tls) else None,
        )
    except RunFailed as error:
        sys.stderr.write(f"fedxai: run failed: {error}\n")
        return 1
    last = document["rounds"][-1]["global"]
    sys.stdout.write(f"done: {document['num_rounds']} rounds, global accuracy {last['accuracy']:.1%}\n")
    return 0


def _health(args: argparse.Namespace) -> int:
    """Exit status 0 when the service at --address reports SERVING (for container health checks)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from fedxai.channels import open_channel

    with open_channel(args.address, args.tls_ca_file) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as error:
            sys.stderr.write(f"{args.address}: {error.code().name}: {error.details()}\n")
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    sys.stdout.write(f"{args.address}: {status}\n")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _monitor(args: argparse.Namespace) -> int:
    import uvicorn

    from fedxai.storage import open_store
    from services.monitor.app import create_app

    host, port = parse_address("--address", args.address)
    store = open_store(StorageSettings.from_env(os.environ))
    store.check()
    # No websockets: the page polls, and the websockets stack only adds deprecation noise.
    uvicorn.run(create_app(store), host=host.strip("[]"), port=port, log_level=args.log_level.lower(), ws="none")
    return 0


def _download_mnist(args: argparse.Namespace) -> int:
    from fedxai.data import ensure_downloaded
    from fedxai.mnist import available_splits

    directory = Path(args.directory)
    if available_splits(directory):  # a folder people filled themselves is used as it is
        sys.stdout.write(f"MNIST IDX files already in {directory}\n")
        return 0
    try:
        ensure_downloaded(directory)
    except FileNotFoundError as error:
        raise SettingsError(str(error)) from None
    sys.stdout.write(f"MNIST IDX files in {directory}\n")
    return 0


def _add_task_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, help="federated rounds (task setting num-server-rounds)")
    parser.add_argument("--data-dir", help="MNIST IDX files; default: download with torchvision")
    parser.add_argument("--explainer-address", help="HOST:PORT of the explainer (default 127.0.0.1:50051)")
    parser.add_argument("--no-xai", action="store_true", help="train without explanations")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any task setting, e.g. --set local-epochs=2"
    )
    parser.add_argument("--output-dir", help="folder for images and metrics when not using S3 (FEDXAI_OUTPUT_DIR)")
    parser.add_argument("--work-dir", default=".fedxai", help="logs, Flower state and trainer outboxes")
    parser.add_argument("--app-dir", help="the project source tree holding the Flower app")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedxai", description=__doc__)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    explainer = commands.add_parser(
        "explainer",
        help="serve the Explainer gRPC service",
        description="Serve the Explainer. Storage: S3/MinIO when FEDXAI_S3_ENDPOINT is set "
        "(with FEDXAI_S3_ACCESS_KEY, FEDXAI_S3_SECRET_KEY, FEDXAI_S3_BUCKET, FEDXAI_S3_SECURE), "
        "else the folder FEDXAI_OUTPUT_DIR (default: outputs).",
    )
    explainer.add_argument("--address", default=DEFAULT_EXPLAINER_ADDRESS, help="HOST:PORT to listen on")
    explainer.add_argument("--max-message-mib", type=int, default=64, help="largest request or response")
    explainer.add_argument("--max-batch-size", type=int, default=1024, help="most samples per Explain call")
    explainer.add_argument("--workers", type=int, default=4, help="requests served at once")
    explainer.add_argument(
        "--cached-models", type=int, default=4, help="decoded models kept for the next requests (0: none)"
    )
    explainer.add_argument("--tls-cert-file", default="", help="PEM certificate chain: serve TLS")
    explainer.add_argument("--tls-key-file", default="", help="PEM private key of the certificate")
    explainer.set_defaults(handler=_explainer)

    run = commands.add_parser(
        "run",
        help="run the federation with XAI on this machine",
        description="Start the explainer, a Flower SuperLink and one SuperNode per client, run the "
        "task and stop everything at the end. Storage as for `explainer`.",
    )
    run.add_argument("--clients", type=int, default=2, help="trainers (SuperNodes) to start")
    _add_task_arguments(run)
    run.add_argument(
        "--external-explainer", action="store_true", help="use an explainer already serving at the address"
    )
    run.set_defaults(handler=_run)

    aggregator = commands.add_parser(
        "aggregator",
        help="serve a SuperLink for trainers on other hosts and run the task on it",
        description="Start a Flower SuperLink on --address, submit the task, report each round, and "
        "exit when the run ends. Trainers join with `flower-supernode --superlink HOST:PORT`.",
    )
    aggregator.add_argument("--address", default="0.0.0.0:9092", help="HOST:PORT for the SuperLink")
    aggregator.add_argument("--tls-cert-file", default="", help="SuperLink TLS certificate (PEM)")
    aggregator.add_argument("--tls-key-file", default="", help="SuperLink TLS private key (PEM)")
    aggregator.add_argument("--tls-ca-file", default="", help="CA that signed the certificate (PEM)")
    _add_task_arguments(aggregator)
    aggregator.set_defaults(handler=_aggregator)

    health = commands.add_parser("health", help="check a gRPC service's health (exit 0 when SERVING)")
    health.add_argument("--address", default=DEFAULT_EXPLAINER_ADDRESS)
    health.add_argument("--service", default="", help="service name; empty: the whole server")
    health.add_argument("--timeout", type=float, default=3.0)
    health.add_argument("--tls-ca-file", default="", help="CA certificate: connect with TLS")
    health.set_defaults(handler=_health)

    monitor = commands.add_parser(
        "monitor",
        help="serve the monitoring page (read-only) over the store",
        description="Serve a web page with each task's metrics per round and its heatmaps. Storage as for `explainer`.",
    )
    monitor.add_argument("--address", default="127.0.0.1:8080", help="HOST:PORT to listen on")
    monitor.set_defaults(handler=_monitor)

    download = commands.add_parser("download-mnist", help="fetch MNIST's IDX files into a folder, once")
    download.add_argument("directory")
    download.set_defaults(handler=_download_mnist)
    return parser


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
