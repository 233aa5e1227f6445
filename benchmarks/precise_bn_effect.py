"""Precise BN on one checkpoint: the running BN statistics against statistics re-estimated from N
augmented training images (drawn as ``dsod train`` draws them: the run's augmentation and per-process
batch, ``engine.loaders.side_batches``), each scored on the validation split, with the cost of the
re-estimation next to the cost of one evaluation.

    python benchmarks/precise_bn_effect.py runs/NAME/weights/last.pt [images=64,256,1024] [seeds=2]
        [data=...] [json=out.json]

The checkpoint must hold the running statistics: beside the re-estimated ones (``train_bn``, a last.pt
written at an evaluation or at ``stop_at=``) or as its own (``bn_stats`` "running": the run's final
evaluation kept them). For the timings run it with nothing else busy and say the thread count
(docs/RESULTS.md: 2 threads, the default).
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main(argv):
    from dsod.data import DetectionDataset, eval_loader, load_dataset, train_transform
    from dsod.engine.evaluate import run_evaluation
    from dsod.engine.loaders import side_batches
    from dsod.engine.precise_bn import bn_buffers, load_bn_buffers, recompute_bn_stats
    from dsod.metrics import Evaluator
    from dsod.model.checkpoint import build_from_checkpoint, load_checkpoint

    path, opts = argv[0], dict(a.split("=", 1) for a in argv[1:])
    ckpt = load_checkpoint(path)
    if ckpt.get("train_bn") is None and ckpt.get("bn_stats") != "running":
        raise SystemExit(f"{path}: no running statistics in it (bn_stats {ckpt.get('bn_stats')!r}, no train_bn)")
    ta = ckpt["train_args"]
    spec = load_dataset(opts.get("data", ta["data"]), val_fraction=ta.get("val_fraction"),
                        val_images=ta.get("val_images"))
    val = spec.records("val")
    model, cfg = build_from_checkpoint(ckpt)
    # the running average: beside the re-estimate (train_bn), or the model's own where the run's final
    # evaluation kept it (bn_stats "running")
    running_bn = ckpt["train_bn"] if ckpt.get("train_bn") is not None else bn_buffers(model)
    train_set = DetectionDataset(spec.records("train"), train_transform(cfg.image_size, mode=ta["augment"],
                                 flipud=ta["flipud"]), train=True)
    batch = int(ta["batch"])
    vl = eval_loader(val, cfg.image_size, 16)
    cpu = torch.device("cpu")

    def score():
        t0 = time.perf_counter()
        m = run_evaluation(model, vl, Evaluator(spec.info, val), cpu, progress=False)
        return round(m["voc07_map50"], 4), time.perf_counter() - t0

    load_bn_buffers(model, running_bn)
    running, eval_s = score()
    out = {"checkpoint": path, "iteration": ckpt["iteration"], "batch": batch, "val_images": len(val),
           "running": running, "eval_s": round(eval_s, 1), "precise": {}, "precise_s": {}}
    print(f"{path} iteration {ckpt['iteration']}: running statistics {running}  (evaluation {eval_s:.1f} s)",
          flush=True)
    for n in [int(x) for x in opts.get("images", "64,256,1024").split(",")]:
        scores, secs = [], []
        for seed in range(int(opts.get("seeds", 2))):
            load_bn_buffers(model, running_bn)
            t0 = time.perf_counter()
            recompute_bn_stats(model, side_batches(train_set, batch, max(1, n // batch), seed=1000 + seed), cpu)
            secs.append(time.perf_counter() - t0)
            scores.append(score()[0])
        out["precise"][n], out["precise_s"][n] = scores, round(statistics.median(secs), 1)
        print(f"  re-estimated from {n} images: {scores}  ({statistics.median(secs):.1f} s)", flush=True)
    if "json" in opts:
        Path(opts["json"]).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
