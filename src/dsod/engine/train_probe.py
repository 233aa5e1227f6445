"""Training speed and memory per image of one configuration, measured in fresh processes.

Each probe is a child process (``python -m dsod.engine.train_probe``) so that process-wide settings
(the allocator, picked by ``LD_PRELOAD``/``MALLOC_*`` before the interpreter starts; the thread count)
and the peak resident set belong to that configuration alone. A step is what ``dsod train`` runs:
forward (under bf16 autocast when asked), MultiBoxLoss in fp32, backward, an SGD step; several
processes (``processes``) run it under DDP on gloo with the batch split between them.

    train_cost("ours", "dsod-tiny-bccd", batch=16, steps=3, cfg=TrainConfig(allocator="jemalloc"))
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch

from ..runtime.allocator import allocator_env
from ..runtime.distributed import free_port


@dataclass(frozen=True)
class TrainConfig:
    allocator: str = "glibc"  # runtime.allocator.ALLOCATORS
    channels_last: bool = False
    bf16: bool = False
    threads: int = 1  # intra-op threads per process
    processes: int = 1  # DDP processes (gloo), the batch split between them
    memory_efficient: Optional[bool] = None  # None: the preset's (on for the DSOD300/512 family)
    syncbn: bool = False  # BN statistics over all processes (SyncCaffeBatchNorm2d)

    def label(self) -> str:
        parts = [self.allocator, "channels_last" if self.channels_last else "nchw", "bf16" if self.bf16 else "fp32"]
        parts.append(f"{self.processes}x{self.threads}t" + ("-syncbn" if self.syncbn else ""))
        if self.memory_efficient is not None:
            parts.append("memory_efficient" if self.memory_efficient else "standard")
        return "/".join(parts)


def _peak_rss_bytes() -> int:
    """Peak resident set of this process's own address space: ``VmHWM`` (Linux). ``ru_maxrss`` is not
    used where VmHWM exists: Linux carries it over from the forked parent across exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def live_peak_bytes(fn) -> Optional[int]:
    """Peak bytes held by live allocations during ``fn()`` above what was live before it: glibc's
    ``mallinfo2`` (heap in use + mmapped) sampled after every tensor op (a dispatch mode). Unlike peak
    RSS it does not count memory that the allocator keeps after a free (fragmentation), so it is the
    activation memory the model itself needs. None where glibc's mallinfo2 is missing (or another
    allocator serves malloc, e.g. jemalloc)."""
    import ctypes

    from torch.utils._python_dispatch import TorchDispatchMode

    class _Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _Info
    except (OSError, AttributeError):
        return None

    def in_use() -> int:
        mi = libc.mallinfo2()
        return mi.uordblks + mi.hblkhd

    class _Peak(TorchDispatchMode):
        peak = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.peak = max(self.peak, in_use())
            return out

    base = in_use()
    with _Peak() as mode:
        fn()
    return mode.peak - base


def _build_step(kind: str, name: str, cfg: TrainConfig, imgsz: Optional[int], ddp: bool):
    """(model, input size, step(x, targets) -> loss) for our model or a torchvision peer."""
    from .evaluate import autocast_context

    if kind == "ours":
        from ..families import criterion_for
        from ..model.load import load_model

        model, mcfg = load_model(name, imgsz)
        if cfg.memory_efficient is not None:
            for mod in model.modules():  # dense blocks, stem and heads
                if hasattr(mod, "memory_efficient"):
                    mod.memory_efficient = cfg.memory_efficient
        size = mcfg.image_size
        criterion = criterion_for(mcfg)
        anchors = model.anchors_cxcywh
    else:
        from ..model.peers import Peer

        peer = Peer(name)
        model, size = peer.model, peer.size
    if cfg.syncbn and ddp:
        from ..model.norms import convert_sync_batchnorm
        model = convert_sync_batchnorm(model)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    net = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    cast = autocast_context(torch.device("cpu"), False, cfg.bf16)

    def step(x, targets):
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with cast:
            out = net(x) if kind == "ours" else None
            if kind != "ours":
                tv_targets = [{"boxes": t["boxes"] * size, "labels": t["labels"] + 1} for t in targets]
                return sum(v.float() for v in net(list(x), tv_targets).values())
        return criterion(out.bbox_regression.float(), out.cls_logits.float(), targets, anchors)["loss"]
    return model, size, step


