"""Relays on loopback between a Flower process and the SuperLink, which hold back an
answer that says "not yet" until the SuperLink has what was asked for.

A relay speaks Flower's HTTP APIs (protobuf over HTTP) and passes every request on as it
came, with its headers and signature. Only the answers its ``held`` table names, it does
not pass back at once: it asks the SuperLink again, every 50 ms for the first 2 s, then at
pauses that grow to 0.25 s, for up to ``HOLD`` seconds, and answers with the first answer
that has what was asked for (or the last one). The caller sees a slow request, not a
"not yet". It connects to the relay on loopback without TLS; the relay reaches the
SuperLink as the caller's own flags say (TLS with their root certificates, or
``--insecure``). Two of Flower 1.42's waits are why (fixed pauses, with no setting):

- Fleet API, between a trainer's SuperNode and the SuperLink (``fedxai trainer``,
  ``FLEET_HELD``). A SuperNode asks for its next message as soon as it has sent a reply.
  The last trainer to reply in a round always finds nothing yet: the aggregator still has
  to pull the reply, average and push the next round. The SuperNode then sleeps 3 s before
  it asks again, and the whole federation waits: it was about 2.4 s of every round in which
  the aggregator was ready again after 0.6 s. The next round's message comes a few hundred
  milliseconds after the round's last reply, hence the quick asks at first.
- Any message comes before its objects: the sender registers it, then uploads what it
  carries. A pull of an object in between is told that it is not available yet, and
  Flower's ``pull_objects`` waits 1 s (``PULL_INITIAL_BACKOFF``) before it asks again, while
  the upload takes milliseconds (a reply) to a few hundred (the model). A SuperNode pulls the
  aggregator's messages so (``FLEET_HELD``); the ServerApp pulls the trainers' replies so,
  through the Runtime API (``fedxai superexec``, ``RUNTIME_HELD``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar

import httpx
from flwr.proto.fleet_pb2 import PullMessagesResponse
from flwr.proto.message_pb2 import PullObjectResponse
from flwr.supercore.constant import SUPERLINK_DEFAULT_CLIENT_ADDRESS
from google.protobuf.message import DecodeError, Message

log = logging.getLogger("fedxai.relay")

PULL_PATH = "/v1/fleet/pull-messages"
OBJECT_PATH = "/v1/fleet/pull-object"
RUNTIME_OBJECT_PATH = "/v1/runtime/pull-object"
# Below the 30 s read timeout of Flower's HTTP clients, which a held request must not reach.
HOLD = 20.0
FIRST_PAUSE = 0.05
EAGER = 2.0  # seconds of a hold during which the relay asks every FIRST_PAUSE
LONGEST_PAUSE = 0.25  # after them, an answer waits this long at most; 4 asks a second
BACKOFF = 1.5
UPSTREAM_TIMEOUT = 30.0
# Headers of one connection, not of the request: each side of the relay sets its own. The
# relay asks for answers unencoded and passes on their bytes as they are.
HOP_BY_HOP = frozenset(
    ("connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "host",
     "content-length", "accept-encoding", "content-encoding")
)  # fmt: skip


@dataclass(frozen=True)
class SuperLinkFlags:
    """How a Flower process's own flags say to reach the SuperLink."""

    address: str
    insecure: bool
    root_certificates: str | None
    others: list[str]  # the rest of the process's flags, passed on unchanged

    @classmethod
    def parse(
        cls, args: Sequence[str], address_flag: str = "--superlink", default: str = SUPERLINK_DEFAULT_CLIENT_ADDRESS
    ) -> SuperLinkFlags:
        """From a SuperNode's flags; with ``address_flag="--runtime-api-address"``, a SuperExec's."""
        address, insecure, root_certificates = default, False, None
        others: list[str] = []
        remaining = iter(args)
        for arg in remaining:
            flag, has_value, value = arg.partition("=")
            if flag in (address_flag, "--root-certificates"):
                given = value if has_value else next(remaining, None)
                if given is None:
                    others.append(arg)  # left for the process to refuse
                elif flag == address_flag:
                    address = given
                else:
                    root_certificates = given
            elif arg == "--insecure":
                insecure = True
            else:
                others.append(arg)
        return cls(address, insecure, root_certificates, others)


