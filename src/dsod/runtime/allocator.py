"""The CPU allocator a training process runs with: which ones exist here, and the environment that
selects one for a *new* process (an allocator is chosen before the interpreter starts, so only the
``dsod`` command's own process, or a probe's child, is ever switched; a program that imports dsod
keeps its own).

- ``glibc``: glibc's malloc as it comes. Its dynamic mmap threshold (growing up to 32 MB) serves the
  activation and gradient tensors of a training step from its heap arenas and keeps freed blocks, so
  peak RSS ends above the live tensors (fragmentation: DSOD300 memory-efficient, 0.177-0.18 GB per
  extra image vs 0.12 GB of live tensors, docs/PERFORMANCE.md).
- ``glibc-thp``: the same with its heap advised for transparent huge pages (fewer TLB misses and
  page faults on the large activation tensors), where the kernel allows THP on ``madvise``.
- ``mmap1m``: glibc with the mmap threshold fixed at 1 MiB (``MALLOC_MMAP_THRESHOLD_``), the default
  of earlier releases: peak RSS at the live tensors, but every tensor over 1 MiB is a fresh mmap that
  page-faults and is zero-filled on every step (training 1.8x slower on an AVX-512 Xeon; docs/PERFORMANCE.md).
- ``jemalloc``: jemalloc (Debian's ``libjemalloc2``), one arena, freed pages never returned
  (``dirty_decay_ms:-1``): a training step re-allocates the same sizes every iteration, so they are
  reused with no page faults, and jemalloc's size classes fragment less than glibc's heap. Measured
  on an AMD EPYC (AVX2), one thread (docs/PERFORMANCE.md "Training speed"): dsod-tiny-bccd step 5.1
  CPU-s vs glibc 5.8 and mmap1m 16.0; DSOD300 memory-efficient 0.154 GB per extra image vs glibc
  0.181 and mmap1m 0.125 (NCHW, one process; ``dsod train``'s channels-last in two processes: 0.147
  vs glibc's 0.245, at 1.14x its speed, AVX2 kernels on a Zen 4). The settings of ``torch.backends.xeon.run_cpu`` (``oversize_threshold:1``
  with long decays) and jemalloc's default decay measured 2x slower here (10.2-10.8 CPU-s: purged
  pages fault again) though leaner (0.121 GB).
"""
from __future__ import annotations

import ctypes.util
import os
import sys
from pathlib import Path
from typing import Dict, Optional

ALLOCATORS = ("glibc", "glibc-thp", "mmap1m", "mmap1m-thp", "jemalloc")
_THP = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
JEMALLOC_CONF = "narenas:1,dirty_decay_ms:-1,muzzy_decay_ms:-1"  # see the module docstring
MMAP_THRESHOLD = 1 << 20
_JEMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
                   "/usr/lib64/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2")


def find_jemalloc() -> Optional[str]:
    """Path of libjemalloc.so.2 on this machine (``DSOD_JEMALLOC`` first, then the usual places and
    the active environment's lib folder), or None."""
    candidates = [os.environ.get("DSOD_JEMALLOC", ""), *_JEMALLOC_PATHS,
                  str(Path(sys.prefix) / "lib" / "libjemalloc.so.2"), str(Path(sys.prefix) / "lib" / "libjemalloc.so")]
    for c in candidates:
        if c and Path(c).is_file():
            return c
    name = ctypes.util.find_library("jemalloc")
    return name if name and Path(name).is_file() else None


def allocator_env(name: str) -> Dict[str, str]:
    """Environment variables that make a new process use allocator ``name`` (``ALLOCATORS``)."""
    if name == "glibc":
        return {}
    if name == "glibc-thp":  # glibc >= 2.35: madvise its memory for transparent huge pages
        return dict(_THP)
    if name == "mmap1m":
        return {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    if name == "mmap1m-thp":
        return {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), **_THP}
    if name == "jemalloc":
        lib = find_jemalloc()
        if lib is None:
            raise FileNotFoundError("jemalloc is not installed (Debian/Ubuntu: apt-get install libjemalloc2)")
        preload = " ".join(p for p in (lib, os.environ.get("LD_PRELOAD", "")) if p)
        return {"LD_PRELOAD": preload, "MALLOC_CONF": os.environ.get("MALLOC_CONF", JEMALLOC_CONF)}
    raise ValueError(f"unknown allocator '{name}'; valid: {', '.join(ALLOCATORS)}")


def active_allocator() -> str:
    """The allocator this process runs with: ``jemalloc`` when it is mapped, ``mmap1m`` when glibc's
    threshold is fixed through the environment, else ``glibc`` (or ``unknown`` off Linux)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    if "libjemalloc" in maps:
        return "jemalloc"
    thp = "-thp" if "glibc.malloc.hugetlb=1" in os.environ.get("GLIBC_TUNABLES", "") else ""
    return ("mmap1m" if os.environ.get("MALLOC_MMAP_THRESHOLD_") else "glibc") + thp
