"""Keep the service's resident memory flat: give freed heap memory back to the OS.

Each stream decodes frames (hundreds of KB each) and cuts crops in its own thread, so
the process frees large blocks all the time. glibc's malloc serves them from mmap at
first, then (its threshold drifting up with every such free) from per-thread heaps
whose free pages it keeps: with 4 looped streams RSS climbed about 1.1 MB/s (some 4 GB
an hour) while Python's own allocations stayed flat under ``tracemalloc``. It is not a
leak, it is memory malloc holds, so every ``TRIM_EVERY_S`` the service asks glibc to
return it (``malloc_trim``). Measured with ``scripts/soak.py``-style runs of 4 streams
for 100 s: RSS +2 % after warm-up with trimming against +16 % without; pinning the mmap
threshold instead (``mallopt``) also kept RSS flat but cost 40-60 % more CPU in page
faults, so it is not used. Elsewhere than glibc (musl, macOS) this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

TRIM_EVERY_S = 10.0


def _malloc_trim() -> Callable[[], object] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


async def trim_forever(every_s: float = TRIM_EVERY_S) -> None:
    """Return malloc's free pages to the OS every ``every_s`` (a supervised loop)."""
    trim = _malloc_trim()
    if trim is None:
        log.debug("malloc_trim is not available: RSS is left to the allocator")
        return
    while True:
        await asyncio.sleep(every_s)
        await asyncio.to_thread(trim)
