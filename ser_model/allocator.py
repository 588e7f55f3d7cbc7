"""The C heap of a training process: large blocks go back to the system when freed.

glibc's malloc serves a block of at least M_MMAP_THRESHOLD bytes with its own mmap and unmaps it
on free; smaller ones come from the heap, which returns memory only from its top. The threshold
starts at 128 KiB but is *dynamic*: each freed mmapped block raises it to that block's size (up
to 32 MiB). Training frees and reallocates activations of a different size every step (the
length-bucketed batches differ in length), so after the first steps they all land on the heap,
whose holes cannot be returned: a CPU fold worker on RAVDESS grew from 1.0 to 2.2 GB resident in
40 steps of the cpu-fbank recipe with identical results (benchmarks/fold_memory.py,
docs/RESULTS.md "Memory of one fold"). Fixing the threshold (``mallopt(M_MMAP_THRESHOLD, …)``,
which also turns the dynamic raise off) keeps the worker at its working set, at a price: each
large activation is a fresh mapping whose pages the kernel zeroes at first touch, about 35 % more
CPU seconds per fbank training step on CPU (docs/RESULTS.md §10, "Speed").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["MMAP_THRESHOLD_BYTES", "bound_heap"]

log = logging.getLogger(__name__)

#: blocks of at least this many bytes are mmapped and unmapped on free (glibc's M_MMAP_THRESHOLD)
MMAP_THRESHOLD_BYTES = 1 << 20
M_MMAP_THRESHOLD = -3  # glibc malloc.h


def bound_heap(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at ``threshold_bytes`` for the rest of this process (module
    docstring). Returns whether it took effect: False where the C library is not glibc (macOS,
    musl), which keeps its own policy."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    done = bool(mallopt(M_MMAP_THRESHOLD, threshold_bytes))
    if not done:
        log.warning(
            "mallopt(M_MMAP_THRESHOLD, %d) was refused; the heap keeps glibc's policy", threshold_bytes
        )
    return done
