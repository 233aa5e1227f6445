"""VOC metrics: hand-computed cases (ties, duplicates, difficult, classes without ground truth or
detections, images without detections, 11-point vs area, the IoU >= 0.5 boundary, the +1 convention)
and a cross-check against a literal port of the devkit's VOCevaldet.m loop on real BCCD boxes."""
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from helpers import devkit_reference

from dsod.data.records import DatasetInfo, ImageRecord
from dsod.metrics import Evaluator, ap_11point, ap_area, evaluate_voc


def rec(image_id, boxes=(), labels=(), difficult=None, crowd=None, w=640, h=480):
    b = np.array(boxes, np.float32).reshape(-1, 4)
    n = len(b)
    return ImageRecord(image_id, Path(f"{image_id}.jpg"), w, h, b, np.array(labels, np.int64).reshape(-1),
                       np.zeros(n, bool) if difficult is None else np.array(difficult, bool),
                       np.zeros(n, bool) if crowd is None else np.array(crowd, bool))


def det(boxes=(), scores=(), labels=()):
    return {"boxes": np.array(boxes, np.float64).reshape(-1, 4), "scores": np.array(scores, np.float64),
            "labels": np.array(labels, np.int64)}


def voc_only(names, records, image_ids, dets, **kw):
    ev = Evaluator(DatasetInfo(names=list(names), format="voc"), records, coco=False, **kw)
    ev.update(image_ids, dets)
    return ev.compute()


# ----------------------------------------------------------------------------- the AP formulas
def test_ap_formulas_by_hand():
    # tp, fp, tp, fp with 3 positives: rec 1/3, 1/3, 2/3, 2/3; prec 1, 1/2, 2/3, 1/2.
    rec_, prec = np.array([1, 1, 2, 2]) / 3, np.array([1, 1 / 2, 2 / 3, 1 / 2])
    # area: 1/3 * 1 + 1/3 * 2/3 = 5/9; 11-point: t = 0..0.3 -> 1 (4x), t = 0.4..0.6 -> 2/3 (3x), rest 0.
    assert ap_area(rec_, prec) == pytest.approx(5 / 9, abs=1e-12)
    assert ap_11point(rec_, prec) == pytest.approx(6 / 11, abs=1e-12)
    assert ap_area([], []) == 0.0 and ap_11point([], []) == 0.0


def test_11point_thresholds_are_exact_tenths():
    # Recall reaches exactly 0.3 (3 of 10): t = 0, 0.1, 0.2, 0.3 count -> 4/11. With t from
    # numpy.arange(0, 1.1, 0.1) (0.30000000000000004) it would be 3/11; we use k/10 (documented).
    assert ap_11point(np.array([1, 2, 3]) / 10, np.ones(3)) == pytest.approx(4 / 11, abs=1e-12)
    assert ap_area(np.array([1, 2, 3]) / 10, np.ones(3)) == pytest.approx(0.3, abs=1e-12)


# ----------------------------------------------------------------------------- the protocol, by hand
NAMES = ["a", "b", "c", "d", "e"]


