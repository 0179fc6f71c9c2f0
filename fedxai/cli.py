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

from fedxai.errors import StoreError
from fedxai.settings import (
    DEFAULT_EXPLAINER_ADDRESS,
    MIB,
    ExplainerSettings,
    SettingsError,
    StorageSettings,
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
    )
    store = open_store(StorageSettings.from_env(os.environ))
    store.check()
    serve(settings, store)
    return 0


def _run(args: argparse.Namespace) -> int:
    from fedxai.launcher import (
        RunFailed,
        RunOptions,
        build_task,
        default_app_dir,
        parse_overrides,
        run_federation,
        summary,
    )

    if args.clients < 1:
        raise SettingsError("--clients must be at least 1")
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
    app_dir = Path(args.app_dir) if args.app_dir else default_app_dir()
    storage = StorageSettings.from_env(os.environ)
    if args.output_dir:
        storage = StorageSettings(s3=storage.s3, output_dir=Path(args.output_dir))
    options = RunOptions(
        task=build_task(app_dir, overrides, args.clients),
        clients=args.clients,
        storage=storage,
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
    explainer.set_defaults(handler=_explainer)

    run = commands.add_parser(
        "run",
        help="run the federation with XAI on this machine",
        description="Start the explainer, a Flower SuperLink and one SuperNode per client, run the "
        "task and stop everything at the end. Storage as for `explainer`.",
    )
    run.add_argument("--clients", type=int, default=2, help="trainers (SuperNodes) to start")
    run.add_argument("--rounds", type=int, help="federated rounds (task setting num-server-rounds)")
    run.add_argument("--data-dir", help="MNIST IDX files; default: download with torchvision")
    run.add_argument("--explainer-address", help="HOST:PORT for the explainer (default 127.0.0.1:50051)")
    run.add_argument("--no-xai", action="store_true", help="train without explanations")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any task setting, e.g. --set local-epochs=2",
    )
    run.add_argument("--output-dir", help="folder for images and metrics when not using S3 (FEDXAI_OUTPUT_DIR)")
    run.add_argument("--work-dir", default=".fedxai", help="logs, Flower state and trainer outboxes")
    run.add_argument("--app-dir", help="the project source tree holding the Flower app")
    run.add_argument(
        "--external-explainer", action="store_true", help="use an explainer already serving at the address"
    )
    run.set_defaults(handler=_run)
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
