"""Evaluation speed: ``dsod.metrics.Evaluator`` (full compute: VOC07 + VOC2010+ + the 12 COCO numbers)
versus pycocotools ``COCOeval`` (COCO only) on the same synthetic set, with a check that the 12 COCO
numbers are identical.

    .venv/bin/python benchmarks/bench_eval.py                 # 5,000 images x 100 detections, 3 runs each
    .venv/bin/python benchmarks/bench_eval.py --images 500 --runs 1 --ref-runs 1   # quick look

Synthetic set: COCO128's train2017 annotations (from the shared data, see tests/conftest.py) tiled to
``--images`` images, each tile's boxes shifted by a seeded random offset; VOC/YOLO-style string image
ids, so the evaluator builds its COCO-style ground truth from the records (ids -> ints, area = w*h),
crowd flags kept. Detections (seeded): each ground truth kept with p=0.9 and jittered, some duplicated,
the rest of the ``--dets`` per image random false positives of random classes; scores uniform, rounded
to 3 decimals so that ties occur.

Timed: ours = Evaluator construction + update (batches of 32) + compute(); pycocotools = COCO index of
the ground-truth dict + loadRes of the (pre-built) results list + evaluate/accumulate/summarize. The
report gives the median wall-clock and CPU time of each and the ratios (CPU time is the steadier
figure on a shared machine).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dsod.data.records import DatasetInfo, ImageRecord  # noqa: E402
from dsod.metrics import COCO_STAT_NAMES, Evaluator  # noqa: E402

SHARED = Path(os.environ.get("DSOD_SHARED_DATA", ROOT.parent / "shared" / "data"))


def build_set(num_images: int, dets_per_image: int, seed: int):
    src = json.loads((SHARED / "coco128" / "coco_json" / "instances_train2017.json").read_text())
    cat_ids = sorted(c["id"] for c in src["categories"])
    names = {c["id"]: c["name"] for c in src["categories"]}
    label = {c: i for i, c in enumerate(cat_ids)}
    by_img = {}
    for a in src["annotations"]:
        by_img.setdefault(a["image_id"], []).append(a)
    images = src["images"]
    C = len(cat_ids)
    info = DatasetInfo(names=[names[c] for c in cat_ids], format="yolo")
    rng = np.random.default_rng(seed)
    records, image_ids, dets = [], [], []
    for i in range(num_images):
        im = images[i % len(images)]
        anns = by_img.get(im["id"], [])
        W, H = im["width"], im["height"]
        xywh = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        off = rng.uniform(-5, 5, 2)
        x1 = np.clip(xywh[:, 0] + off[0], 0, W)
        y1 = np.clip(xywh[:, 1] + off[1], 0, H)
        boxes = np.stack([x1, y1, np.clip(x1 + xywh[:, 2], 0, W), np.clip(y1 + xywh[:, 3], 0, H)], 1).astype(np.float32)
        labels = np.array([label[a["category_id"]] for a in anns], np.int64)
        crowd = np.array([bool(a["iscrowd"]) for a in anns], bool)
        image_id = f"img_{i:06d}"
        records.append(ImageRecord(image_id, Path(f"{image_id}.jpg"), W, H, boxes, labels, np.zeros(len(anns), bool), crowd))

        g = boxes.astype(np.float64)
        keep = rng.random(len(g)) < 0.9
        dup = keep & (rng.random(len(g)) < 0.1)
        src_idx = np.concatenate([np.flatnonzero(keep), np.flatnonzero(dup)])[:dets_per_image]
        gb = g[src_idx]
        wh = np.stack([gb[:, 2] - gb[:, 0], gb[:, 3] - gb[:, 1]], 1)
        jit = rng.normal(0, 0.08, (len(gb), 4)) * np.concatenate([wh, wh], 1)
        tb = gb + jit
        nf = dets_per_image - len(gb)
        fx = rng.uniform(0, W, nf)
        fy = rng.uniform(0, H, nf)
        fb = np.stack([fx, fy, fx + rng.uniform(2, 200, nf), fy + rng.uniform(2, 200, nf)], 1)
        b = np.concatenate([tb, fb])
        b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, W)
        b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, H)
        lab = np.concatenate([labels[src_idx], rng.integers(0, C, nf)])
        score = np.round(rng.random(len(b)), 3)
        image_ids.append(image_id)
        dets.append({"boxes": b.astype(np.float32), "scores": score.astype(np.float32), "labels": lab})
    return info, records, image_ids, dets


def pycocotools_inputs(info, records, image_ids, dets):
    """The same ground truth and detections as plain COCO dicts, built independently of dsod.metrics:
    image ids 1..N in sorted id order, category id = class index, xywh = (x1, y1, x2 - x1, y2 - y1)."""
    order = sorted(range(len(records)), key=lambda i: records[i].image_id)
    int_id = {records[i].image_id: k + 1 for k, i in enumerate(order)}
    gt_images, anns = [], []
    for r in records:
        gt_images.append({"id": int_id[r.image_id], "width": r.width, "height": r.height})
        for b, lab, cr in zip(r.boxes.astype(np.float64).tolist(), r.labels.tolist(), r.iscrowd.tolist()):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": int_id[r.image_id], "category_id": lab,
                         "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": int(cr)})
    gt = {"images": gt_images, "annotations": anns,
          "categories": [{"id": i, "name": n} for i, n in enumerate(info.names)]}

    def results():
        out = []
        for image_id, d in zip(image_ids, dets):
            b = d["boxes"].astype(np.float64).tolist()
            for bb, s, lab in zip(b, d["scores"].astype(np.float64).tolist(), d["labels"].tolist()):
                out.append({"image_id": int_id[image_id], "category_id": lab,
                            "bbox": [bb[0], bb[1], bb[2] - bb[0], bb[3] - bb[1]], "score": s})
        return out
    return gt, results


def run_ours(info, records, image_ids, dets, backend="auto"):
    t, c = time.perf_counter(), time.process_time()
    ev = Evaluator(info, records, coco_backend=backend)
    for k in range(0, len(image_ids), 32):
        ev.update(image_ids[k:k + 32], dets[k:k + 32])
    res = ev.compute()
    return time.perf_counter() - t, time.process_time() - c, res


def run_pycocotools(gt, results):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        t, c = time.perf_counter(), time.process_time()
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        dt, dc = time.perf_counter() - t, time.process_time() - c
    return dt, dc, dict(zip(COCO_STAT_NAMES, (float(v) for v in ev.stats[:12])))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--dets", type=int, default=100, help="detections per image")
    ap.add_argument("--runs", type=int, default=3, help="timed runs of ours")
    ap.add_argument("--ref-runs", type=int, default=3, help="timed runs of pycocotools")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    t = time.perf_counter()
    info, records, image_ids, dets = build_set(a.images, a.dets, a.seed)
    gt, results = pycocotools_inputs(info, records, image_ids, dets)
    n_gt = sum(len(r.labels) for r in records)
    print(f"synthetic set: {len(records)} images, {n_gt} ground truths ({sum(int(r.iscrowd.sum()) for r in records)} "
          f"crowd), {sum(len(d['scores']) for d in dets)} detections, {len(info.names)} classes "
          f"(built in {time.perf_counter() - t:.1f} s)")

    ours_t, ours_c, ours = [], [], None
    for _ in range(a.runs):
        dt, dc, ours = run_ours(info, records, image_ids, dets)
        ours_t.append(dt)
        ours_c.append(dc)
        print(f"  ours ({ours['settings']['coco_backend']}, VOC + COCO): {dt:.2f} s wall, {dc:.2f} s CPU", flush=True)
    ref_t, ref_c, ref = [], [], None
    for _ in range(a.ref_runs):
        res = results()  # loadRes modifies its input: a fresh list per run, built outside the timer
        dt, dc, ref = run_pycocotools(gt, res)
        ref_t.append(dt)
        ref_c.append(dc)
        print(f"  pycocotools COCOeval (COCO only): {dt:.2f} s wall, {dc:.2f} s CPU", flush=True)

    diff = max(abs(ours["coco"][k] - ref[k]) for k in COCO_STAT_NAMES)
    print("\nCOCO numbers (ours | pycocotools):")
    for k in COCO_STAT_NAMES:
        print(f"  {k:<6} {ours['coco'][k]:.6f} | {ref[k]:.6f}")
    print(f"max |difference| over the 12 numbers: {diff:.2e} ({'identical to 1e-6' if diff <= 1e-6 else 'MISMATCH'})")
    print(f"VOC: mAP50 11-point (VOC2007) {ours['voc07_map50']:.4f}, all-point (VOC2010+) "
          f"{ours['voc_area_map50']:.4f}\n")
    for what, o, r in (("wall", ours_t, ref_t), ("CPU", ours_c, ref_c)):
        mo, mr = statistics.median(o), statistics.median(r)
        print(f"median {what} time: ours {mo:.2f} s (VOC + COCO), pycocotools {mr:.2f} s (COCO only): "
              f"{mr / mo:.1f}x faster")
    return 0 if diff <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
