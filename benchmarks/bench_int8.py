"""int8 (ONNX Runtime static quantisation) versus fp32: speed and VOC07 mAP on a dataset's val split.

    .venv/bin/python benchmarks/bench_int8.py runs/train/weights/best.pt --data ../shared/data/bccd

Exports the checkpoint with ``dsod export`` (fp32 fused graph, and int8 calibrated on ``--calib-n``
train images), then on the ``val`` split: VOC07 11-point mAP@0.5 of eager fp32 PyTorch, ONNX Runtime
fp32 and ONNX Runtime int8 (same post-processing: ``PostProcessor`` at score 0.01, NMS 0.45, 200 per
image, boxes in original pixels), and batch-1 latency of each (plus the fused eager fast path), all
timed interleaved in one process after warm-up, medians of ``--runs``: use the ratios.

``--profile`` adds ONNX Runtime's own per-node profile (medians over ``--runs``) of the fp32 and int8
models: time per operator type and per part of the network (stem, each dense layer, transitions,
neck, heads), the int8/fp32 ratio of each, to see where int8 gains or loses on this CPU.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dsod.data import eval_loader  # noqa: E402
from dsod.data.spec import load_dataset  # noqa: E402
from dsod.export import export_onnx, quantize_int8, weight_bits  # noqa: E402
from dsod.inference.postprocess.detection_output import PostProcessor  # noqa: E402
from dsod.inference.runners import OrtRunner, TorchRunner, detector  # noqa: E402
from dsod.inference.sessions import preprocess_rgb, read_rgb  # noqa: E402
from dsod.metrics import Evaluator  # noqa: E402
from dsod.metrics.loop import evaluate  # noqa: E402
from dsod.model.checkpoint import build_from_checkpoint, load_checkpoint  # noqa: E402
from dsod.model.fast import fuse_for_inference  # noqa: E402


def ort_profile(path: Path, x: np.ndarray, runs: int, threads: int) -> dict:
    """Median kernel time (ms) of each node over ``runs`` profiled runs, summed per operator type and
    per network part (from the node names the exporter gives, e.g. /model/backbone/blocks.0/layers.3)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.enable_profiling = True
    opts.profile_file_prefix = str(path.with_suffix(""))
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        sess.run(None, {"images": x})
    trace = sess.end_profiling()
    per_node = collections.defaultdict(list)
    for e in json.loads(Path(trace).read_text()):
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_node[(e["name"][:-len("_kernel_time")], e["args"]["op_name"])].append(e["dur"] / 1e3)
    os.remove(trace)
    part = re.compile(r"/model/(backbone/(stem|blocks\.\d+|transitions\.\d+)|neck|head)")
    ops, parts = collections.Counter(), collections.Counter()
    for (name, op), durs in per_node.items():
        t = statistics.median(durs)
        ops[op] += t
        m = part.match(name)
        parts[m.group(1) if m else "other (reorders, casts, post-processing)"] += t
    return {"total_ms": sum(ops.values()), "ops_ms": dict(ops), "parts_ms": dict(parts)}


