"""A Grid that notices replies soon after they arrive.

Flower's ``send_and_receive`` pushes a round's messages, then asks the SuperLink for
replies every 3 seconds: on average 1.5 s lost per exchange, two exchanges a round.
``PromptGrid`` wraps the Grid Flower hands the ServerApp and waits through the same
public ``push_messages``/``pull_messages`` calls, asking again after a short pause
that grows while nothing comes back (0.05 s, then 1.5 times longer up to a bound), so
that a quiet round costs the SuperLink a few requests a second at most.

The bound is 0.2 s, or 0.1 s behind ``fedxai superexec``'s relay. A SuperNode registers its
reply, then uploads the reply's parts; a pull that lands in between finds a part missing,
and Flower's pull waits 1 s before it asks again. The more often the ServerApp asks, the
more often it lands there, unless the relay holds such a pull until the part is in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedxai.settings import RUNTIME_RELAY_VARIABLE

FIRST_PAUSE = 0.05
LONGEST_PAUSE = 0.2  # the last reply waits at most this long; 5 empty asks a second
RELAYED_LONGEST_PAUSE = 0.1  # behind `fedxai superexec`'s relay
BACKOFF = 1.5


def longest_pause(env: Mapping[str, str]) -> float:
    """The bound on the pauses, for a ServerApp with environment ``env``."""
    return RELAYED_LONGEST_PAUSE if env.get(RUNTIME_RELAY_VARIABLE) == "1" else LONGEST_PAUSE


class PromptGrid(Grid):
    """``grid`` with a ``send_and_receive`` that polls at a short, bounded interval."""

    def __init__(
        self, grid: Grid, sleep: Callable[[float], None] = time.sleep, longest_pause: float = LONGEST_PAUSE
    ) -> None:
        self._grid = grid
        self._sleep = sleep
        self._longest_pause = longest_pause

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self._grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Pushes ``messages`` and returns the replies that come within ``timeout``
        seconds (all of them when it is None), as Flower's does."""
        messages = list(messages)
        if not messages:  # a round's evaluation that the next round's training carries
            return []
        waiting = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        pause = FIRST_PAUSE
        while waiting:
            pulled = list(self.pull_messages(waiting))
            replies.extend(pulled)
            waiting -= {reply.metadata.reply_to_message_id for reply in pulled}
            if not waiting or (deadline is not None and time.monotonic() >= deadline):
                break
            if pulled:  # the others are likely close behind
                pause = FIRST_PAUSE
            if deadline is not None:
                pause = min(pause, max(deadline - time.monotonic(), 0.0))
            self._sleep(pause)
            pause = min(pause * BACKOFF, self._longest_pause)
        return replies
