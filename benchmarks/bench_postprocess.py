"""Post-processing (``PostProcessor.select``, batch 1) on a trained checkpoint's real outputs: the
default (``dsod.inference.postprocess.selection``: Caffe's selection on a prefix of the score order) against Caffe's
selection written per class over every anchor (each class's scores stable-sorted, the first 400,
torchvision's NMS, the best 200: the reference). Every image's detections must be identical (boxes,
scores, labels, order); the times are medians over ``images`` val images x ``runs``, the two
implementations alternating image by image (as they run in `dsod val`: each call on a new image, not
one input repeated, which flatters a kernel by training the branch predictor on it).

    python benchmarks/bench_postprocess.py CKPT [onnx=FILE] [data=...] [images=24] [runs=5] [json=out.json]

``onnx=FILE``: the outputs of an exported file (e.g. ``best-int8.onnx``, whose scores tie) instead of
the eager model's. Run it with nothing else busy; one thread (as ``dsod bench`` times batch-1 latency).
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


def reference(pp, boxes, scores, h, w):
    """Caffe's DetectionOutput per class over every anchor (``dsod.inference.postprocess.reference``,
    torchvision's NMS inside), scaled to the image as ``PostProcessor.single`` does."""
    from dsod.inference.postprocess.reference import caffe_detection_output

    found = caffe_detection_output(boxes.numpy(), scores.numpy(), pp.score_thresh, pp.nms_thresh,
                                   pp.topk_candidates, pp.detections_per_img, nms="torchvision")
    scale = torch.tensor([w, h, w, h])
    b = boxes[[f[2] for f in found]] if found else boxes[:0]
    return {"boxes": torch.minimum((b * scale).clamp(min=0), scale),
            "scores": torch.tensor([f[0] for f in found], dtype=torch.float32),
            "labels": torch.tensor([f[1] for f in found], dtype=torch.int64)}


def main(argv):
    from dsod.data import DetectionDataset, eval_transform, load_dataset
    from dsod.inference.postprocess.detection_output import PostProcessor, decode_outputs
    from dsod.inference.postprocess.nms import kernel
    from dsod.model.checkpoint import build_from_checkpoint, load_checkpoint
    from dsod.runtime.hardware import cpu_summary

    path, opts = argv[0], dict(a.split("=", 1) for a in argv[1:])
    torch.set_num_threads(int(opts.get("threads", 1)))
    ckpt = load_checkpoint(path)
    model, cfg = build_from_checkpoint(ckpt)
    model.eval()
    data = opts.get("data") or ckpt["train_args"]["data"]
    records = load_dataset(data).records("val")[: int(opts.get("images", 24))]
    ds = DetectionDataset(records, eval_transform(cfg.image_size), train=False)
    runner = None
    if opts.get("onnx"):
        from dsod.inference.runners import OrtRunner
        runner = OrtRunner(opts["onnx"], threads=1)
    decoded = []
    with torch.inference_mode():
        for i in range(len(ds)):
            x = ds[i][0][None]
            if runner is not None:
                b, s = runner(x)
            else:
                out = model(x)
                b, s = decode_outputs(out.bbox_regression, out.cls_logits, model.anchors_cxcywh, cfg.anchors.variances)
            decoded.append((b[0], s[0]))
    runs = int(opts.get("runs", 5))
    report = {"checkpoint": path, "outputs_of": opts.get("onnx") or "eager fp32", "data": data,
              "images": len(decoded), "anchors": int(decoded[0][1].shape[0]), "classes": int(decoded[0][1].shape[1]),
              "cpu": cpu_summary(), "threads": torch.get_num_threads(), "nms_kernel": kernel(), "thresholds": {}}
    for thresh in (0.01, 0.25):
        pp = PostProcessor(score_thresh=thresh)
        variants = {"reference": lambda b, s: reference(pp, b, s, 480.0, 640.0),
                    "default": lambda b, s: pp.single(b, s, 480.0, 640.0)}
        differing = 0
        for b, s in decoded:
            want, got = variants["reference"](b, s), variants["default"](b, s)
            differing += not all(torch.equal(want[k], got[k]) for k in ("boxes", "scores", "labels"))
        times = {k: [] for k in variants}
        for _ in range(runs):
            for b, s in decoded:
                for k, fn in variants.items():
                    t = time.perf_counter()
                    fn(b, s)
                    times[k].append(time.perf_counter() - t)
        row = {k: round(statistics.median(v) * 1e3, 3) for k, v in times.items()}
        row.update(images_differing=differing, speedup=round(row["reference"] / row["default"], 2))
        report["thresholds"][str(thresh)] = row
        print(f"score {thresh}: reference {row['reference']:.3f} ms, default {row['default']:.3f} ms "
              f"({row['speedup']}x); {differing} of {len(decoded)} images differ", flush=True)
    if opts.get("json"):
        Path(opts["json"]).parent.mkdir(parents=True, exist_ok=True)
        Path(opts["json"]).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
