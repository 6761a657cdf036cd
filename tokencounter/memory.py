"""Memory a large request used goes back to the OS when it ends (glibc; a no-op on other C libraries).

glibc raises its mmap threshold after each large free, so later large buffers (bodies, decoded strings, rendered
prompts) come from heap arenas that are rarely given back: a worker that served a few 8 MiB bodies at once kept
about 1 GB. A fixed threshold keeps large buffers in their own mappings (unmapped when freed), and a trim after
a large request returns what the arenas hold free.

Below that threshold the heap keeps up to TRIM_THRESHOLD_BYTES free between requests: with glibc's 128 KiB, the
pages of every sizeable string went back to the OS when it was freed and were faulted in again for the next one
(a 465 KB stream's copies cost 1.1 ms of page faults in a 1.7 ms parse).
"""

from __future__ import annotations

import ctypes
import sys
import threading

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
MMAP_THRESHOLD_BYTES = 1024 * 1024
TRIM_THRESHOLD_BYTES = 16 * 1024 * 1024
# Requests at least this large trim the heap when they end (a few milliseconds; small requests never pay it).
TRIM_AFTER_BYTES = 1024 * 1024

_lock = threading.Lock()
_libc = None
_configured = False


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    except (OSError, AttributeError):  # musl, or no glibc
        return None
    return libc


def configure() -> bool:
    """Fix glibc's mmap threshold (once per process); False where there is no glibc."""
    global _libc, _configured
    if _configured:
        return _libc is not None
    with _lock:
        if not _configured:
            _libc = _glibc()
            if _libc is not None:
                _libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                _libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
            _configured = True
    return _libc is not None


def release_after(body_bytes: int) -> None:
    """After a request of `body_bytes`: give the heap's free memory back to the OS if the request was large."""
    if body_bytes >= TRIM_AFTER_BYTES and _libc is not None:
        _libc.malloc_trim(0)
