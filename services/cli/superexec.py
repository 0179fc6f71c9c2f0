"""``fedxai superexec``: Flower's SuperExec for a SuperLink's ServerApps, through a relay.

A SuperLink started with ``--isolation process`` leaves the launch of its ServerApps to a
``flower-superexec`` that reaches its Runtime API. This command starts one whose Runtime
API is a relay on loopback (``services.relay``, ``RUNTIME_HELD``), which the ServerApps it
launches reach the SuperLink through. A trainer's SuperNode registers its reply before it
uploads the reply's parts; a ServerApp that pulls the reply in between is told a part is not
available yet, and Flower's pull then waits 1 s. Through the relay, that pull is answered as
soon as the part is in. ``fedxai run`` and ``fedxai aggregator`` start their SuperLink so,
with this command beside it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from fedxai.settings import RUNTIME_RELAY_VARIABLE, SettingsError
from services.relay import RUNTIME_HELD, Relay, SuperLinkFlags

ADDRESS_FLAG = "--runtime-api-address"
STOP_GRACE = 10.0


def serve(superexec_args: Sequence[str]) -> int:
    """Runs ``flower-superexec`` with ``superexec_args`` through a relay, until it exits:
    its exit status."""
    flags = SuperLinkFlags.parse(superexec_args, ADDRESS_FLAG, default="")
    if not flags.address:
        raise SettingsError(f"{ADDRESS_FLAG} HOST:PORT, the SuperLink's Runtime API, is required")
    # The one installed beside this Python, as `flwr` installs it; else the one on PATH.
    beside = Path(sys.executable).with_name("flower-superexec")
    program = str(beside) if beside.is_file() else "flower-superexec"
    relay = Relay(flags, RUNTIME_HELD)
    relay.start()
    try:
        reach_relay = ["--insecure", ADDRESS_FLAG, f"127.0.0.1:{relay.port}"]
        # --parent-pid: Flower's SuperExec exits when this process is gone, killed or not.
        superexec = subprocess.Popen(
            [program, *flags.others, *reach_relay, "--parent-pid", str(os.getpid())],
            env={**os.environ, RUNTIME_RELAY_VARIABLE: "1"},  # its ServerApps inherit it
        )
        try:
            code = superexec.wait()
            return code if code >= 0 else 128 - code  # killed by a signal: as a shell reports it
        finally:
            if superexec.poll() is None:
                superexec.terminate()
                try:
                    superexec.wait(STOP_GRACE)
                except subprocess.TimeoutExpired:
                    superexec.kill()
                    superexec.wait()
    finally:
        relay.close()
