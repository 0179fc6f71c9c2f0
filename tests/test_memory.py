"""The explainer's allocator settings: memory a call frees stays for the next call."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Reports, for one 40 MB block (over glibc's largest automatic mmap threshold, 32 MB):
# the bytes mapped for it alone while it lives, and the heap's free bytes once freed.
PROBE = """
import ctypes, sys
import numpy as np
from services.explainer.memory import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
block = np.ones(40 << 20, dtype=np.uint8)
mapped = libc.mallinfo2().hblkhd
del block
print(mapped, libc.mallinfo2().fordblks)
"""
BLOCK = 40 << 20


def probe(mode: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    mapped, free = out.split()
    return int(mapped), int(free)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the tuning is for glibc's allocator")
def test_freed_blocks_stay_in_the_heap_for_the_next_call():
    mapped, free = probe("default")
    assert mapped >= BLOCK and free < BLOCK, "by default the block is mapped alone and handed back when freed"
    mapped, free = probe("tuned")
    assert mapped < BLOCK and free >= BLOCK, "tuned, the block comes from the heap and stays there once freed"
