"""The key layout every service agrees on.

<task>/metrics.json
<task>/round-<NNN>/global_model.safetensors
<task>/round-<NNN>/<client>/gradcam_class_<label>.jpg
<task>/round-<NNN>/<client>/explanations.json
"""

from __future__ import annotations

import re

from fedxai.errors import InvalidArgument

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Path components: no empty parts, nothing starting with a dot (so no "..").
_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*")
_ROUND_DIR = re.compile(r"round-(\d{3,})")

MANIFEST_NAME = "explanations.json"
GLOBAL_MODEL_NAME = "global_model.safetensors"
METRICS_NAME = "metrics.json"
CLASS_IMAGE_PREFIX = "gradcam_class_"


def validate_id(field: str, value: str) -> str:
    """Task and client ids become key components: letters, digits, '.', '_', '-'."""
    if not _ID.fullmatch(value):
        raise InvalidArgument(
            field,
            f"{value!r} is not a valid id (1-64 letters, digits, '.', '_' or '-', starting with a letter or digit)",
        )
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


def client_prefix(task_id: str, round_number: int, client_id: str) -> str:
    return f"{round_prefix(task_id, round_number)}/{client_id}"


def class_image_key(task_id: str, round_number: int, client_id: str, label: int) -> str:
    return f"{client_prefix(task_id, round_number, client_id)}/{CLASS_IMAGE_PREFIX}{label}.jpg"


def manifest_key(task_id: str, round_number: int, client_id: str) -> str:
    return f"{client_prefix(task_id, round_number, client_id)}/{MANIFEST_NAME}"


def global_model_key(task_id: str, round_number: int) -> str:
    return f"{round_prefix(task_id, round_number)}/{GLOBAL_MODEL_NAME}"


def metrics_key(task_id: str) -> str:
    return f"{task_id}/{METRICS_NAME}"