class Relay:
    """Serves on ``host`` (port ``port``) from ``start`` until ``close``, relaying to the
    SuperLink; holds an answer that ``held`` says is a "not yet" for its path for up to
    ``hold`` seconds."""

    def __init__(
        self,
        flags: SuperLinkFlags,
        held: Mapping[str, Callable[[httpx.Response], bool]],
        host: str = "127.0.0.1",
        hold: float = HOLD,
    ) -> None:
        self.held = held
        self.hold = hold
        scheme = "http" if flags.insecure else "https"
        verify: str | bool = flags.root_certificates or not flags.insecure
        self._upstream = httpx.Client(base_url=f"{scheme}://{flags.address}", verify=verify, timeout=UPSTREAM_TIMEOUT)
        self._closing = threading.Event()
        self._unreachable = False  # said once per outage, not at every retry of the caller
        self._server = _RelayServer((host, 0), _RelayHandler, self)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="relay", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stops serving; a request it holds is answered with what it has."""
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._upstream.close()

    def relay(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> httpx.Response:
        """The SuperLink's answer to the request; for a "not yet", a later one (see above)."""
        answer = self._ask(method, path, headers, body)
        not_yet = self.held.get(path)
        if not_yet is None:
            return answer
        started = time.monotonic()
        deadline = started + self.hold
        pause = FIRST_PAUSE
        while not_yet(answer) and time.monotonic() + pause < deadline:
            if self._closing.wait(pause):
                break
            answer = self._ask(method, path, headers, body)
            if time.monotonic() - started >= EAGER:
                pause = min(pause * BACKOFF, LONGEST_PAUSE)
        return answer

    def _ask(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> httpx.Response:
        try:
            answer = self._upstream.request(
                method, path, headers=[*headers, ("Accept-Encoding", "identity")], content=body
            )
        except httpx.TransportError as error:
            if not self._unreachable:
                log.warning("the SuperLink at %s cannot be reached: %s", self._upstream.base_url, error)
            self._unreachable = True
            raise
        if self._unreachable:
            log.info("the SuperLink at %s answers again", self._upstream.base_url)
        self._unreachable = False
        return answer


MessageT = TypeVar("MessageT", bound=Message)


def _decoded(answer: httpx.Response, kind: type[MessageT]) -> MessageT | None:
    """An OK answer's body as ``kind``, or None for an error or a body that is not one."""
    if answer.status_code != httpx.codes.OK:
        return None
    try:
        return kind.FromString(answer.content)
    except DecodeError:
        return None


def _found_nothing(answer: httpx.Response) -> bool:
    """Whether a pull's answer is a plain "no message yet" (not an error, nor a reconnect)."""
    pulled = _decoded(answer, PullMessagesResponse)
    return pulled is not None and not pulled.messages_list and not pulled.HasField("reconnect")


def _uploading(answer: httpx.Response) -> bool:
    """Whether an object's answer says it is expected but not uploaded in full yet (an object
    the SuperLink does not know at all is an error for the caller, passed on at once)."""
    pulled = _decoded(answer, PullObjectResponse)
    return pulled is not None and pulled.object_found and not pulled.object_available


# The answers held back, by path: what a "not yet" looks like. The ServerApp's own pulls of
# messages are not held: it asks again after a short pause itself (services/aggregator/prompt_grid.py).
FLEET_HELD: Mapping[str, Callable[[httpx.Response], bool]] = {PULL_PATH: _found_nothing, OBJECT_PATH: _uploading}
RUNTIME_HELD: Mapping[str, Callable[[httpx.Response], bool]] = {RUNTIME_OBJECT_PATH: _uploading}


class _RelayServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], relay: Relay) -> None:
        self.relay = relay
        super().__init__(address, handler)


class _RelayHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keeps the caller's connection open between requests
    # An answer goes out in two writes (head, then body). With Nagle's algorithm the body
    # waits for the caller to acknowledge the head, which it delays by 40 ms: 40 ms on
    # every one of the ~20 objects a message is pulled or pushed in.
    disable_nagle_algorithm = True
    server: _RelayServer

    def do_POST(self) -> None:
        self._relay()

    def do_GET(self) -> None:
        self._relay()

    def _relay(self) -> None:
        length = self.headers.get("Content-Length", "0" if self.command == "GET" else "")
        if not length.isdigit():
            # Flower's client always sends one; a body of unknown length cannot be relayed, and
            # what is left of it on the connection cannot be told from the next request.
            self.close_connection = True
            self._answer(
                httpx.codes.LENGTH_REQUIRED, [], b"a Content-Length header with the body's length is required\n"
            )
            return
        body = self.rfile.read(int(length))
        headers = [(name, value) for name, value in self.headers.items() if name.lower() not in HOP_BY_HOP]
        try:
            answer = self.server.relay.relay(self.command, self.path, headers, body)
        except httpx.TransportError as error:
            # Flower's client tries a 502 again, as it would a SuperLink it cannot reach.
            self._answer(httpx.codes.BAD_GATEWAY, [], f"SuperLink unreachable: {error}\n".encode())
            return
        passed_on = [(name, value) for name, value in answer.headers.multi_items() if name.lower() not in HOP_BY_HOP]
        self._answer(answer.status_code, passed_on, answer.content)

    def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        # A caller that stopped waiting has closed its end: nothing to answer then.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.send_response_only(status)  # the SuperLink's own Date and Server headers pass on
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("relay: " + format, *args)
