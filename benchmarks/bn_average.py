"""Precise BN's average of the BN statistics over DDP processes (``engine.precise_bn``), timed: two
gloo processes of one thread, the preset's BN layers, median of ``runs`` calls.

    python benchmarks/bn_average.py [model=dsod-tiny] [runs=5]

docs/RESULTS.md quotes it ("Precise BN's cost in a run").
"""
from __future__ import annotations

import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _worker(rank: int, port: int, model_name: str, runs: int) -> None:
    import torch.distributed as dist

    from dsod.engine.precise_bn import _average_across_processes
    from dsod.model.load import load_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model, _ = load_model(model_name)
    _average_across_processes(model)  # warm-up
    times = []
    for _ in range(runs):
        dist.barrier()
        t = time.perf_counter()
        _average_across_processes(model)
        times.append(time.perf_counter() - t)
    if rank == 0:
        bn = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
        print(f"{model_name}: {bn} BN layers, average over 2 gloo processes {statistics.median(times) * 1e3:.1f} ms")
    dist.destroy_process_group()


def main(argv):
    import torch.multiprocessing as mp

    opts = dict(a.split("=", 1) for a in argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, opts.get("model", "dsod-tiny"), int(opts.get("runs", 5))), nprocs=2)


if __name__ == "__main__":
    main(sys.argv[1:])
