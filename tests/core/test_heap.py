"""ppt_common.heap: freed C-heap pages go back to the operating system."""
import ctypes
import sys

import pytest

from ppt_common.heap import release_free_heap


def resident_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmRSS from /proc (Linux)")
def test_freed_blocks_below_a_live_one_are_returned():
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "malloc_trim"):  # a Linux without glibc (musl): there is nothing to call
        assert release_free_heap() is False
        return
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    # 160 MB in 2 KB blocks (heap, far below malloc's mmap threshold), touched; the last one stays live, so the
    # freed ones sit below it and free() cannot give them back by shrinking the heap's top
    blocks = [libc.malloc(2048) for _ in range(80_000)]
    for block in blocks:
        libc.memset(block, 1, 2048)
    pinned = libc.malloc(2048)
    for block in blocks:
        libc.free(block)
    before = resident_mb()
    assert release_free_heap() is True
    returned = before - resident_mb()
    libc.free(pinned)
    assert returned > 100, f"{returned:.0f} MB returned of 160 MB freed"
