"""The Evaluator's interface: PostProcessor output in, metrics.json / table / plots out, the
confusion matrix, COCO-results detection files (write, read, score, bad entries) and input checks."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import devkit_reference

from dsod.data.records import DatasetInfo, ImageRecord
from dsod.inference.postprocess.detection_output import PostProcessor
from dsod.metrics import (
    COCO_STAT_NAMES,
    DetectionsFileError,
    Evaluator,
    read_detections_json,
    score_detections_file,
    write_detections_json,
)


def rec(image_id, boxes=(), labels=(), difficult=None, w=640, h=480):
    b = np.array(boxes, np.float32).reshape(-1, 4)
    return ImageRecord(image_id, Path(f"{image_id}.jpg"), w, h, b, np.array(labels, np.int64).reshape(-1),
                       np.zeros(len(b), bool) if difficult is None else np.array(difficult, bool), np.zeros(len(b), bool))


def det(boxes=(), scores=(), labels=()):
    return {"boxes": np.array(boxes, np.float64).reshape(-1, 4), "scores": np.array(scores, np.float64),
            "labels": np.array(labels, np.int64)}


def small_set(seed=0, n=12):
    """Two VOC-style classes, string ids; detections jittered from the ground truth plus noise."""
    rng = np.random.default_rng(seed)
    info = DatasetInfo(names=["cell", "blob"], format="voc")
    records, ids, dets = [], [], []
    for k in range(n):
        xy = rng.uniform(0, 500, (4, 2))
        g = np.concatenate([xy, xy + rng.uniform(20, 120, (4, 2))], 1)
        lab = rng.integers(0, 2, 4)
        records.append(rec(f"im{k:02d}", g, lab))
        b = np.concatenate([g + rng.normal(0, 6, (4, 4)), [[600, 400, 630, 470]]])
        ids.append(f"im{k:02d}")
        dets.append(det(b, np.round(rng.random(5), 3), np.concatenate([lab, [k % 2]])))
    return info, records, ids, dets


# ----------------------------------------------------------------------------- PostProcessor in
def test_postprocessor_output_is_scored():
    """Real PostProcessor dicts (torch tensors, pixel boxes, 0-based labels) go straight into update."""
    torch.manual_seed(0)
    A, C = 300, 3
    anchors = torch.cat([torch.rand(A, 2) * 0.8 + 0.1, torch.rand(A, 2) * 0.3 + 0.05], 1)
    pp = PostProcessor(score_thresh=0.2)
    out = pp(torch.randn(2, A, 4) * 0.1, torch.randn(2, A, C + 1) * 3, anchors, image_sizes=[(480, 640), (300, 200)])
    info = DatasetInfo(names=["a", "b", "c"], format="yolo")
    # Ground truth = a few of the detections themselves, so matches exist.
    records = [rec(f"img{i}", out[i]["boxes"][:3].numpy(), out[i]["labels"][:3].numpy(), w=w, h=h)
               for i, (h, w) in enumerate([(480, 640), (300, 200)])]
    ev = Evaluator(info, records)
    ev.update(["img0", "img1"], out)
    r = ev.compute()
    assert r["num_detections"] == sum(len(o["scores"]) for o in out) > 6
    assert r["num_gt"] == 6
    # the devkit's loop on the same boxes (tie order: image id, then rank in the image) gives the value
    flat = [(f"img{i}", o["boxes"][k].double().numpy(), float(o["scores"][k]), int(o["labels"][k]))
            for i, o in enumerate(out) for k in range(len(o["scores"]))]
    gts = {r.image_id: (r.boxes, r.labels, r.difficult) for r in records}
    aps = [devkit_reference(gts, flat, c, False) for c in range(3)]
    aps = [a for a in aps if not math.isnan(a[0])]
    assert r["voc07_map50"] == pytest.approx(np.mean([a[0] for a in aps]), abs=1e-6)
    assert r["voc_area_map50"] == pytest.approx(np.mean([a[1] for a in aps]), abs=1e-6)
    assert 0.3 < r["voc_area_map50"] < 1  # a real case: found ground truth and false positives above it


# ----------------------------------------------------------------------------- outputs
def test_write_json_keys_and_atomic(tmp_path):
    info, records, ids, dets = small_set()
    ev = Evaluator(info, records + [rec("zz_empty")], coco=True)
    ev.update(ids, dets)
    out = tmp_path / "run" / "metrics.json"
    out.parent.mkdir()
    out.write_text("old")
    ev.write_json(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["metrics.json"]  # tmp file replaced into place
    m = json.loads(out.read_text())
    for key in ("voc07_map50", "voc_area_map50", "coco", "per_class", "num_images", "num_detections"):
        assert key in m
    assert list(m["coco"]) == list(COCO_STAT_NAMES)
    assert set(m["per_class"]) == {"cell", "blob"}
    for v in m["per_class"].values():
        assert {"voc07_ap50", "voc_area_ap50", "coco_ap", "num_gt"} <= set(v)
    assert m["num_images"] == 13 and m["num_detections"] == 60
    assert m["voc07_map50"] == pytest.approx(ev.compute()["voc07_map50"])


def test_nan_is_null_in_json_and_dash_in_table(tmp_path):
    info = DatasetInfo(names=["a", "never"], format="voc")
    ev = Evaluator(info, [rec("x", [[0, 0, 10, 10]], [0])])
    ev.update(["x"], [det([[0, 0, 10, 10]], [0.5], [0])])
    m = json.loads(ev.write_json(tmp_path / "m.json").read_text())
    assert m["per_class"]["never"]["voc07_ap50"] is None and m["per_class"]["never"]["num_gt"] == 0
    assert m["per_class"]["a"]["voc07_ap50"] == 1.0
    table = ev.format_table()
    never = [line for line in table.splitlines() if line.startswith("never")][0]
    assert never.split()[-3:] == ["-", "-", "-"]


def test_format_table_names_the_ap_modes():
    info, records, ids, dets = small_set()
    ev = Evaluator(info, records)
    ev.update(ids, dets)
    t = ev.format_table()
    for s in ("VOC2007 11-point", "VOC2010+ all-point", "COCO AP@[.50:.95]", "AP50-07", "AP50-area", "AP-COCO",
              "cell", "blob", "mean", "AR100"):
        assert s in t
    r = ev.compute()
    mean_line = [line for line in t.splitlines() if line.startswith("mean")][0]
    assert f"{r['voc07_map50']:.4f}" in mean_line and f"{r['voc_area_map50']:.4f}" in mean_line
    t2 = Evaluator(info, records, coco=False)
    t2.update(ids, dets)
    assert "AP-COCO" not in t2.format_table() and "VOC2010+ all-point" in t2.format_table()


def test_plots_written(tmp_path):
    info, records, ids, dets = small_set()
    ev = Evaluator(info, records, coco=False)
    ev.update(ids, dets)
    paths = ev.plot(tmp_path / "plots")
    names = sorted(p.relative_to(tmp_path / "plots").as_posix() for p in paths)
    assert names == ["confusion_matrix.png", "pr_curves.png", "pr_curves/000_cell.png", "pr_curves/001_blob.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_confusion_matrix_by_hand():
    info = DatasetInfo(names=["a", "b"], format="voc")
    records = [rec("m1", [[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], [0, 1, 0], difficult=[0, 0, 1]),
               rec("m2", [[0, 0, 10, 10]], [1])]
    ev = Evaluator(info, records, coco=False)
    ev.update(["m1", "m2"], [det([[0, 0, 10, 10],  # a on a: correct
                                  [20, 20, 30, 30],  # a on b: confusion
                                  [100, 100, 110, 110],  # b on nothing: false positive (background column)
                                  [0, 0, 10, 10],  # below the score threshold: not counted
                                  [50, 50, 60, 60]],  # on a difficult box: not counted
                                 [0.9, 0.8, 0.7, 0.1, 0.6], [0, 0, 1, 0, 1]),
                             det()])  # m2's b is missed (background row)
    m = ev.confusion_matrix()  # rows predicted a, b, background; columns true a, b, background
    assert m.tolist() == [[1, 1, 0], [0, 0, 1], [0, 1, 0]]
    assert ev.confusion_matrix(conf_thresh=0.05).tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 0]]


# ----------------------------------------------------------------------------- detection files
def test_detections_file_roundtrip_voc_ids(tmp_path):
    info, records, ids, dets = small_set()
    path = write_detections_json(tmp_path / "dets.json", info, ids, dets)
    entries = json.loads(path.read_text())
    assert len(entries) == 60 and entries[0]["image_id"] == "im00" and entries[0]["category_id"] in (0, 1)
    assert set(entries[0]) == {"image_id", "category_id", "bbox", "score"}
    direct = Evaluator(info, records)
    direct.update(ids, dets)
    scored = score_detections_file(info, records, path)
    a, b = direct.compute(), scored
    assert b["num_detections"] == 60 and b["num_skipped"] == 0
    assert b["voc07_map50"] == pytest.approx(a["voc07_map50"], abs=1e-12)
    assert b["voc_area_map50"] == pytest.approx(a["voc_area_map50"], abs=1e-12)
    for k in COCO_STAT_NAMES:
        assert b["coco"][k] == pytest.approx(a["coco"][k], abs=1e-12)
    # The result also offers the evaluator's outputs (what `dsod val detections=` prints and writes).
    assert "AP50-area" in scored.format_table()
    assert json.loads(scored.write_json(tmp_path / "m.json").read_text())["detections_file"] == str(path)


def test_detections_file_coco_ids(tmp_path):
    info = DatasetInfo(names=["person", "car"], format="coco", category_ids=[1, 3])
    records = [rec(42, [[0, 0, 10, 10]], [1]), rec(7, [[5, 5, 50, 50]], [0])]
    path = write_detections_json(tmp_path / "d.json", info, [np.int64(42), 7],
                                 [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "scores": torch.tensor([0.8]),
                                   "labels": torch.tensor([1])}, det([[5, 5, 50, 50]], [0.7], [0])])
    entries = json.loads(path.read_text())
    assert [(e["image_id"], e["category_id"]) for e in entries] == [(42, 3), (7, 1)]
    assert entries[0]["bbox"] == [0.0, 0.0, 10.0, 10.0]
    r = score_detections_file(info, records, path)
    assert r["voc_area_map50"] == 1.0 and r["coco"]["AP"] == 1.0


@pytest.mark.parametrize("entry, message", [
    ({"image_id": "nope", "category_id": 0, "bbox": [0, 0, 1, 1], "score": 0.5}, "entry 1: unknown image_id \"nope\""),
    ({"image_id": "im00", "category_id": 5, "bbox": [0, 0, 1, 1], "score": 0.5}, "entry 1: unknown category_id 5"),
    ({"image_id": "im00", "category_id": 0, "bbox": [0, 0, 1], "score": 0.5}, "entry 1: malformed bbox"),
    ({"image_id": "im00", "category_id": 0, "bbox": [0, 0, -1, 1], "score": 0.5}, "entry 1: malformed bbox"),
    ({"image_id": "im00", "category_id": 0, "bbox": [0, "x", 1, 1], "score": 0.5}, "entry 1: malformed bbox"),
    ({"image_id": "im00", "category_id": 0, "bbox": [0, 0, 1, 1]}, "entry 1: malformed score"),
    ({"image_id": "im00", "category_id": True, "bbox": [0, 0, 1, 1], "score": 1}, "entry 1: unknown category_id"),
    ([1, 2, 3], "entry 1: not an object"),
])
def test_bad_entries_one_line_error_or_counted_skip(tmp_path, entry, message):
    info, records, _, _ = small_set()
    good = {"image_id": "im01", "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([good, entry, good]))
    with pytest.raises(DetectionsFileError) as e:
        score_detections_file(info, records, path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ") and message in msg
    r = score_detections_file(info, records, path, strict=False)
    assert r["num_skipped"] == 1 and r["num_detections"] == 2 and message in r["skipped"][0]


def test_bad_files(tmp_path):
    info, records, _, _ = small_set()
    for text, message in [("[{", "not valid JSON"), ('{"a": 1}', "expected a JSON list")]:
        p = tmp_path / "f.json"
        p.write_text(text)
        with pytest.raises(DetectionsFileError, match=message):
            read_detections_json(p, info, records)
    with pytest.raises(DetectionsFileError, match="no such file"):
        read_detections_json(tmp_path / "missing.json", info, records)
    p = tmp_path / "empty.json"
    p.write_text("[]")
    r = score_detections_file(info, records, p, coco=False)
    assert r["num_detections"] == 0 and r["voc_area_map50"] == 0.0


def test_numeric_ids_are_matched_leniently(tmp_path):
    info = DatasetInfo(names=["a"], format="yolo")
    records = [rec("12", [[0, 0, 10, 10]], [0])]
    p = tmp_path / "d.json"
    p.write_text(json.dumps([{"image_id": 12, "category_id": 0.0, "bbox": [0, 0, 10, 10], "score": 1}]))
    assert score_detections_file(info, records, p, coco=False)["voc07_map50"] == 1.0


# ----------------------------------------------------------------------------- input checks
def test_update_errors():
    info, records, ids, dets = small_set()
    ev = Evaluator(info, records, coco=False)
    with pytest.raises(ValueError, match="unknown image id 'nope'"):
        ev.update(["nope"], [det()])
    with pytest.raises(ValueError, match="label outside 0..1"):
        ev.update(["im00"], [det([[0, 0, 1, 1]], [0.5], [2])])
    with pytest.raises(ValueError, match="1 boxes, 2 scores"):
        ev.update(["im00"], [det([[0, 0, 1, 1]], [0.5, 0.4], [0])])
    with pytest.raises(ValueError, match="non-finite"):
        ev.update(["im00"], [det([[0, 0, math.nan, 1]], [0.5], [0])])
    with pytest.raises(ValueError, match="x2 >= x1"):
        ev.update(["im00"], [det([[5, 0, 1, 1]], [0.5], [0])])
    with pytest.raises(ValueError, match="2 image ids but 1"):
        ev.update(["im00", "im01"], [det()])
    ev.update(["im00"], [det()])
    with pytest.raises(ValueError, match="already updated"):
        ev.update(["im00"], [det()])
    ev.reset()
    ev.update(["im00"], [det()])
    with pytest.raises(ValueError, match="more than one record"):
        Evaluator(info, records + [records[0]])
    with pytest.raises(ValueError, match="at least one"):
        Evaluator(info, [])


def test_compute_is_cached_and_refreshed_by_update():
    info, records, ids, dets = small_set()
    ev = Evaluator(info, records, coco=False)
    ev.update(ids[:6], dets[:6])
    first = ev.compute()
    assert ev.compute() is first
    ev.update(ids[6:], dets[6:])
    assert ev.compute()["num_detections"] == 60 != first["num_detections"]
