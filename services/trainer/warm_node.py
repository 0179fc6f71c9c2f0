"""``fedxai trainer``: a Flower SuperNode whose ClientApps start with their libraries loaded.

A SuperNode's default isolation runs every message's ClientApp in a new ``flwr-clientapp``
process, which spends about 3 s importing torch before it does any work: twice a round,
on every trainer. Started with ``--isolation process``, the SuperNode leaves that launch to
a separate executor, which takes each task from the SuperNode's Runtime API
(``AcquireTask``, as ``flower-superexec`` does) and runs the ClientApp with the task's token.

``WarmNode`` is that executor. It imports the heavy libraries once, then forks a child per
task that runs Flower's own ``run_clientapp`` with the token: still a new process per
message, which installs and loads the FAB as before, with its imports already done. The
child first forgets this project's own modules (this command imported some), so that the
code that runs is the FAB's, as with Flower's launcher. It launches a task only once the
SuperNode holds the task's message in full (see ``MESSAGE_IN``).

The SuperNode reaches the SuperLink through a relay on loopback (``services.relay``), which
spares it Flower's 3 s pause after a pull that found no message.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import httpx
from flwr.proto.runtime_pb2 import AcquireTaskRequest
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import run_clientapp

from fedxai.settings import SettingsError, is_loopback
from services.relay import FLEET_HELD, Relay, SuperLinkFlags

log = logging.getLogger("fedxai.trainer")

# Imported before the first fork; a ClientApp then imports only the FAB's own modules.
PRELOADED = (
    "torch",
    "numpy",
    "grpc",
    "safetensors.torch",
    "flwr.app",
    "flwr.clientapp",
)
# Top-level packages of the FAB's code, which a ClientApp must import from the FAB.
PROJECT_PACKAGES = ("fedxai", "services")
# SuperNode flags this executor sets or cannot follow: it launches the ClientApps itself, and
# reaches the Runtime API without TLS or a shared secret, so that API stays on loopback.
REFUSED_FLAGS = ("--isolation", "--ssl-certfile", "--ssl-keyfile", "--ssl-ca-certfile", "--superexec-auth-secret-file")
DEFAULT_RUNTIME_HOST = "127.0.0.1"
DEFAULT_RUNTIME_PORT = 9094
# Pauses between asks for a task: short right after a task, longer while the node is idle.
FIRST_PAUSE = 0.02
LONGEST_PAUSE = 0.25
BACKOFF = 1.5
STOP_GRACE = 10.0
# What the SuperNode logs once it holds all of a message's objects, or gave up on them. It
# hands the task out before: a ClientApp started then finds the objects missing, and Flower's
# pull waits a second, then two, before it asks again. (Flower is pinned: the tests see these.)
MESSAGE_IN = ("Received successfully", "Failed to receive message")
LONGEST_WAIT_FOR_MESSAGE = 10.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _flag_value(args: Sequence[str], flag: str) -> str | None:
    value = None
    for index, arg in enumerate(args):
        if arg == flag and index + 1 < len(args):
            value = args[index + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def runtime_address(supernode_args: Sequence[str]) -> str:
    """Where the SuperNode started with ``supernode_args`` serves its Runtime API."""
    for arg in supernode_args:
        if arg.split("=", 1)[0] in REFUSED_FLAGS:
            raise SettingsError(f"fedxai trainer sets up the ClientApps' runtime itself; leave out {arg}")
    host = _flag_value(supernode_args, "--host") or DEFAULT_RUNTIME_HOST
    if not is_loopback(host):
        raise SettingsError(
            f"--host {host}: the Runtime API hands out tasks and their tokens without TLS; keep it on loopback"
        )
    port = _flag_value(supernode_args, "--port") or str(DEFAULT_RUNTIME_PORT)
    if not port.isdigit():
        raise SettingsError(f"--port {port!r} is not a port number")
    return f"{host}:{port}"


def preload() -> None:
    for name in PRELOADED:
        importlib.import_module(name)


def forget_project_modules() -> None:
    """Drops this project's modules from the import cache, so that the next import of them
    reads the FAB's copy (which Flower puts first on sys.path) rather than the installed one.
    The command never imports the generated protobuf modules, whose descriptors a process
    cannot register twice with other contents."""
    for name in [name for name in sys.modules if name.split(".")[0] in PROJECT_PACKAGES]:
        del sys.modules[name]


def check_plugins() -> None:
    """Refuses an architecture or dataset plugin that cannot be used, at the start rather
    than at the first message. In a forked child: this process must not keep the project's models (nor
    the plugins, which would refer to them) for the ClientApps, which load the FAB's."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            from fedxai.datasets import data_sources
            from fedxai.models import architectures

            architectures()
            data_sources()
            code = 0
        except SettingsError as error:
            sys.stderr.write(f"fedxai: error: {error}\n")
            code = 2
        except BaseException:  # printed, not hidden: a forked child must never return
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(os.waitstatus_to_exitcode(status))


