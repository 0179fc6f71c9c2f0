"""Watches the store from its own thread: whether it answers, for the health check
and for calls to fail fast, and the leftovers of failed calls to remove once it does."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from fedxai.errors import StoreError, StoreUnavailable
from fedxai.storage import ObjectStore

log = logging.getLogger(__name__)


class StoreWatch:
    def __init__(self, store: ObjectStore, interval: float, on_change: Callable[[bool], None]) -> None:
        self.store = store
        self.interval = interval
        self._on_change = on_change
        self._available = True
        self._reason = ""
        self._leftovers: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join()

    def require_available(self) -> None:
        """Raises StoreUnavailable at once while the last check failed: no compute
        is spent on a call whose pictures cannot be stored."""
        if not self._available:
            raise StoreUnavailable(f"the store did not answer its last check ({self._reason}); retry later")

    def remove(self, keys: Iterable[str]) -> None:
        """Deletes objects a failed call left; what cannot be deleted now is deleted
        when the store answers again. After a failed delete the store is checked once:
        if it is away, the rest wait too (on a hung store each delete would wait out
        its timeout); if it answers, that one object was the trouble, and is logged."""
        remaining = sorted(keys)
        while remaining:
            key = remaining.pop(0)
            try:
                self.store.delete(key)
            except StoreError as error:
                if self.check_now(remove_leftovers=False):
                    log.error("could not remove %s, left by a failed call: %s", key, error)
                    continue
                log.warning("%d objects left by a failed call wait for the store", len(remaining) + 1)
                with self._lock:
                    self._leftovers.update([key, *remaining])
                return

    @property
    def leftovers(self) -> int:
        with self._lock:
            return len(self._leftovers)

    def check_now(self, remove_leftovers: bool = True) -> bool:
        try:
            self.store.check(create=False)
        except StoreError as error:
            self._set(False, str(error))
            return False
        self._set(True, "")
        if remove_leftovers:
            with self._lock:
                leftovers, self._leftovers = self._leftovers, set()
            if leftovers:
                self.remove(leftovers)
        return True

    def _set(self, available: bool, reason: str) -> None:
        changed = available != self._available
        self._available, self._reason = available, reason
        if changed:
            if available:
                log.info("the store answers again")
            else:
                log.error("the store does not answer: %s", reason)
            self._on_change(available)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check_now()
