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
        when the store answers again."""
        for key in sorted(keys):
            try:
                self.store.delete(key)
            except StoreError as error:
                log.warning("could not remove %s left by a failed call (%s); will retry", key, error)
                with self._lock:
                    self._leftovers.add(key)

    @property
    def leftovers(self) -> int:
        with self._lock:
            return len(self._leftovers)

    def check_now(self) -> bool:
        try:
            self.store.check(create=False)
        except StoreError as error:
            self._set(False, str(error))
            return False
        self._set(True, "")
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
