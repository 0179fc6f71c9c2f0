"""The ``fedxai`` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args))
    except SettingsError as error:
        parser.exit(2, f"fedxai: error: {error}\n")
    except StoreError as error:
        parser.exit(1, f"fedxai: storage error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
