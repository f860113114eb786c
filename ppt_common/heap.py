"""The C heap's free pages, handed back to the operating system.

MindSpore's graph compiler builds a training step's graph in malloc'd memory and frees part of it when the
compile ends, but glibc keeps freed pages between live blocks in the process, and MindSpore's memory pool, which
takes its blocks elsewhere, never reuses them: about 100 MB of a DeiT training process's peak (docs/performance.md,
"Training memory"). glibc's malloc_trim(0) returns them.
"""
import ctypes
import functools
from typing import Callable, Optional


@functools.lru_cache(maxsize=None)
def _malloc_trim() -> Optional[Callable[[int], int]]:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl; Windows has no CDLL(None))
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_heap() -> bool:
    """Return the free pages of every malloc arena to the operating system. True where the C library can (glibc),
    False where it has no such call; live memory is untouched either way."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
