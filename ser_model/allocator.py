"""The C heap of a training process: glibc's own policy, or large blocks given back when freed.

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

The policy is a process knob, ``SER_HEAP`` (:func:`heap_policy`):

- ``glibc`` (default): glibc's own dynamic policy. Since training and evaluation batches are padded
  to multiples of ``ser_model.data.PAD_SECONDS`` (a split's batches take a few shapes, so each
  step's activations fit the blocks the steps before freed) and cpu-fbank evaluates 4 utterances
  at a time, a RAVDESS fold of the recipe peaks at 1.42 GB with it (3.7 GB before), its system CPU
  a few seconds (docs/RESULTS.md §12).
- ``bounded``: the threshold fixed at 1 MiB, and in a process started with :func:`heap_env`
  glibc's ``hugetlb`` tunable on, so those mappings take transparent huge pages where the kernel
  allows them (``madvise`` mode). Every large activation is then a fresh mapping zeroed at first
  touch: more system CPU (about 20 % more wall time for a fold before the shapes were fixed, §10),
  for a process whose RSS must stay at its working set whatever its batches' shapes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from collections.abc import Mapping

from ser_model.config_validation import ConfigError
from ser_stack.environment import SettingsError
from ser_stack.process_settings import ProcessSettings

__all__ = [
    "HUGE_PAGES_TUNABLE",
    "MMAP_THRESHOLD_BYTES",
    "bound_heap",
    "heap_env",
    "heap_policy",
    "restart_with_heap_env",
]

log = logging.getLogger(__name__)

#: blocks of at least this many bytes are mmapped and unmapped on free (glibc's M_MMAP_THRESHOLD)
MMAP_THRESHOLD_BYTES = 1 << 20
M_MMAP_THRESHOLD = -3  # glibc malloc.h


HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
"""glibc ≥ 2.35: mmapped chunks are madvise'd for transparent huge pages (read at process start)."""


def heap_policy(env: Mapping[str, str] | None = None) -> str:
    """``SER_HEAP`` of ``env`` (default: this process's; `ser_stack.process_settings.ProcessSettings`,
    unset: ``bounded``); ConfigError naming a bad value."""
    try:
        return ProcessSettings.from_env(env).heap
    except SettingsError as err:
        raise ConfigError(str(err)) from None


def heap_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for a training process to be started: with the bounded policy, glibc's huge-page
    tunable added to ``GLIBC_TUNABLES`` (kept as given where it already names ``glibc.malloc.hugetlb``)."""
    out = dict(env)
    if heap_policy(env) != "bounded":
        return out
    tunables = [t for t in out.get("GLIBC_TUNABLES", "").split(":") if t]
    if not any(t.startswith("glibc.malloc.hugetlb=") for t in tunables):
        out["GLIBC_TUNABLES"] = ":".join([*tunables, HUGE_PAGES_TUNABLE])
    return out


def restart_with_heap_env() -> None:
    """Start this command line again with :func:`heap_env`'s start-up settings (``exec``: same
    process id, nothing returns) unless they are in effect already; for a training command run from
    a shell (``ser train``, ``ser tune``), whose heap settings must be in the environment before the
    C library starts. Does nothing where the command line is not known (an embedded interpreter)."""
    env = heap_env(os.environ)
    if env == dict(os.environ) or len(sys.orig_argv) < 2:
        return
    log.debug("restarting with GLIBC_TUNABLES=%s", env.get("GLIBC_TUNABLES"))
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def bound_heap(threshold_bytes: int = MMAP_THRESHOLD_BYTES, env: Mapping[str, str] | None = None) -> bool:
    """Fix glibc's mmap threshold at ``threshold_bytes`` for the rest of this process, unless
    ``SER_HEAP=glibc`` (module docstring). Returns whether it took effect: False with that policy
    and where the C library is not glibc (macOS, musl), which keeps its own policy."""
    if heap_policy(env) != "bounded":
        return False
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
