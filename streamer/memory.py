"""Keep the service's resident memory from creeping: hand freed heap pages back.

Each stream decodes frames (hundreds of KB each), finds faces and cuts crops in its own
thread, and the engine allocates activations whose size follows the batch, so the
process allocates and frees large blocks of changing sizes in many threads all the
time. glibc keeps what is freed: with 4 looped streams RSS climbed about 1.1 MB/s
(some 4 GB an hour) while Python's own allocations, numpy's included, stayed flat under
``tracemalloc``; it is memory malloc holds, not a leak of ours. Every ``TRIM_EVERY_S``
the service asks glibc to hand free pages back (``malloc_trim``), which keeps the floor
of RSS flat; between two trims it rises and falls by up to about 10 % with the load.

Measured with ``scripts/soak.py`` (4 streams, 120 s, after a 40-s warm-up) and tried
and left: one malloc arena for the process gave no clearer result over two runs and
would serialise a thousand streams' threads on one lock; pinning the mmap threshold
(``mallopt(M_MMAP_THRESHOLD)``) kept RSS flat but cost 40-60 % more CPU in page faults.
Elsewhere than glibc (musl, macOS) this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

TRIM_EVERY_S = 10.0


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _malloc_trim() -> Callable[[], object] | None:
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
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
