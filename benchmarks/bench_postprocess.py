"""Post-processing (``PostProcessor.select``, batch 1) on a trained checkpoint's real outputs: the
previous implementation (``torch.topk`` + torchvision's ``batched_nms``), today's with torchvision's
NMS kernel, and today's default (numpy top-k + ONNX Runtime's NMS kernel, ``dsod.nms``). Every val
image's detections are compared with the previous implementation's (as sets: ties may be ordered
differently), and the median time is taken over the first ``timed`` images.

    python benchmarks/bench_postprocess.py CKPT [data=...] [timed=10] [runs=40] [json=out.json]

Run it with nothing else busy; one thread (as ``dsod bench`` times batch-1 latency).
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


def previous_select(pp, boxes, scores, h, w):
    """The implementation before 2026-12-03 (postprocess.py at 828c1c8), the baseline."""
    from torchvision.ops import batched_nms
    k = min(pp.topk_candidates, scores.shape[0])
    top, idx = scores.topk(k, dim=0)
    keep = top > pp.score_thresh
    anchor_idx, s = idx[keep], top[keep]
    labels = torch.arange(scores.shape[1]).expand(k, -1)[keep]
    b = boxes[anchor_idx]
    keep = batched_nms(b, s, labels, pp.nms_thresh)[: pp.detections_per_img]
    scale = b.new_tensor([w, h, w, h])
    return {"boxes": torch.minimum((b[keep] * scale).clamp_(min=0), scale), "scores": s[keep], "labels": labels[keep]}


def _key(d):
    return sorted(zip([round(x, 6) for x in d["scores"].tolist()], d["labels"].tolist(),
                      [tuple(round(v, 3) for v in b) for b in d["boxes"].tolist()]))


def _median_ms(fn, runs):
    for _ in range(5):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main(argv):
    from dsod.data import DetectionDataset, eval_transform, load_dataset
    from dsod.engine.checkpoint import build_from_checkpoint, load_checkpoint
    from dsod.hardware import cpu_summary
    from dsod.nms import kernel
    from dsod.postprocess import PostProcessor, decode_outputs

    path, opts = argv[0], dict(a.split("=", 1) for a in argv[1:])
    torch.set_num_threads(int(opts.get("threads", 1)))
    ckpt = load_checkpoint(path)
    model, cfg = build_from_checkpoint(ckpt)
    model.eval()
    data = opts.get("data") or ckpt["train_args"]["data"]
    records = load_dataset(data).records("val")
    ds = DetectionDataset(records, eval_transform(cfg.image_size), train=False)
    decoded = []
    with torch.inference_mode():
        for i in range(len(ds)):
            out = model(ds[i][0][None])
            b, s = decode_outputs(out.bbox_regression, out.cls_logits, model.anchors_cxcywh, cfg.anchors.variances)
            decoded.append((b[0], s[0]))
    timed, runs = int(opts.get("timed", 10)), int(opts.get("runs", 40))
    report = {"checkpoint": path, "data": data, "images": len(decoded), "anchors": int(decoded[0][1].shape[0]),
              "classes": int(decoded[0][1].shape[1]), "cpu": cpu_summary(), "threads": torch.get_num_threads(),
              "default_kernel": kernel(), "thresholds": {}}
    for thresh in (0.01, 0.25):
        variants = {"previous": (PostProcessor(score_thresh=thresh), True),
                    "torchvision_nms": (PostProcessor(score_thresh=thresh, nms_kernel="torchvision"), False),
                    "default": (PostProcessor(score_thresh=thresh), False)}
        row = {}
        for name, (pp, old) in variants.items():
            fn = (lambda b, s, pp=pp: previous_select(pp, b, s, 480.0, 640.0)) if old else \
                 (lambda b, s, pp=pp: pp.single(b, s, 480.0, 640.0))
            differing = sum(_key(fn(b, s)) != _key(previous_select(pp, b, s, 480.0, 640.0)) for b, s in decoded)
            ms = statistics.median(_median_ms(lambda: fn(b, s), runs) for b, s in decoded[:timed])
            row[name] = {"ms": round(ms, 3), "images_differing_from_previous": differing}
        row["speedup_default_vs_previous"] = round(row["previous"]["ms"] / row["default"]["ms"], 2)
        report["thresholds"][str(thresh)] = row
        print(f"score {thresh}: " + ", ".join(f"{k} {v['ms']:.2f} ms ({v['images_differing_from_previous']} "
                                              f"of {len(decoded)} differ)" for k, v in row.items() if isinstance(v, dict))
              + f"; default {row['speedup_default_vs_previous']}x the previous", flush=True)
    if opts.get("json"):
        Path(opts["json"]).parent.mkdir(parents=True, exist_ok=True)
        Path(opts["json"]).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
