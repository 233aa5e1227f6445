"""Why post-processing costs about twice as much when served as in a warm loop: the selection
(``PostProcessor.select``, batch 1) on one image's outputs, timed back to back and right after
something else (a 10 ms sleep, a 10 ms Python spin that touches almost no memory, the network
itself), first call and the call straight after; and one tiny ONNX Runtime NMS call the same ways.

    python benchmarks/postprocess_cold.py FILE.onnx [images=DIR] [runs=40] [kernel=numba|onnxruntime|torchvision]

docs/PERFORMANCE.md "Post-processing" quotes it (AMD EPYC Zen 4, one thread).
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def main(argv):
    from dsod.export import load_batch
    from dsod.inference.postprocess import nms
    from dsod.inference.postprocess.detection_output import PostProcessor
    from dsod.inference.runners import OrtRunner

    path, opts = argv[0], dict(a.split("=", 1) for a in argv[1:])
    torch.set_num_threads(1)
    runner = OrtRunner(path, threads=1)
    size = int(runner.metadata.get("image_size") or 300)
    images, where = load_batch(opts.get("images"), 1, size)
    x = torch.from_numpy(images[:1].copy())
    decoded = runner(x)
    post = PostProcessor(nms_kernel=opts.get("kernel"))
    runs = int(opts.get("runs", 40))
    print(f"{path} on {where}; selection kernel {nms.kernel(opts.get('kernel'))}; medians of {runs}, ms")
    before = {"nothing": lambda: None, "sleep 10 ms": lambda: time.sleep(0.01), "spin 10 ms": lambda: _spin(0.01),
              "the network": lambda: runner(x)}
    for name, pre in before.items():
        first, second = [], []
        for _ in range(runs):
            pre()
            for times in (first, second):
                t = time.perf_counter()
                post.select(*decoded, [(480, 640)])
                times.append(time.perf_counter() - t)
        print(f"  selection after {name:12s} {statistics.median(first) * 1e3:6.3f}   "
              f"the call after it {statistics.median(second) * 1e3:6.3f}")
    session = nms._session()
    if session is not None:
        feed = {"boxes": np.random.default_rng(0).random((3, 10, 4), dtype=np.float32),
                "scores": np.random.default_rng(1).random((3, 1, 10), dtype=np.float32),
                "max": np.array([5], np.int64), "iou": np.array([0.45], np.float32),
                "thresh": np.array([0.0], np.float32)}
        for name in ("nothing", "the network"):
            times = []
            for _ in range(runs):
                before[name]()
                t = time.perf_counter()
                session.run(None, feed)
                times.append(time.perf_counter() - t)
            print(f"  tiny ONNX Runtime NMS call after {name:12s} {statistics.median(times) * 1e3:6.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