def _child(spec: Dict[str, Any]) -> Dict[str, Any]:
    """One process of a probe: ``spec`` holds kind, name, batch (this process's), steps, cfg, imgsz."""
    cfg = TrainConfig(**spec["cfg"])
    # not restored: _child runs only in the probe's own subprocess (``python -m dsod.engine.train_probe``)
    torch.set_num_threads(cfg.threads)
    ddp = cfg.processes > 1
    if ddp:
        import torch.distributed as dist
        dist.init_process_group("gloo")
    rank = int(os.environ.get("RANK", 0))
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(rank)
    model, size, step = _build_step(spec["kind"], spec["name"], cfg, spec.get("imgsz"), ddp)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    batch, times, cpu_times = int(spec["batch"]), [], []
    for i in range(int(spec["steps"]) + 1):
        x = torch.randn(batch, 3, size, size, generator=g) * 50
        targets = []
        for _ in range(batch):
            xy = torch.rand(3, 2, generator=g) * 0.6
            wh = torch.rand(3, 2, generator=g) * 0.3 + 0.05
            targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, 3, (3,), generator=g)})
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        step(x, targets).backward()
        opt.step()
        if i > 0:  # the first step pays one-off initialisations
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    # CPU seconds (user + system, all threads of this process) beside wall seconds: on a loaded
    # machine they still compare single-threaded configurations (allocators: page faults are system time)
    out = {"step_s": statistics.median(times), "step_cpu_s": statistics.median(cpu_times), "peak_rss": _peak_rss_bytes()}
    if not ddp and cfg.allocator != "jemalloc":
        out["peak_live"] = live_peak_bytes(lambda: (opt.zero_grad(set_to_none=False), step(x, targets).backward()))
    if ddp:
        import torch.distributed as dist
        dist.destroy_process_group()
    return out


def run_probe(kind: str, name: str, batch: int, steps: int, cfg: TrainConfig,
              imgsz: Optional[int] = None, timeout: float = 1800) -> Dict[str, Any]:
    """Run one configuration at a global ``batch`` in fresh process(es). Returns the slowest process's
    median step time and the processes' summed peak RSS, or ``{"error": ...}``."""
    env = {**os.environ, **allocator_env(cfg.allocator), "OMP_NUM_THREADS": str(cfg.threads)}
    if cfg.allocator != "mmap1m":
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
    world = cfg.processes
    if batch % world:
        return {"error": f"batch {batch} does not split over {world} processes"}
    port = free_port()
    spec = {"kind": kind, "name": name, "batch": batch // world, "steps": steps, "cfg": dataclasses.asdict(cfg),
            "imgsz": imgsz}
    procs = []
    for r in range(world):
        penv = {**env, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(world),
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-m", "dsod.engine.train_probe", json.dumps(spec)],
                                      env=penv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results: List[Dict[str, Any]] = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            return {"error": f"timed out after {timeout:.0f} s"}
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if p.returncode != 0 or not lines:
            tail = (err.strip().splitlines() or ["no output"])[-1]
            return {"error": f"probe process failed ({p.returncode}): {tail}"}
        results.append(json.loads(lines[-1]))
    live = [r.get("peak_live") for r in results]
    return {"step_s": max(r["step_s"] for r in results), "step_cpu_s": sum(r["step_cpu_s"] for r in results),
            "peak_rss": sum(r["peak_rss"] for r in results),
            "peak_live": live[0] if len(live) == 1 else None}


def train_cost(kind: str, name: str, batch: int, steps: int, cfg: TrainConfig = TrainConfig(),
               imgsz: Optional[int] = None, small: int = 2) -> Dict[str, Any]:
    """Training cost per image: peak RSS at ``batch`` minus at ``small`` images per process (fresh
    processes), divided by the difference; images/s from the step time at ``batch``; the same
    difference of the live-tensor peak (``live_gb_per_image``, independent of fragmentation)."""
    lo_batch = small * cfg.processes
    if batch <= lo_batch:
        return {"config": cfg.label(), "error": f"batch {batch} must exceed {lo_batch} ({small} per process)"}
    res = {}
    for b in (lo_batch, batch):
        r = run_probe(kind, name, b, steps, cfg, imgsz)
        if "error" in r:
            return {"config": cfg.label(), "error": r["error"]}
        res[b] = r
    per_image = (res[batch]["peak_rss"] - res[lo_batch]["peak_rss"]) / (batch - lo_batch)
    live = None
    if res[batch].get("peak_live") is not None and res[lo_batch].get("peak_live") is not None:
        live = (res[batch]["peak_live"] - res[lo_batch]["peak_live"]) / (batch - lo_batch) / 1e9
    return {"config": cfg.label(), **dataclasses.asdict(cfg), "memory_gb_per_image": per_image / 1e9,
            "live_gb_per_image": live, "peak_rss_gb": {str(k): v["peak_rss"] / 1e9 for k, v in res.items()},
            "step_ms": {str(k): v["step_s"] * 1e3 for k, v in res.items()},
            "train_ms_per_image": res[batch]["step_s"] * 1e3 / batch, "train_img_s": batch / res[batch]["step_s"],
            "cpu_s_per_image": res[batch]["step_cpu_s"] / batch}


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))), flush=True)


def default_train_config(cores: Optional[int] = None):
    """The configuration ``dsod train`` picks on this CPU (what ``dsod bench`` calls "new default")."""
    from ..runtime.hardware import native_bf16
    from ..runtime.launch import CPU_PROCESSES, default_allocator
    from ..runtime.numerics import CHANNELS_LAST_CPU

    cores = cores or os.cpu_count() or 1
    procs = CPU_PROCESSES(cores)
    return TrainConfig(allocator=default_allocator(), channels_last=CHANNELS_LAST_CPU, bf16=native_bf16(),
                       threads=max(1, cores // procs), processes=procs)
