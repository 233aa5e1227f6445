"""COCO metrics: the 12 numbers equal pycocotools' COCOeval run directly on COCO128's JSON (crowd
regions, non-contiguous category ids, score ties, >100 detections in an image, images without
detections), with both backends, from the annotation file or from records."""
import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from dsod.data.records import DatasetInfo, ImageRecord
from dsod.metrics import COCO_STAT_NAMES, Evaluator


def coco128_json(shared_data: Path) -> Path:
    return shared_data / "coco128" / "coco_json" / "instances_train2017.json"


def records_from_coco_json(path: Path):
    """A tiny local reader (independent of dsod.data's readers): COCO JSON -> DatasetInfo + records."""
    d = json.loads(path.read_text())
    cats = sorted(c["id"] for c in d["categories"])
    names = {c["id"]: c["name"] for c in d["categories"]}
    label = {c: i for i, c in enumerate(cats)}
    by_img = {}
    for a in d["annotations"]:
        by_img.setdefault(a["image_id"], []).append(a)
    records = []
    for im in d["images"]:
        anns = by_img.get(im["id"], [])
        b = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                      for a in anns], np.float32).reshape(-1, 4)
        records.append(ImageRecord(im["id"], Path(im["file_name"]), im["width"], im["height"], b,
                                   np.array([label[a["category_id"]] for a in anns], np.int64),
                                   np.zeros(len(anns), bool), np.array([bool(a["iscrowd"]) for a in anns], bool)))
    info = DatasetInfo(names=[names[c] for c in cats], format="coco", category_ids=cats)
    return d, info, records


def generate_detections(d, info, seed=0):
    """Per image: ground truths (crowd ones too) kept with p=0.85, jittered, some duplicated; random
    false positives; one image with 150 detections; 5 images without detections; scores rounded to
    2 decimals (ties across and within images)."""
    rng = np.random.default_rng(seed)
    label = {c: i for i, c in enumerate(info.category_ids)}
    by_img = {}
    for a in d["annotations"]:
        by_img.setdefault(a["image_id"], []).append(a)
    image_ids, dets = [], []
    for n, im in enumerate(d["images"]):
        if n % 25 == 3:
            continue  # no detections for this image
        anns = by_img.get(im["id"], [])
        boxes, labels = [], []
        for a in anns:
            if rng.random() < 0.15:
                continue
            x, y, w, h = a["bbox"]
            for _ in range(1 + int(rng.random() < 0.2)):
                j = rng.normal(0, 0.1, 4)
                boxes.append([x + j[0] * w, y + j[1] * h, x + w + j[2] * w, y + h + j[3] * h])
                labels.append(label[a["category_id"]] if rng.random() > 0.05 else int(rng.integers(80)))
        nf = 150 if n == 10 else int(rng.integers(0, 8))
        for _ in range(nf):
            x, y = rng.uniform(0, im["width"]), rng.uniform(0, im["height"])
            boxes.append([x, y, x + rng.uniform(1, 250), y + rng.uniform(1, 250)])
            labels.append(int(rng.integers(80)) if n != 10 else 0)
        scores = np.round(rng.random(len(boxes)), 2)
        image_ids.append(im["id"])
        dets.append({"boxes": np.array(boxes, np.float64).reshape(-1, 4), "scores": scores,
                     "labels": np.array(labels, np.int64)})
    return image_ids, dets


def results_list(info, image_ids, dets):
    out = []
    for image_id, det in zip(image_ids, dets):
        for b, s, lab in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
            out.append({"image_id": image_id, "category_id": info.category_ids[lab],
                        "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": s})
    return out


def pycocotools_eval(gt_dataset, results):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(gt_dataset)
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@pytest.fixture(scope="module")
def coco128(shared_data):
    path = coco128_json(shared_data)
    d, info, records = records_from_coco_json(path)
    image_ids, dets = generate_detections(d, info)
    ref = pycocotools_eval(d, results_list(info, image_ids, dets))
    return path, d, info, records, image_ids, dets, ref


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_parity_with_pycocotools_on_coco128_json(coco128, backend):
    path, d, info, records, image_ids, dets, ref = coco128
    ev = Evaluator(info, records, coco_gt=path, coco_backend=backend)
    ev.update(image_ids, dets)
    r = ev.compute()
    assert r["settings"]["coco_backend"] == backend
    assert list(r["coco"]) == list(COCO_STAT_NAMES)
    for k, v in zip(COCO_STAT_NAMES, ref.stats[:12]):
        assert r["coco"][k] == pytest.approx(float(v), abs=1e-6), k
    # The set really exercises the numbers: nothing trivially 0, 1 or -1.
    assert all(0.05 < r["coco"][k] < 0.95 for k in COCO_STAT_NAMES)
    # Per-class AP (label -> category id mapping): pycocotools' precision array, area all, maxDets 100.
    prec = ref.eval["precision"][:, :, :, 0, -1]
    for label in (0, 2, 39, 79):
        k = ref.params.catIds.index(info.category_ids[label])
        p = prec[:, :, k]
        assert r["per_class"][info.names[label]]["coco_ap"] == pytest.approx(float(p[p > -1].mean()), abs=1e-9)


