"""Keeps the memory an Explain call frees for the next call.

A call allocates and frees tens of MB (activations, gradients, pictures). With
glibc's defaults, blocks over its mmap threshold are unmapped as soon as they
are freed and the heap's top is trimmed, so every call faults its memory in
again, page by page: thousands of page faults a call, which made the compute a
fifth slower on a 2-vCPU machine. Above these limits glibc behaves as before.
"""

from __future__ import annotations

import ctypes

from fedxai.settings import MIB

# mallopt parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 64 * MIB  # smaller blocks come from the heap and are reused
TRIM_THRESHOLD = 128 * MIB  # free memory a heap keeps before returning any


def keep_freed_memory() -> bool:
    """Tunes glibc's allocator for this process; False where the C library is not
    glibc (macOS has no mallopt; musl's ignores these settings)."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return all(mallopt(param, value) == 1 for param, value in settings)