def hand_case():
    records = [
        rec("i1", [[0, 0, 10, 10]], [0]),
        rec("i2", [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [0, 0, 1]),
        rec("i3", [[0, 0, 10, 10]], [0], difficult=[True]),
        rec("i4", [[0, 0, 10, 10]], [3]),  # class d; this image never gets detections
        rec("i5"),  # no ground truth; updated with no detections
    ]
    image_ids = ["i1", "i2", "i3", "i5"]
    dets = [
        det([[0, 0, 10, 10], [0, 0, 10, 10], [40, 40, 50, 50]], [0.9, 0.8, 0.5], [0, 0, 1]),  # TP, duplicate, FP
        det([[0, 0, 10, 10], [50, 50, 60, 60], [40, 40, 50, 50]], [0.7, 0.6, 0.5], [0, 0, 1]),  # TP, FP, TP (tie)
        det([[0, 0, 10, 10], [0, 0, 5, 5]], [0.95, 0.3], [0, 2]),  # on difficult: ignored; class c has no GT
        det(),
    ]
    return records, image_ids, dets


def test_hand_case_per_class_and_means():
    r = voc_only(NAMES, *hand_case())
    pc = r["per_class"]
    # a: sorted 0.95 (difficult, ignored), 0.9 TP, 0.8 duplicate FP, 0.7 TP, 0.6 FP; 3 positives.
    assert pc["a"]["voc_area_ap50"] == pytest.approx(5 / 9, abs=1e-12)
    assert pc["a"]["voc07_ap50"] == pytest.approx(6 / 11, abs=1e-12)
    assert (pc["a"]["num_gt"], pc["a"]["num_det"]) == (3, 5)
    # b: two detections with score 0.5; ties keep image order (i1 before i2): FP then TP.
    assert pc["b"]["voc_area_ap50"] == pytest.approx(0.5, abs=1e-12)
    assert pc["b"]["voc07_ap50"] == pytest.approx(0.5, abs=1e-12)
    # c: detections but no ground truth -> NaN, left out of the mean.
    assert math.isnan(pc["c"]["voc07_ap50"]) and math.isnan(pc["c"]["voc_area_ap50"])
    assert (pc["c"]["num_gt"], pc["c"]["num_det"]) == (0, 1)
    # d: ground truth (in an image without detections) but no detections -> 0, in the mean.
    assert pc["d"]["voc07_ap50"] == 0.0 and pc["d"]["voc_area_ap50"] == 0.0
    # e: neither.
    assert math.isnan(pc["e"]["voc07_ap50"]) and pc["e"]["num_gt"] == 0
    assert r["voc_area_map50"] == pytest.approx((5 / 9 + 0.5 + 0) / 3, abs=1e-12)
    assert r["voc07_map50"] == pytest.approx((6 / 11 + 0.5 + 0) / 3, abs=1e-12)
    assert r["num_classes_with_gt"] == 3
    assert (r["num_images"], r["num_images_updated"], r["num_detections"], r["num_gt"]) == (5, 4, 8, 5)


def test_hand_case_does_not_depend_on_update_order():
    records, ids, dets = hand_case()
    a = voc_only(NAMES, records, ids, dets)
    b = voc_only(NAMES, records[::-1], ids[::-1], dets[::-1])
    assert repr(a["per_class"]) == repr(b["per_class"])  # (repr: NaN != NaN)


def test_ties_within_an_image_keep_list_order():
    records = [rec("j1", [[0, 0, 10, 10]], [0])]
    fp, tp = [100, 100, 110, 110], [0, 0, 10, 10]
    r1 = voc_only(["x"], records, ["j1"], [det([fp, tp], [0.5, 0.5], [0, 0])])["per_class"]["x"]
    r2 = voc_only(["x"], records, ["j1"], [det([tp, fp], [0.5, 0.5], [0, 0])])["per_class"]["x"]
    assert r1["voc_area_ap50"] == pytest.approx(0.5) and r1["voc07_ap50"] == pytest.approx(0.5)
    assert r2["voc_area_ap50"] == pytest.approx(1.0) and r2["voc07_ap50"] == pytest.approx(1.0)


def test_duplicate_is_fp_even_if_another_gt_is_free():
    # P1 and P2 overlap; the second detection's best ground truth is P1 (IoU 0.905, P2: 0.739), already
    # taken -> FP (the devkit looks at the best ground truth only). rec 1/2, 1/2; prec 1, 1/2.
    records = [rec("k1", [[0, 0, 10, 10], [0, 2, 10, 12]], [0, 0])]
    d = det([[0, 0, 10, 10], [0, 0.5, 10, 10.5]], [0.9, 0.8], [0, 0])
    r = voc_only(["x"], records, ["k1"], [d])["per_class"]["x"]
    assert r["voc_area_ap50"] == pytest.approx(0.5, abs=1e-12)
    assert r["voc07_ap50"] == pytest.approx(6 / 11, abs=1e-12)


def test_best_match_difficult_ignores_detection():
    # Best IoU is with the difficult box (1.0) although the normal one overlaps too (0.909): ignored,
    # the normal box stays missed: AP 0 (not NaN: it has a positive).
    records = [rec("k2", [[0, 0, 10, 10], [0, 0, 10, 11]], [0, 0], difficult=[False, True])]
    r = voc_only(["x"], records, ["k2"], [det([[0, 0, 10, 11]], [0.9], [0])])["per_class"]["x"]
    assert (r["voc_area_ap50"], r["voc07_ap50"], r["num_gt"], r["num_det"]) == (0.0, 0.0, 1, 1)


def test_crowd_is_ignored_like_difficult():
    records = [rec("k3", [[0, 0, 10, 10], [50, 50, 90, 90]], [0, 0], crowd=[False, True])]
    d = det([[50, 50, 90, 90], [0, 0, 10, 10]], [0.9, 0.8], [0, 0])
    r = voc_only(["x"], records, ["k3"], [d])["per_class"]["x"]
    assert (r["voc_area_ap50"], r["num_gt"]) == (1.0, 1)


def test_iou_exactly_half_is_a_match():
    # IoU = 50 / 100 = 0.5 exactly: the devkit's ovmax >= minoverlap counts it.
    r = voc_only(["x"], [rec("m1", [[0, 0, 10, 10]], [0])], ["m1"], [det([[0, 0, 10, 5]], [0.9], [0])])
    assert r["voc_area_map50"] == 1.0


def test_plus_one_convention():
    # Devkit (+1): a 10x10-pixel box [0,0,9,9] vs [0,0,9,4]: 50 / 100 = 0.5 -> TP.
    # Continuous coordinates: 9*4 / 9*9 = 0.444 -> FP.
    records = [rec("p1", [[0, 0, 9, 9]], [0])]
    d = [det([[0, 0, 9, 4]], [0.9], [0])]
    assert voc_only(["x"], records, ["p1"], d, plus_one=True)["voc_area_map50"] == 1.0
    assert voc_only(["x"], records, ["p1"], d)["voc_area_map50"] == 0.0


def test_no_detections_at_all():
    records, _, _ = hand_case()
    r = voc_only(NAMES, records, [], [])
    assert r["voc07_map50"] == 0.0 and r["voc_area_map50"] == 0.0 and r["num_detections"] == 0


# ----------------------------------------------------------------------------- devkit cross-check
def read_bccd(root: Path, split: str):
    names = ["RBC", "WBC", "Platelets"]
    records = []
    for stem in (root / "ImageSets" / "Main" / f"{split}.txt").read_text().split():
        xml = ET.parse(root / "Annotations" / f"{stem}.xml").getroot()
        boxes, labels, diff = [], [], []
        for o in xml.iter("object"):
            bb = o.find("bndbox")
            boxes.append([float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")])
            labels.append(names.index(o.find("name").text.strip()))
            diff.append(o.find("difficult") is not None and o.find("difficult").text.strip() == "1")
        records.append(rec(stem, boxes, labels, difficult=diff))
    return DatasetInfo(names=names, format="voc"), records


@pytest.mark.parametrize("plus_one", [False, True])
def test_matches_devkit_loop_on_bccd(shared_data, plus_one):
    info, records = read_bccd(shared_data / "bccd", "val")
    rng = np.random.default_rng(7)
    # Mark some boxes difficult to exercise the rule (BCCD itself has none).
    for r in records:
        r.difficult = rng.random(len(r.labels)) < 0.1
    image_ids, dets, flat = [], [], []
    for r in records:
        g = r.boxes.astype(np.float64)
        keep = rng.random(len(g)) < 0.85
        src = np.concatenate([np.flatnonzero(keep), np.flatnonzero(keep & (rng.random(len(g)) < 0.2))])
        wh = np.concatenate([g[src, 2:] - g[src, :2]] * 2, 1)
        b = g[src] + rng.normal(0, 0.12, (len(src), 4)) * wh
        nf = int(rng.integers(0, 6))
        xy = rng.uniform(0, 600, (nf, 2))
        b = np.concatenate([b, np.concatenate([xy, xy + rng.uniform(5, 80, (nf, 2))], 1)])
        lab = np.concatenate([r.labels[src], rng.integers(0, 3, nf)])
        lab[rng.random(len(lab)) < 0.05] = rng.integers(0, 3)  # some wrong classes
        sc = np.round(rng.random(len(b)), 1)  # coarse scores: many ties
        perm = rng.permutation(len(b))
        b, lab, sc = b[perm], lab[perm], sc[perm]
        image_ids.append(r.image_id)
        dets.append(det(b, sc, lab))
    ev = Evaluator(info, records, coco=False, plus_one=plus_one)
    ev.update(image_ids[::-1], dets[::-1])  # any update order
    got = ev.compute()["per_class"]
    # Reference tie order: image ids sorted, then position within the image.
    order = sorted(range(len(records)), key=lambda i: image_ids[i])
    for i in order:
        d = dets[i]
        flat += [(image_ids[i], d["boxes"][k], d["scores"][k], d["labels"][k]) for k in range(len(d["scores"]))]
    gts = {r.image_id: (r.boxes, r.labels, r.difficult) for r in records}
    for c, name in enumerate(info.names):
        ap07, apa = devkit_reference(gts, flat, c, plus_one)
        assert got[name]["voc07_ap50"] == pytest.approx(ap07, abs=1e-12)
        assert got[name]["voc_area_ap50"] == pytest.approx(apa, abs=1e-12)
        assert 0.2 < apa < 1.0


def test_evaluate_voc_large_random_against_reference():
    # Many classes, images without ground truth, boxes from a small grid (exact IoU ties between
    # ground truths), plus the chunked pair generation.
    rng = np.random.default_rng(3)
    C, N = 6, 60
    grid = rng.integers(0, 8, (400, 2)) * 10.0
    gtb = np.concatenate([grid, grid + rng.integers(1, 4, (400, 2)) * 10.0], 1)
    gl, gi = rng.integers(0, C, 400), rng.integers(0, N - 5, 400)
    gd = rng.random(400) < 0.1
    D = 3000
    db = gtb[rng.integers(0, 400, D)] + rng.integers(-1, 2, (D, 4)) * 5.0
    dl, di, ds = rng.integers(0, C, D), rng.integers(0, N, D), np.round(rng.random(D), 2)
    o = np.lexsort((np.arange(D), di))  # the tie order: image, then position
    db, dl, di, ds = db[o], dl[o], di[o], ds[o]
    import dsod.metrics.voc as voc_mod
    old = voc_mod._PAIR_CHUNK
    voc_mod._PAIR_CHUNK = 97  # force many chunks
    try:
        res = evaluate_voc(C, gtb, gl, gi, gd, db, ds, dl, di)
    finally:
        voc_mod._PAIR_CHUNK = old
    gts = {n: (gtb[gi == n], gl[gi == n], gd[gi == n]) for n in range(N)}
    flat = list(zip(di.tolist(), db, ds.tolist(), dl.tolist()))
    for c in range(C):
        ap07, apa = devkit_reference(gts, flat, c, False)
        assert res.ap07[c] == pytest.approx(ap07, abs=1e-12)
        assert res.ap_area[c] == pytest.approx(apa, abs=1e-12)
