"""Process-wide settings of the ``dsod`` command's own process: the allocator and how the CPU's cores
are used. Only ``dsod.cli.main`` calls this; a program that imports dsod and calls ``train()`` keeps
its own allocator and thread count.

Decided at start (measured with ``dsod bench``'s training section, docs/PERFORMANCE.md):
- allocator: jemalloc (``runtime.allocator.JEMALLOC_CONF``) where it is installed (fastest measured and
  leaner than glibc), else glibc's defaults. The process re-executes itself
  once with ``LD_PRELOAD`` set (an allocator cannot be swapped in a running process).
  ``DSOD_ALLOCATOR=glibc|mmap1m|jemalloc`` chooses; ``MALLOC_*``/``LD_PRELOAD`` set by the user win.
- cores: one DDP process per core on gloo, one thread each, the batch split (``CPU_PROCESSES``;
  ``DSOD_CPU_PROCESSES=N`` chooses), or one process when the batch does not split.
"""
from __future__ import annotations

import os
import sys
from typing import Dict, List, Optional

from .allocator import ALLOCATORS, active_allocator, allocator_env, find_jemalloc

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
        return "allocator glibc (jemalloc not installed: apt-get install libjemalloc2 for faster, leaner training)"
    return f"allocator {a} (DSOD_ALLOCATOR=glibc|mmap1m|jemalloc overrides)"


def configure_training_process(argv: List[str], keys: Dict[str, object], allow_ddp: bool = True) -> Optional[int]:
    """``dsod train``/``dsod demo``: the allocator (re-exec), then how the cores are used; one line says
    what. Returns an exit code when this process ran the training as the parent of CPU DDP workers
    (``spawn_cpu_workers``), None when the caller should train in this process."""
    ensure_allocator(argv)
    import torch

    procs = cpu_processes_for(keys, CPU_PROCESSES(os.cpu_count() or 1)) if allow_ddp else 1
    if procs > 1:
        return spawn_cpu_workers(argv, keys, procs)
    if "WORLD_SIZE" in os.environ:  # a worker (ours or torchrun's): the launcher said it all
        return None
    # one process (demo, a batch that does not split, DSOD_CPU_PROCESSES=1): PyTorch's own thread
    # count (all cores, or OMP_NUM_THREADS; 1 is safer on a machine other jobs keep busy)
    print(f"dsod: {allocator_note()}; one process, {torch.get_num_threads()} thread(s) (OMP_NUM_THREADS= sets it)",
          flush=True)
    return None


def cpu_processes_for(keys: Dict[str, object], default: int) -> int:
    """How many DDP processes this ``dsod train`` run uses on the CPU: ``DSOD_CPU_PROCESSES`` or the
    measured default; 1 under torchrun, on CUDA, on resume of a one-process run, or when ``batch``
    does not split evenly into at least 2 images per process."""
    if "WORLD_SIZE" in os.environ:
        return 1
    want = os.environ.get("DSOD_CPU_PROCESSES", "").strip()
    procs = int(want) if want.isdigit() and int(want) > 0 else default
    device = str(keys.get("device") or "auto")
    if procs <= 1 or device.startswith("cuda"):
        return 1
    if device == "auto":
        import torch
        if torch.cuda.is_available():
            return 1
    if keys.get("resume"):
        from ..model.checkpoint import load_checkpoint
        return int(load_checkpoint(str(keys["resume"])).get("world_size") or 1)
    batch = int(keys.get("batch") or 16)
    return procs if batch % procs == 0 and batch // procs >= 2 else 1


def spawn_cpu_workers(argv: List[str], keys: Dict[str, object], procs: int) -> int:
    """Run ``dsod train`` as ``procs`` DDP processes on gloo, one thread each, the batch split between
    them. BN statistics stay per process (``norm=bn``), as the original's per-GPU Caffe BN (4 images
    per GPU): synchronising them (``norm=syncbn``) cost more than the second core gave on CPU. The
    loss is normalised over the global batch. This process only waits: it forwards Ctrl-C / SIGTERM
    to the workers (each saves last.pt) and returns rank 0's exit code."""
    import signal
    import subprocess
    import time

    args = [a for a in argv[1:] if not a.startswith("batch=")]
    batch = int(keys.get("batch") or 16)
    if keys.get("resume"):  # the run's own per-process batch, whatever was given
        from ..model.checkpoint import load_checkpoint
        batch = int((load_checkpoint(str(keys["resume"])).get("train_args") or {}).get("batch") or 1) * procs
    else:
        args.append(f"batch={batch // procs}")
    from .distributed import free_port

    port = free_port()
    print(f"dsod: {allocator_note()}; {procs} DDP processes on gloo x 1 thread, batch {batch // procs} each "
          f"(BN per process; norm=syncbn shares it); DSOD_CPU_PROCESSES=1 for one process", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "WORLD_SIZE": str(procs), "LOCAL_WORLD_SIZE": str(procs)}
    children = [subprocess.Popen([sys.executable, "-m", "dsod", argv[0], *args],
                                 env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                                 preexec_fn=die_with_parent(os.getpid())) for r in range(procs)]

    interrupted = []

    def forward(signum, frame):
        interrupted.append(signum)
        for c in children:
            if c.poll() is None:
                c.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while any(c.poll() is None for c in children):
            failed = [c for c in children if c.poll() not in (None, 0)]
            if failed:  # one worker died: the others would wait in a collective forever
                time.sleep(5)
                for c in children:
                    if c.poll() is None:
                        c.terminate()
            time.sleep(0.2)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    # Interrupted: the workers saved last.pt and exit 130, but a worker's interpreter can still die
    # in teardown (seen under load: gloo's thread writing to a closed stdout, exit 250); the run was
    # interrupted either way.
    return 130 if interrupted else children[0].returncode


def die_with_parent(parent: int):
    """``preexec_fn`` of a worker: the kernel sends it SIGTERM when the launcher dies, even by
    ``kill -9`` (Linux ``prctl(PR_SET_PDEATHSIG)``), so no orphan keeps training and writing; SIGTERM
    lets it save last.pt first. A launcher that died before the call is caught by the parent check.
    None (no hook) where prctl does not exist."""
    if not sys.platform.startswith("linux"):
        return None

    def hook() -> None:
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)
    return hook


def CPU_PROCESSES(cores: int) -> int:  # noqa: N802 - a measured rule, see the module docstring
    # One process per core, one thread each: dsod-tiny-bccd at batch 16 on the 2-core AMD EPYC under
    # load 3.2 stepped in 4.8 s as 2 processes, 6.7 s as 1 process x 1 thread and 7.7 s with 2 threads
    # (OpenMP barriers wait for descheduled threads); SyncBN made 2 processes 8.7 s (docs/PERFORMANCE.md).
    return max(1, cores)