def print_profiles(fp32: dict, int8: dict) -> None:
    print(f"ONNX Runtime profile, ms per image: fp32 {fp32['total_ms']:.1f}, int8 {int8['total_ms']:.1f}")
    for key, title in (("ops_ms", "operator"), ("parts_ms", "network part")):
        print(f"  {title:42s} {'fp32':>7s} {'int8':>7s}  int8/fp32")
        names = sorted(set(fp32[key]) | set(int8[key]), key=lambda k: -max(fp32[key].get(k, 0), int8[key].get(k, 0)))
        for k in names[:16]:
            a, b = fp32[key].get(k, 0.0), int8[key].get(k, 0.0)
            print(f"  {k:42s} {a:7.2f} {b:7.2f}  {b / a if a else float('nan'):6.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "bccd"))
    ap.add_argument("--calib-n", type=int, default=64)
    ap.add_argument("--calib-method", default="minmax")
    ap.add_argument("--no-reduce-range", action="store_true", help="8-bit weights (see quantize_int8)")
    ap.add_argument("--weight-bits", default="auto", choices=["auto", "7", "8"],
                    help="int8 weight width (auto: from the CPU, as dsod export: 8 with VNNI/AMX, 7 without)")
    ap.add_argument("--keep-fp32", default="", help="comma-separated node-name parts left in float, e.g. /stem/")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--profile", action="store_true", help="ONNX Runtime per-operator / per-part profile")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    threads = torch.get_num_threads()

    ckpt = load_checkpoint(a.checkpoint)
    model, cfg = build_from_checkpoint(ckpt)
    spec = load_dataset(a.data)
    val = spec.records("val")
    train = spec.records("train")
    size = cfg.image_size
    rng = np.random.default_rng(0)
    calib_recs = [train[i] for i in sorted(rng.choice(len(train), min(a.calib_n, len(train)), replace=False))]
    calib = np.stack([preprocess_rgb(read_rgb(r.path), size) for r in calib_recs])

    td = Path(tempfile.mkdtemp(prefix="dsod-int8-"))
    fp32_path, int8_path = td / "model.onnx", td / "model-int8.onnx"
    export_onnx(fuse_for_inference(model, channels_last=False, mkldnn_fusion=False), fp32_path, size)
    t0 = time.perf_counter()
    bits = 8 if a.no_reduce_range else (weight_bits() if a.weight_bits == "auto" else int(a.weight_bits))
    quantize_int8(fp32_path, int8_path, calib, method=a.calib_method, reduce_range=bits == 7,
                  keep_fp32=[k for k in a.keep_fp32.split(",") if k])
    quant_s = time.perf_counter() - t0
    ort32, ort8 = OrtRunner(fp32_path, threads=threads), OrtRunner(int8_path, threads=threads)
    fused = fuse_for_inference(model)

    post = PostProcessor(variances=cfg.anchors.variances)
    # the one evaluation loop (dsod.metrics.loop) over each runner: what dsod val measures
    maps = {k: float(evaluate(detector(r, post), eval_loader(val, size, batch=1),
                              Evaluator(spec.info, val, coco=False), progress=False)["voc07_map50"])
            for k, r in (("eager_fp32", TorchRunner(model)), ("onnxruntime_fp32", ort32), ("onnxruntime_int8", ort8))}

    x1 = torch.from_numpy(calib[:1].copy())
    # post-processing on this trained model's decoded outputs (a real image), at dsod val's score
    # threshold (0.01) and dsod predict's (0.25), on the outputs of the int8 network that backend=auto
    # serves: it should stay <= 10% of the fastest batch-1 latency
    b1, s1 = (torch.from_numpy(v) for v in ort8.session.predict(x1.numpy()))
    post_pred = PostProcessor(score_thresh=0.25)
    runners = {"eager_fp32": lambda: model(x1), "fused_fp32": lambda: fused(x1),
               "onnxruntime_fp32": lambda: ort32.session.predict(x1.numpy()),
               "onnxruntime_int8": lambda: ort8.session.predict(x1.numpy()),
               "postprocess_conf0.01": lambda: post.select(b1, s1, [(480, 640)]),
               "postprocess_conf0.25": lambda: post_pred.select(b1, s1, [(480, 640)])}
    times = {k: [] for k in runners}
    with torch.inference_mode():
        for _ in range(2):
            for f in runners.values():
                f()
        for _ in range(a.runs):
            for k, f in runners.items():
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
    lat = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    report = {"checkpoint": str(a.checkpoint), "model": cfg.name, "image_size": size, "threads": threads,
              "val_images": len(val), "calibration_images": len(calib), "calib_method": a.calib_method,
              "weight_bits": bits, "keep_fp32": a.keep_fp32,
              "quantize_s": quant_s, "voc07_map50": maps, "latency_ms_b1": lat,
              "speedup_vs_eager_fp32": {k: lat["eager_fp32"] / v for k, v in lat.items()},
              "map_change_int8_vs_eager_points": 100 * (maps["onnxruntime_int8"] - maps["eager_fp32"]),
              "postprocess_share_of_int8": {c: lat[f"postprocess_conf{c}"] / lat["onnxruntime_int8"]
                                            for c in ("0.01", "0.25")}}
    if a.profile:
        prof = {k: ort_profile(p, calib[:1], a.runs, threads) for k, p in (("fp32", fp32_path), ("int8", int8_path))}
        report["ort_profile"] = prof
    print(json.dumps(report, indent=2))
    if a.profile:
        print_profiles(prof["fp32"], prof["int8"])
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