def test_records_ground_truth(coco128):
    """Without the annotation file, the COCO ground truth comes from the records (float32 boxes,
    area = box w*h, crowd flags). The area-independent numbers equal pycocotools on the original JSON;
    all 12 equal pycocotools on the JSON with box areas."""
    path, d, info, records, image_ids, dets, ref = coco128
    ev = Evaluator(info, records)
    ev.update(image_ids, dets)
    r = ev.compute()
    assert r["settings"]["coco_ground_truth"] == "records"
    for k in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100"):
        assert r["coco"][k] == pytest.approx(float(ref.stats[COCO_STAT_NAMES.index(k)]), abs=1e-6), k
    box_area = copy.deepcopy(d)
    for a in box_area["annotations"]:
        a["area"] = a["bbox"][2] * a["bbox"][3]
    ref2 = pycocotools_eval(box_area, results_list(info, image_ids, dets))
    for k, v in zip(COCO_STAT_NAMES, ref2.stats[:12]):
        assert r["coco"][k] == pytest.approx(float(v), abs=1e-6), k
    # The segmentation areas do change the size split (why coco_gt= exists).
    assert any(abs(r["coco"][k] - float(ref.stats[COCO_STAT_NAMES.index(k)])) > 1e-4 for k in ("APs", "APm", "APl"))


def test_voc_style_dataset_string_ids_and_difficult(coco128):
    """VOC/YOLO-style records (string ids, category id = class index, difficult flags) -> COCO-style GT
    in memory: equal to pycocotools on an equivalent hand-built GT where difficult boxes are crowd."""
    rng = np.random.default_rng(1)
    names = ["a", "b"]
    records, image_ids, dets = [], [], []
    for n in range(30):
        g = np.sort(rng.uniform(0, 300, (5, 2, 2)), axis=1).reshape(5, 4)[:, [0, 2, 1, 3]].astype(np.float32)
        lab = rng.integers(0, 2, 5)
        dif = rng.random(5) < 0.2
        sid = f"img{n:03d}"
        records.append(ImageRecord(sid, Path(sid + ".jpg"), 320, 320, g, lab, dif, np.zeros(5, bool)))
        b = g.astype(np.float64) + rng.normal(0, 4, (5, 4))
        b = np.concatenate([np.minimum(b[:, :2], b[:, 2:]), np.maximum(b[:, :2], b[:, 2:])], 1)
        image_ids.append(sid)
        dets.append({"boxes": b, "scores": np.round(rng.random(5), 2), "labels": lab})
    info = DatasetInfo(names=names, format="voc")
    ev = Evaluator(info, records)
    ev.update(image_ids, dets)
    r = ev.compute()

    ids = {sid: k + 1 for k, sid in enumerate(sorted(image_ids))}
    anns, res = [], []
    for rcd, det in zip(records, dets):
        for b, lab, dif in zip(rcd.boxes.astype(np.float64).tolist(), rcd.labels.tolist(), rcd.difficult.tolist()):
            anns.append({"id": len(anns) + 1, "image_id": ids[rcd.image_id], "category_id": lab,
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1]),
                         "iscrowd": int(dif)})
        for b, s, lab in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
            res.append({"image_id": ids[rcd.image_id], "category_id": lab,
                        "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": s})
    gt = {"images": [{"id": i, "width": 320, "height": 320} for i in ids.values()], "annotations": anns,
          "categories": [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}]}
    ref = pycocotools_eval(gt, res)
    for k, v in zip(COCO_STAT_NAMES, ref.stats[:12]):
        assert r["coco"][k] == pytest.approx(float(v), abs=1e-6), k


def test_perfect_and_empty_by_hand():
    info = DatasetInfo(names=["x", "y"], format="coco", category_ids=[3, 7])
    records = [ImageRecord(5, Path("5.jpg"), 100, 100, np.array([[10, 10, 60, 60]], np.float32),
                           np.array([1]), np.zeros(1, bool), np.zeros(1, bool))]
    ev = Evaluator(info, records)
    ev.update([5], [{"boxes": np.array([[10, 10, 60, 60]]), "scores": np.array([0.9]), "labels": np.array([1])}])
    c = ev.compute()["coco"]
    # One medium (2500 px) object found exactly: AP/AR 1; no small or large objects: -1 (pycocotools).
    assert (c["AP"], c["AP50"], c["AP75"], c["APm"], c["AR1"], c["AR100"], c["ARm"]) == (1, 1, 1, 1, 1, 1, 1)
    assert (c["APs"], c["APl"], c["ARs"], c["ARl"]) == (-1, -1, -1, -1)
    ev.reset()
    c = ev.compute()
    assert c["coco"]["AP"] == 0 and c["coco"]["AR100"] == 0 and c["num_detections"] == 0
    assert np.isnan(c["per_class"]["x"]["coco_ap"]) and c["per_class"]["y"]["coco_ap"] == 0
