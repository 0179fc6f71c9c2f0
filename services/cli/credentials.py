"""`fedxai credentials`: the tokens of the explainer's callers and the monitor's password.

Writes into one folder, each secret readable by its owner only:

- ``callers.toml``: what the explainer checks (``--callers-file``); digests, no secret;
- ``aggregator.token``: a writer for every subject and client;
- ``<client>.token`` for each trainer: a writer bound to that client id;
- ``reader.token``: lists and explains without storing (people, dashboards);
- ``operator.token``: reads and stores anything (a person's ad-hoc calls);
- ``monitor.password``: the monitoring page's password (user ``fedxai``).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from fedxai.settings import SettingsError
from fedxai.storage.layout import validate_id
from services.explainer.auth import READER, WRITER, token_digest

CALLERS_FILE = "callers.toml"
MONITOR_PASSWORD_FILE = "monitor.password"
MONITOR_USER = "fedxai"


def _write_secret(path: Path, secret: str) -> None:
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        handle.write(secret + "\n")


def make_credentials(directory: Path, trainers: list[str]) -> list[str]:
    """Writes a new set of credentials into ``directory``; returns the files' names.
    Refuses to touch a folder that has a callers file already."""
    for client_id in trainers:
        validate_id("--trainer", client_id)
    reserved = {"aggregator", "reader", "operator"} & set(trainers)
    if reserved:
        raise SettingsError(f"--trainer {sorted(reserved)[0]!r} is the name of another caller")
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / CALLERS_FILE).exists():
        raise SettingsError(f"{directory / CALLERS_FILE} exists: the callers have their tokens already")
    callers: list[tuple[str, list[str], str]] = [("aggregator", [WRITER], "")]
    callers += [(client_id, [WRITER], client_id) for client_id in trainers]
    callers += [("reader", [READER], ""), ("operator", [READER, WRITER], "")]
    # Without a callers file, anything here is a set left half-made: made anew.
    for name in [*(f"{name}.token" for name, _, _ in callers), MONITOR_PASSWORD_FILE]:
        (directory / name).unlink(missing_ok=True)
    tables = []
    for name, roles, client_id in callers:
        token = secrets.token_urlsafe(32)
        _write_secret(directory / f"{name}.token", token)
        bound = f'client_id = "{client_id}"\n' if client_id else ""
        quoted = ", ".join(f'"{role}"' for role in roles)
        tables.append(f'[callers."{name}"]\nroles = [{quoted}]\n{bound}token_sha256 = "{token_digest(token)}"\n')
    _write_secret(directory / MONITOR_PASSWORD_FILE, secrets.token_urlsafe(18))
    # Written last: its presence says the set is complete.
    header = "# The explainer's callers (fedxai explainer --callers-file); tokens are in the *.token files.\n\n"
    (directory / CALLERS_FILE).write_text(header + "\n".join(tables))
    return [CALLERS_FILE, *(f"{name}.token" for name, _, _ in callers), MONITOR_PASSWORD_FILE]
