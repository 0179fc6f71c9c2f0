"""A task as the command line builds it: the defaults in the project's
``pyproject.toml`` (Flower's run config, the one place they are written), with
``--set`` pairs and shortcut flags on top, validated before anything starts."""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Any

from fedxai.settings import SettingsError
from fedxai.task import TaskConfig


def default_app_dir() -> Path:
    """The source tree holding the Flower app's pyproject.toml."""
    return Path(__file__).resolve().parents[2]


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
        close = difflib.get_close_matches(unknown[0], defaults, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(defaults))}"
        raise SettingsError(f"unknown task setting {unknown[0]!r} ({hint})")
    return TaskConfig.from_run_config({**defaults, **overrides})
