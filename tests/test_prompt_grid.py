"""The aggregator's Grid asks for replies at short, bounded intervals. Every
federation test runs it against a real SuperLink; these check its pacing, with a
Grid whose replies come in on a schedule of polls."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import pairwise
from types import SimpleNamespace
from typing import Any

import pytest
from flwr.serverapp import Grid

from fedxai.settings import RUNTIME_RELAY_VARIABLE
from services.aggregator.prompt_grid import FIRST_PAUSE, LONGEST_PAUSE, RELAYED_LONGEST_PAUSE, PromptGrid, longest_pause


class ScheduledGrid(Grid):
    """Answers message ``i`` at the ``ready_at[i]``-th pull (never when None)."""

    def __init__(self, ready_at: list[int | None]) -> None:
        self.ready_at = ready_at
        self.pulls = 0

    def set_run(self, run):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    @property
    def run(self):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return range(len(self.ready_at))

    def push_messages(self, messages: Iterable[Any]) -> Iterable[str]:
        assert messages, "nothing is pushed without messages"
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Any]:
        """Replies as the PromptGrid reads them: by the id of the message they answer."""
        self.pulls += 1
        return [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=message_id))
            for message_id in message_ids
            if self.ready_at[int(message_id[1:])] == self.pulls
        ]

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        raise AssertionError("PromptGrid waits itself")


def outgoing(count: int) -> list[Any]:
    return [object() for _ in range(count)]


def test_waits_for_every_reply_with_pauses_that_grow_to_a_bound():
    pauses: list[float] = []
    inner = ScheduledGrid([3, 20])
    replies = list(PromptGrid(inner, sleep=pauses.append).send_and_receive(outgoing(2)))
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1"]
    assert inner.pulls == 20
    assert pauses[0] == FIRST_PAUSE and max(pauses) == LONGEST_PAUSE
    assert pauses[2] == FIRST_PAUSE, "a reply (at the third pull) brings the next poll close again"
    assert all(b >= a for a, b in pairwise(pauses[2:])), pauses


def test_behind_the_relay_the_pauses_grow_to_a_shorter_bound():
    # `fedxai superexec` marks its ServerApps: its relay holds a pull of a reply still uploading.
    assert longest_pause({RUNTIME_RELAY_VARIABLE: "1"}) == RELAYED_LONGEST_PAUSE < LONGEST_PAUSE
    assert longest_pause({}) == longest_pause({RUNTIME_RELAY_VARIABLE: "0"}) == LONGEST_PAUSE
    pauses: list[float] = []
    grid = PromptGrid(ScheduledGrid([12]), sleep=pauses.append, longest_pause=RELAYED_LONGEST_PAUSE)
    list(grid.send_and_receive(outgoing(1)))
    assert pauses[0] == FIRST_PAUSE and max(pauses) == pauses[-1] == RELAYED_LONGEST_PAUSE


def test_returns_what_came_when_the_timeout_passes():
    inner = ScheduledGrid([1, None])
    replies = list(PromptGrid(inner).send_and_receive(outgoing(2), timeout=0.3))
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]
    assert 2 <= inner.pulls <= 10


def test_nothing_to_send_pushes_nothing_and_returns_at_once():
    """A round whose evaluation rides on the next round's training messages sends none."""
    inner = ScheduledGrid([])
    assert list(PromptGrid(inner, sleep=pytest.fail).send_and_receive([])) == []
    assert inner.pulls == 0
