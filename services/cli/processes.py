"""The processes a command starts: described first (so that ``--dry-run`` can show
them), then started each in its own session, and stopped together."""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

STOP_GRACE = 10.0
# Set in every started process, and so inherited by whatever it starts: the processes a
# parent left behind when it died (re-parented, in sessions of their own) still carry it.
STARTED_BY_VARIABLE = "FEDXAI_STARTED_BY"
# Variables whose values a printed command line must not show.
_SECRET_MARKERS = ("SECRET", "PASSWORD", "TOKEN", "ACCESS_KEY", "PRIVATE")


@dataclass(frozen=True)
class Process:
    """One process to start: ``env`` is what it gets on top of the caller's environment."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path | None = None

    def describe(self) -> str:
        """The command line and environment, as ``fedxai run --dry-run`` prints them."""
        lines = [f"{self.name}:", f"  command: {shlex.join(self.argv)}"]
        if self.cwd is not None:
            lines.append(f"  directory: {self.cwd}")
        lines.extend(f"  env {key}={masked(key, self.env[key])}" for key in sorted(self.env))
        return "\n".join(lines)


def masked(key: str, value: str) -> str:
    return "****" if value and any(marker in key.upper() for marker in _SECRET_MARKERS) else value


@dataclass
class Children:
    """The processes a run started, each in its own session so that its own
    children (Flower's superexec and app processes) stop with it."""

    log_dir: Path
    base_env: Mapping[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    mark: str = field(default_factory=lambda: f"{os.getpid()}-{secrets.token_hex(6)}")

    def start(self, process: Process) -> None:
        with self.log_path(process.name).open("wb") as log:
            self.processes[process.name] = subprocess.Popen(
                process.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**self.base_env, **process.env, STARTED_BY_VARIABLE: self.mark},
                cwd=process.cwd,
                start_new_session=True,
            )

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def dead(self) -> list[str]:
        return [name for name, process in self.processes.items() if process.poll() is not None]

    def stop_all(self) -> None:
        # A second Ctrl-C must not cut the clean-up short.
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop_all(self) -> None:
        # Flower starts its app processes in sessions of their own: find them first.
        started_by_flower = descendants({process.pid for process in self.processes.values()})
        for process in self.processes.values():
            _signal_group(process, signal.SIGTERM)
        for pid in started_by_flower:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        for process in self.processes.values():  # grandchildren left behind by a parent that exited
            _signal_group(process, signal.SIGKILL)
        for pid in descendants(started_by_flower) | started_by_flower:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # A process started meanwhile by one that was stopping, or left by one that died
        # before (a SuperLink killed mid-run leaves its app processes to init), is found by
        # its mark: sweep until none is left in two sweeps running (a process caught in the
        # middle of exec shows /proc an empty environment, so one sweep can miss it).
        deadline = time.monotonic() + STOP_GRACE
        clean_sweeps = 0
        while clean_sweeps < 2 and time.monotonic() < deadline:
            left = marked_processes(self.mark)
            clean_sweeps = 0 if left else clean_sweeps + 1
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def tail(self, name: str, lines: int = 15) -> str:
        path = self.log_path(name)
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def processes_with(variable: str, value: str) -> set[int]:
    """The live processes but this one whose environment sets ``variable=value``."""
    wanted = f"{variable}={value}".encode()
    found = set()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                found.add(int(entry.name))
        except (OSError, ValueError):  # exited while we looked, or not ours to read
            continue
    return found - {os.getpid()}


def marked_processes(mark: str) -> set[int]:
    """The live processes started, directly or not, by the ``Children`` with this mark."""
    return processes_with(STARTED_BY_VARIABLE, mark)


def descendants(roots: set[int]) -> set[int]:
    """Every live descendant of ``roots``, read from /proc (empty where there is none)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return set()
    parent_of = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # exited while we looked
                continue
            # "pid (comm) state ppid ...": comm may hold spaces, so split after its ')'.
            parent_of[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = set(roots)
    while frontier:
        frontier = {pid for pid, parent in parent_of.items() if parent in frontier} - found
        found |= frontier
    return found


def _signal_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
