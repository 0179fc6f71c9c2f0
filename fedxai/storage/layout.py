"""The key layout every service agrees on.

<task>/metrics.json
<task>/round-<NNN>/global_model.safetensors
<task>/round-<NNN>/<client>/gradcam_class_<label>.jpg           the global model on a trainer's samples
<task>/round-<NNN>/<client>/explanations.json
<task>/round-<NNN>/global/...                                   the global model on the probe set
<task>/round-<NNN>/updates/<client>/...                         a client's update on the probe set
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fedxai.errors import InvalidArgument

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Path components: no empty parts, nothing starting with a dot (so no "..").
_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*")
_ROUND_DIR = re.compile(r"round-(\d{3,})")

MANIFEST_NAME = "explanations.json"
GLOBAL_MODEL_NAME = "global_model.safetensors"
METRICS_NAME = "metrics.json"
CLASS_IMAGE_PREFIX = "gradcam_class_"


GLOBAL_DIR = "global"
UPDATES_DIR = "updates"
# Folders of a round that are not a client's.
RESERVED_CLIENT_IDS = (GLOBAL_DIR, UPDATES_DIR)


def validate_id(field: str, value: str) -> str:
    """Task and client ids become key components: letters, digits, '.', '_', '-'."""
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


def round_prefix(task_id: str, round_number: int) -> str:
    return f"{task_id}/{round_dir(round_number)}"


@dataclass(frozen=True)
class Folder:
    """Where one call's explanations are kept: a trainer's evaluation (``subject``
    "client"), the global model ("global") or a client's update ("update")."""

    task_id: str
    round: int
    subject: str
    client_id: str = ""

    @property
    def prefix(self) -> str:
        base = round_prefix(self.task_id, self.round)
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
        if parts[-1] != MANIFEST_NAME or len(parts) not in (4, 5):
            return None
        round_number = parse_round_dir(parts[1])
        if round_number is None:
            return None
        if len(parts) == 5:
            return cls(parts[0], round_number, "update", parts[3]) if parts[2] == UPDATES_DIR else None
        if parts[2] == GLOBAL_DIR:
            return cls(parts[0], round_number, "global")
        return None if parts[2] == UPDATES_DIR else cls(parts[0], round_number, "client", parts[2])


def global_model_key(task_id: str, round_number: int) -> str:
    return f"{round_prefix(task_id, round_number)}/{GLOBAL_MODEL_NAME}"


def metrics_key(task_id: str) -> str:
    return f"{task_id}/{METRICS_NAME}"
