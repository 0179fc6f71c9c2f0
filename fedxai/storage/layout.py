"""The key layout every service agrees on.

Every run of a task keeps its own folder, named by its run id (UTC start time
and a random suffix, so that names sort by time and never collide):

<task>/runs/<run>/metrics.json                                        the run's record
<task>/runs/<run>/logs/<service>.log                                  each process's log, at the end
<task>/runs/<run>/round-<NNN>/global_model.safetensors
<task>/runs/<run>/round-<NNN>/<client>/gradcam_class_<label>.jpg      the global model on a trainer's samples
<task>/runs/<run>/round-<NNN>/<client>/explanations.json
<task>/runs/<run>/round-<NNN>/global/...                              the global model on the probe set
<task>/runs/<run>/round-<NNN>/updates/<client>/...                    a client's update on the probe set
<task>/adhoc/round-<NNN>/<client>/...                                 calls that name no run
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from fedxai.errors import InvalidArgument

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Path components: no empty parts, nothing starting with a dot (so no "..").
_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*")
_ROUND_DIR = re.compile(r"round-(\d{3,})")

MANIFEST_NAME = "explanations.json"
GLOBAL_MODEL_NAME = "global_model.safetensors"
UPDATE_MODEL_NAME = "model.safetensors"  # a client's trained model, until it is aggregated
METRICS_NAME = "metrics.json"
CLASS_IMAGE_PREFIX = "gradcam_class_"


GLOBAL_DIR = "global"
UPDATES_DIR = "updates"
# Folders of a round that are not a client's.
RESERVED_CLIENT_IDS = (GLOBAL_DIR, UPDATES_DIR)
RUNS_DIR = "runs"
ADHOC_DIR = "adhoc"
LOGS_DIR = "logs"


def validate_id(field: str, value: str) -> str:
    """Task, run and client ids become key components: letters, digits, '.', '_', '-'."""
    if not _ID.fullmatch(value):
        raise InvalidArgument(
            field,
            f"{value!r} is not a valid id (1-64 letters, digits, '.', '_' or '-', starting with a letter or digit)",
        )
    return value


def validate_client_id(field: str, value: str) -> str:
    validate_id(field, value)
    if value in RESERVED_CLIENT_IDS:
        raise InvalidArgument(field, f"{value!r} is reserved (a round's {value}/ folder is not a client's)")
    return value


def validate_key(field: str, key: str) -> str:
    if len(key) > 512 or not _KEY.fullmatch(key):
        raise InvalidArgument(field, f"{key!r} is not a valid object key")
    return key


def round_dir(round_number: int) -> str:
    return f"round-{round_number:03d}"


def parse_round_dir(name: str) -> int | None:
    match = _ROUND_DIR.fullmatch(name)
    return int(match.group(1)) if match else None


def new_run_id(now: datetime) -> str:
    """A run id that sorts by start time: ``20261130-084712-3fa2`` (``now`` in UTC)."""
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def run_prefix(task_id: str, run_id: str) -> str:
    """A run's folder; the empty run id is the ad-hoc calls' place."""
    return f"{task_id}/{RUNS_DIR}/{run_id}" if run_id else f"{task_id}/{ADHOC_DIR}"


def round_prefix(task_id: str, run_id: str, round_number: int) -> str:
    return f"{run_prefix(task_id, run_id)}/{round_dir(round_number)}"


@dataclass(frozen=True)
class Folder:
    """Where one call's explanations are kept: a trainer's evaluation (``subject``
    "client"), the global model ("global") or a client's update ("update")."""

    task_id: str
    run_id: str  # empty: an ad-hoc call's
    round: int
    subject: str
    client_id: str = ""

    @property
    def prefix(self) -> str:
        base = round_prefix(self.task_id, self.run_id, self.round)
        if self.subject == "global":
            return f"{base}/{GLOBAL_DIR}"
        if self.subject == "update":
            return f"{base}/{UPDATES_DIR}/{self.client_id}"
        return f"{base}/{self.client_id}"

    def class_image_key(self, label: int) -> str:
        return f"{self.prefix}/{CLASS_IMAGE_PREFIX}{label}.jpg"

    @property
    def manifest_key(self) -> str:
        return f"{self.prefix}/{MANIFEST_NAME}"

    @classmethod
    def of_manifest(cls, key: str) -> Folder | None:
        """The folder of a manifest key, or None when ``key`` is not one."""
        parts = key.split("/")
        if len(parts) < 2 or parts[-1] != MANIFEST_NAME:
            return None
        task_id, rest = parts[0], parts[1:-1]
        if rest[:1] == [RUNS_DIR] and len(rest) >= 2:
            run_id, rest = rest[1], rest[2:]
        elif rest[:1] == [ADHOC_DIR]:
            run_id, rest = "", rest[1:]
        else:
            return None
        round_number = parse_round_dir(rest[0]) if rest else None
        if round_number is None:
            return None
        tail = rest[1:]
        if tail == [GLOBAL_DIR]:
            return cls(task_id, run_id, round_number, "global")
        if len(tail) == 2 and tail[0] == UPDATES_DIR:
            return cls(task_id, run_id, round_number, "update", tail[1])
        if len(tail) == 1 and tail[0] not in RESERVED_CLIENT_IDS:
            return cls(task_id, run_id, round_number, "client", tail[0])
        return None


def global_model_key(task_id: str, run_id: str, round_number: int) -> str:
    return f"{round_prefix(task_id, run_id, round_number)}/{GLOBAL_MODEL_NAME}"


def update_model_key(task_id: str, run_id: str, round_number: int, client_id: str) -> str:
    """Where a trainer puts the model it trained in the round, with model-transfer=store."""
    validate_client_id("client-id", client_id)
    return f"{Folder(task_id, run_id, round_number, 'update', client_id).prefix}/{UPDATE_MODEL_NAME}"


def metrics_key(task_id: str, run_id: str) -> str:
    return f"{run_prefix(task_id, run_id)}/{METRICS_NAME}"


def log_key(task_id: str, run_id: str, service: str) -> str:
    return f"{run_prefix(task_id, run_id)}/{LOGS_DIR}/{service}.log"


def parse_metrics_key(key: str) -> tuple[str, str] | None:
    """(task, run) of a run's metrics key, or None when ``key`` is not one."""
    parts = key.split("/")
    if len(parts) == 4 and parts[1] == RUNS_DIR and parts[3] == METRICS_NAME:
        return parts[0], parts[2]
    return None
