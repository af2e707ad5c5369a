"""Handing memory the run has freed back to the operating system (glibc's ``malloc_trim``).

NumPy frees a chunk's arrays with ``free``. glibc keeps freed heap memory for reuse, and once
an array of a few MiB has been freed it serves arrays up to that size (its *dynamic mmap
threshold*, up to 32 MiB) from its heaps instead of from fresh mappings; every thread that
allocates gets a heap (arena) of its own. A run that computes thousands of chunk-sized
temporaries on several threads therefore ends each stage holding hundreds of MiB that are free
but still counted in its resident memory (measured at 4096² with 1024² chunks: 200–600 MiB
handed back at each stage boundary, see ``benchmarks/RESULTS.md``).

:func:`release_memory` asks glibc to give the free pages back (``malloc_trim(0)``);
:func:`trimming` does it at most every ``interval_s`` seconds while a Dask computation runs on
the in-process schedulers (threaded, synchronous), as tasks finish. Neither changes a value. Other
C libraries (musl, macOS, Windows) have no ``malloc_trim``: both are then no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

_TRIM: Any = None  # malloc_trim of the C library, False when it has none


def _malloc_trim() -> Any:
    global _TRIM
    if _TRIM is None:
        try:
            _TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
            _TRIM.argtypes = [ctypes.c_size_t]
            _TRIM.restype = ctypes.c_int
        except (OSError, AttributeError):
            _TRIM = False
    return _TRIM


def release_memory() -> None:
    """Return the memory freed so far to the operating system (glibc; a no-op elsewhere).

    Examples
    --------
    >>> release_memory()
    """
    trim = _malloc_trim()
    if trim:
        trim(0)


@contextmanager
def trimming(interval_s: float = 1.0) -> Iterator[None]:
    """While active, :func:`release_memory` at most every ``interval_s`` s as Dask tasks end.

    Applies to Dask's in-process schedulers (a ``dask.distributed`` cluster manages its
    workers' memory itself); on return, memory is released once more.

    Examples
    --------
    >>> import dask.array as da
    >>> with trimming():
    ...     int(da.ones(10, chunks=5).sum().compute())
    10
    """
    from dask.callbacks import Callback

    if not _malloc_trim():
        yield
        return
    last = [time.monotonic()]

    def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        now = time.monotonic()
        if now - last[0] >= interval_s:
            release_memory()
            last[0] = time.monotonic()

    with Callback(posttask=posttask):
        yield
    release_memory()


def compact_values(data: Any) -> np.ndarray:
    """``numpy.asarray(data)`` for a selection of a NumPy or Dask array, where each Dask chunk of
    the selection is copied out of its source chunk as soon as it is computed.

    A strided selection (``x[::step, ::step]``) of a chunk is a NumPy *view*: it keeps the whole
    source chunk alive. Dask then holds every chunk's view until it joins them into the result,
    hence every source chunk: a regular sample of a 16384² three-band float32 scene with 1024²
    chunks held the whole 3 GiB scene (the 12 MiB chunks, for 9 KiB of samples each), while the
    task results' ``nbytes`` add up to 2 MiB (measured, see ``benchmarks/RESULTS.md``). Copying
    each chunk's selection lets its source chunk go at once. The values are the same.

    Examples
    --------
    >>> import dask.array as da
    >>> x = da.arange(64, chunks=8).reshape(8, 8)
    >>> compact_values(x[1::3, 1::3]).tolist()
    [[9, 12, 15], [33, 36, 39], [57, 60, 63]]
    """
    if hasattr(data, "dask") and hasattr(data, "map_blocks"):
        return np.asarray(data.map_blocks(np.copy, dtype=data.dtype).compute())
    return np.asarray(data)
