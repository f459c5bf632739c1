"""Keep freed host memory for reuse, so a CPU training step stops faulting in fresh pages.

glibc's ``malloc`` serves each request above its mmap threshold (at most 32 MiB, adjusted on the
fly) with a mapping of its own and unmaps it on ``free``. A training step allocates and frees
tensors of that size by the hundred (a bert-base FFN activation at 16 x 256 tokens is 50 MB), so
every one of them faults its pages in again: a minor fault per 4 KiB page, zeroed by the kernel,
which costs more than the elementwise op that then writes it. ``keep_freed_memory`` raises the
mmap threshold and the trim threshold, so freed blocks go back to the heap and the next step
reuses them. Peak RSS stays close to the same: the step's high-water mark is what it was.

The setting is process-wide and cannot be undone, so no library call makes it: ``loratune train``
does at its start (``--no-malloc-tuning`` leaves malloc alone), and a Python user opts in with one
call of ``loratune.keep_freed_memory()``. It needs glibc (Linux); elsewhere it does nothing and
returns False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: requests up to this size come from the heap (glibc's largest accepted value on 64-bit is larger)
MMAP_THRESHOLD = 1 << 30
#: free memory at the top of the heap is given back to the OS only above this (mallopt takes an int)
TRIM_THRESHOLD = 2**31 - 1


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        libc.gnu_get_libc_version.restype = ctypes.c_char_p  # only glibc has it: the AttributeError below
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl)
        return None
    return libc


def supported() -> bool:
    """Whether this process runs on glibc, whose allocator ``keep_freed_memory`` tunes."""
    return _libc() is not None


_tuned = False


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks up to 1 GiB for reuse (this whole process); True if it took effect."""
    global _tuned
    libc = _libc()
    if libc is None:
        return False
    mmap_ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    trim_ok = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _tuned = _tuned or (mmap_ok and trim_ok)
    return mmap_ok and trim_ok


def freed_memory_kept() -> bool:
    """Whether ``keep_freed_memory`` has taken effect in this process."""
    return _tuned