def _run_task(address: str, token: str, parent_pid: int) -> int:
    """In a forked child: Flower's ClientApp runtime for one task; the exit status."""
    forget_project_modules()
    # The parent's handlers (Ctrl-C unwinding its loop) must not run here.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        run_clientapp(runtime_api_address=address, token=token, insecure=True, parent_pid=parent_pid)
    except SystemExit as done:  # run_clientapp ends with flwr_exit
        return done.code if isinstance(done.code, int) else 1
    return 0


@dataclass
class WarmNode:
    """Runs ``flower-supernode`` with ``--isolation process`` and launches its ClientApps."""

    supernode_args: list[str]
    address: str = field(init=False)  # the SuperNode's Runtime API, from its flags
    supernode: subprocess.Popen | None = field(default=None, init=False)
    relay: Relay | None = field(default=None, init=False)  # between the SuperNode and the SuperLink
    tasks: set[int] = field(default_factory=set, init=False)  # running ClientApps' pids
    # Messages the SuperNode holds in full, and tasks launched: one message each.
    messages_in: int = field(default=0, init=False)
    launched: int = field(default=0, init=False)
    _message_in: threading.Condition = field(default_factory=threading.Condition, init=False)
    _message_logged: threading.Event = field(default_factory=threading.Event, init=False)  # wakes the task loop
    # Held while the log is written and while forking: a child must not inherit stderr's buffer locked.
    _writing: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self.address = runtime_address(self.supernode_args)

    def serve(self) -> int:
        """Until the SuperNode exits: its exit status."""
        preload()
        check_plugins()
        # The one installed beside this Python, as `flwr` installs it; else the one on PATH.
        beside = Path(sys.executable).with_name("flower-supernode")
        program = str(beside) if beside.is_file() else "flower-supernode"
        flags = SuperLinkFlags.parse(self.supernode_args)
        self.relay = Relay(flags, FLEET_HELD)
        self.relay.start()
        reach_relay = ["--insecure", "--superlink", f"127.0.0.1:{self.relay.port}"]
        self.supernode = subprocess.Popen(
            [program, *flags.others, *reach_relay, "--isolation", "process"],
            preexec_fn=_stop_with_parent,
            stderr=subprocess.PIPE,  # its log, passed on as it comes; see MESSAGE_IN
        )
        threading.Thread(target=self._pass_on_log, args=(self.supernode.stderr,), daemon=True).start()
        try:
            self._wait_for_runtime_api()
            with contextlib.closing(_runtime_client(self.address)) as client:
                self._launch_tasks(client)
            code = self.supernode.wait()
            return code if code >= 0 else 128 - code  # killed by a signal: as a shell reports it
        finally:
            self._stop()

    def _launch_tasks(self, client: RuntimeHttpClient) -> None:
        """Launches each task the SuperNode hands out, until it exits."""
        assert self.supernode is not None
        request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
        pause = FIRST_PAUSE
        while self.supernode.poll() is None:
            self._reap()
            try:
                response = client.AcquireTask(request)
            except (httpx.TransportError, httpx.HTTPStatusError) as error:
                # The SuperNode stopping (the loop ends) or failing for a moment: ask again.
                if isinstance(error, httpx.HTTPStatusError) and error.response.status_code < 500:
                    raise
                log.warning("asking the SuperNode for a task failed: %s", error)
                time.sleep(LONGEST_PAUSE)
                continue
            if response.HasField("task") and response.token:
                self._wait_for_message(response.task.task_id)
                self._launch(response.task.task_id, response.token)
                pause = FIRST_PAUSE
                continue
            # The SuperNode logs when it holds a message, whose task it hands out already:
            # that line, rather than the pause's end, says when to ask again.
            if self._message_logged.wait(pause):
                self._message_logged.clear()
            pause = min(pause * BACKOFF, LONGEST_PAUSE)

    def _pass_on_log(self, stream: BinaryIO) -> None:
        """Copies the SuperNode's log to this process's, counting the messages it holds in full."""
        for line in stream:
            with self._writing:
                sys.stderr.buffer.write(line)
                sys.stderr.flush()
            if any(marker.encode() in line for marker in MESSAGE_IN):
                with self._message_in:
                    self.messages_in += 1
                    self._message_in.notify_all()
                self._message_logged.set()

    def _wait_for_message(self, task_id: int) -> None:
        """Until the SuperNode holds the task's message in full (it handles one at a time)."""
        self.launched += 1
        with self._message_in:
            if not self._message_in.wait_for(lambda: self.messages_in >= self.launched, LONGEST_WAIT_FOR_MESSAGE):
                log.warning("task %d: the SuperNode did not say it holds the message; launching anyway", task_id)
                self.messages_in = self.launched

    def _wait_for_runtime_api(self) -> None:
        """Until the SuperNode listens (Flower's client would log each refused attempt)."""
        assert self.supernode is not None
        host, port = self.address.rsplit(":", 1)
        while self.supernode.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection((host.strip("[]"), int(port)), timeout=1):
                return
            time.sleep(FIRST_PAUSE)

    def _launch(self, task_id: int, token: str) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        with self._writing:
            pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _run_task(self.address, token, parent)
            except BaseException:  # printed, not hidden: a forked child must never return into the loop
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.tasks.add(pid)
        log.info("task %d: ClientApp in process %d", task_id, pid)

    def _reap(self) -> None:
        for pid in list(self.tasks):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                self.tasks.discard(pid)
                code = os.waitstatus_to_exitcode(status)
                if code != 0:
                    log.warning("ClientApp process %d exited with status %d", pid, code)

    def _stop(self) -> None:
        """Stops the SuperNode and any ClientApp still running, gracefully first."""
        running = [pid for pid in self.tasks if _signal(pid, signal.SIGTERM)]
        if self.supernode is not None and self.supernode.poll() is None:
            self.supernode.terminate()
            try:
                self.supernode.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.supernode.kill()
                self.supernode.wait()
        deadline = time.monotonic() + STOP_GRACE
        while running and time.monotonic() < deadline:
            running = [pid for pid in running if os.waitpid(pid, os.WNOHANG)[0] == 0]
            time.sleep(0.1)
        for pid in running:
            _signal(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        if self.relay is not None:
            self.relay.close()


def _stop_with_parent() -> None:
    """In the SuperNode's process, before it runs: SIGTERM once this trainer is gone, so
    that a killed trainer leaves no SuperNode behind that nothing launches ClientApps for."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")


def _signal(pid: int, signum: int) -> bool:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def _runtime_client(address: str) -> RuntimeHttpClient:
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,
        root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        # No retry invoker: Flower's retries forever, and a SuperNode that exited must end the loop.
    )
