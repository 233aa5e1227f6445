"""Process-wide settings of the ``dsod`` command's own process: the allocator and how the CPU's cores
are used. Only ``dsod.cli.main`` calls this; a program that imports dsod and calls ``train()`` keeps
its own allocator and thread count.

Decided at start (measured with ``dsod bench``'s training section, docs/PERFORMANCE.md):
- allocator: jemalloc with ``torch.backends.xeon.run_cpu``'s settings where it is installed (fast
  and lean), else glibc's defaults (fast, ~50% more memory per image). The process re-executes itself
  once with ``LD_PRELOAD`` set (an allocator cannot be swapped in a running process).
  ``DSOD_ALLOCATOR=glibc|mmap1m|jemalloc`` chooses; ``MALLOC_*``/``LD_PRELOAD`` set by the user win.
- cores: ``CPU_PROCESSES`` (DDP on gloo, one thread each) or one process with all cores as threads.
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional

from .engine.memory import ALLOCATORS, active_allocator, allocator_env, find_jemalloc

_MARK = "DSOD_ALLOCATOR_ACTIVE"  # set before the re-exec: never loop


def default_allocator() -> str:
    return "jemalloc" if find_jemalloc() else "glibc"


def chosen_allocator() -> str:
    want = os.environ.get("DSOD_ALLOCATOR", "auto").strip().lower()
    if want in ("", "auto"):
        return default_allocator()
    if want not in ALLOCATORS:
        raise SystemExit(f"dsod: DSOD_ALLOCATOR={want} is not valid; choose one of: auto, {', '.join(ALLOCATORS)}")
    return want


def _user_chose_allocator() -> bool:
    return any(k.startswith("MALLOC_") for k in os.environ) or "jemalloc" in os.environ.get("LD_PRELOAD", "") \
        or "tcmalloc" in os.environ.get("LD_PRELOAD", "")


def ensure_allocator(argv: List[str]) -> Optional[str]:
    """Re-execute ``python -m dsod argv`` under the chosen allocator if this process does not run it
    yet (Linux only). Returns a note for the start-up line, or None when nothing was decided."""
    if not sys.platform.startswith("linux"):
        return None
    if os.environ.get(_MARK) or _user_chose_allocator():
        return f"allocator {active_allocator()}"
    want = chosen_allocator()
    if want == active_allocator():
        return f"allocator {want}"
    env = {**os.environ, **allocator_env(want), _MARK: want}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "dsod", *argv], env)
    return None  # not reached


def allocator_note() -> str:
    a = active_allocator()
    if a == "glibc" and not find_jemalloc():
        return "allocator glibc (jemalloc not installed: apt-get install libjemalloc2 for ~1/3 less training memory)"
    return f"allocator {a} (DSOD_ALLOCATOR=glibc|mmap1m|jemalloc overrides)"


def configure_training_process(argv: List[str]) -> None:
    """``dsod train``/``dsod demo``: the allocator (re-exec), then the thread count; one line says what."""
    ensure_allocator(argv)
    import torch

    cfg = default_train_config()
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(cfg.threads)
    print(f"dsod: {allocator_note()}; {torch.get_num_threads()} thread(s) per process", flush=True)


def default_train_config(cores: Optional[int] = None):
    """The configuration ``dsod train`` picks on this CPU (what ``dsod bench`` calls "new default")."""
    from .engine.numerics import CHANNELS_LAST_CPU
    from .engine.train_probe import TrainConfig
    from .hardware import native_bf16

    cores = cores or os.cpu_count() or 1
    procs = CPU_PROCESSES(cores)
    return TrainConfig(allocator=default_allocator(), channels_last=CHANNELS_LAST_CPU, bf16=native_bf16(),
                       threads=max(1, cores // procs), processes=procs)


def CPU_PROCESSES(cores: int) -> int:  # noqa: N802 - a measured rule, see the module docstring
    return 1
