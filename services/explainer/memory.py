"""Keeps the memory an Explain call frees for the next call.

A call allocates and frees tens of MB (activations, gradients, pictures). With
glibc's defaults, blocks over its mmap threshold are unmapped as soon as they
are freed and the heap's top is trimmed, so every call faults its memory in
again, page by page: thousands of page faults a call, which made the compute a
fifth slower on a 2-vCPU machine. Above these limits glibc behaves as before.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from fedxai.settings import MIB

# mallopt parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

MMAP_THRESHOLD = 64 * MIB  # smaller blocks come from the heap and are reused
TRIM_THRESHOLD = 128 * MIB  # free memory a heap keeps before returning any
# Each heap (arena) keeps up to TRIM_THRESHOLD free: with glibc's default of 8 per
# core, the gRPC threads' arenas held 1.3 GB after a burst of calls.
ARENA_MAX = 2


def keep_freed_memory() -> bool:
    """Tunes glibc's allocator for this process; False where the C library is not
    glibc (macOS has no mallopt; musl's ignores these settings)."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_ARENA_MAX, ARENA_MAX))
    return all(mallopt(param, value) == 1 for param, value in settings)


# Above this resident size, an idle explainer hands the heaps' free pages back.
IDLE_RSS_LIMIT = 1024 * MIB


def resident_bytes() -> int:
    """This process's resident memory, or 0 where /proc is not there."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return 0
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def trim_when_idle() -> None:
    """Called when no call holds memory: if bursts of large calls left the heaps
    holding more than ``IDLE_RSS_LIMIT``, returns their free pages to the system
    (what keep_freed_memory keeps is below that, for the next call)."""
    if resident_bytes() <= IDLE_RSS_LIMIT:
        return
    malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if malloc_trim is not None:
        malloc_trim(0)
