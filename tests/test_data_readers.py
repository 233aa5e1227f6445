"""Readers on the real shared datasets: every quirk listed in shared/data/README.md, cross-format
agreement (COCO128 YOLO labels vs its COCO JSON) and the dataset-description entry points."""
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import yaml

from dsod.data import DatasetError, load_dataset, load_image


@pytest.fixture(scope="module")
def bccd(shared_data):
    return load_dataset(shared_data / "bccd")


@pytest.fixture(scope="module")
def coco128_yolo(shared_data):
    return load_dataset(shared_data / "coco128" / "object_detection" / "config.yaml")


@pytest.fixture(scope="module")
def coco128_json(shared_data):
    return load_dataset(shared_data / "coco128" / "coco_json" / "instances_train2017.json")


def _by_stem(records):
    return {r.path.stem: r for r in records}


# ------------------------------------------------------------------------------------------- VOC
def test_bccd_voc_root_splits_counts_and_classes(bccd, shared_data):
    assert bccd.format == "voc" and bccd.splits == ["train", "val", "trainval"]
    assert bccd.info.names == ["Platelets", "RBC", "WBC"]  # collected from the XMLs, sorted ...
    assert any("collected from the XML" in n for n in bccd.notes)  # ... and reported
    train, val = bccd.records("train"), bccd.records("val")
    assert (len(train), len(val)) == (205, 87)
    assert {r.image_id for r in train}.isdisjoint({r.image_id for r in val})
    # <path> holds foreign absolute paths: ignored, images come from JPEGImages/
    assert all(r.path.parent == shared_data / "bccd" / "JPEGImages" for r in train)
    r = train[0]
    assert r.boxes.dtype == np.float32 and r.labels.dtype == np.int64 and r.boxes.shape[1] == 4
    assert (r.width, r.height) == (640, 480)
    # no box is difficult; truncated is parsed and counted (1,131 over all three splits incl. held-back test)
    assert not any(x.difficult.any() for x in train + val)
    assert bccd.report("train").stats["truncated boxes"] + bccd.report("val").stats["truncated boxes"] == 896


def test_bccd_zero_size_boxes_skipped_counted_and_named(bccd):
    rec = _by_stem(bccd.records("trainval"))
    rep = bccd.report("trainval")
    assert rep.counts["zero-size box"] == 2
    files = sorted(p.split(":")[0].rsplit("/", 1)[-1] for p in rep.problems)
    assert files == ["BloodImage_00338.xml", "BloodImage_00343.xml"]
    # the XML lists 13 objects for 00338; the zero-size one is gone, the rest kept
    xml_objects = ET.parse(rec["BloodImage_00338"].path.parents[1] / "Annotations" / "BloodImage_00338.xml") \
        .getroot().findall("object")
    assert len(rec["BloodImage_00338"].boxes) == len(xml_objects) - 1
    assert all(p in bccd.info.problems for p in rep.problems)


def test_voc_coordinates_are_kept_as_written_not_shifted(bccd):
    r = _by_stem(bccd.records("val"))["BloodImage_00338"]
    # first <object> of BloodImage_00338.xml: xmin 453, ymin 81, xmax 555, ymax 182 (1-based devkit pixels)
    assert r.boxes[0].tolist() == [453.0, 81.0, 555.0, 182.0]
    assert bccd.info.names[r.labels[0]] == "RBC"


def test_chess_tag_order_case_insensitive_pairing_and_missing_xml(shared_data):
    spec = load_dataset(shared_data / "roboflow_fixtures" / "chess")
    assert spec.format == "voc" and spec.splits == ["train"]
    recs = _by_stem(spec.records("train"))
    assert len(recs) == 11 and len(spec.info.names) == 12
    # 0af.xml <-> 0AF.jpg; <bndbox> is xmin, xmax, ymin, ymax: first object 555/623/101/210
    r = recs["0AF"]
    assert r.path.name == "0AF.jpg" and (r.width, r.height) == (765, 512)
    assert r.boxes[0].tolist() == [555.0, 101.0, 623.0, 210.0]
    assert spec.info.names[r.labels[0]] == "black-king"
    assert np.all(r.boxes[:, 2] > r.boxes[:, 0]) and np.all(r.boxes[:, 3] > r.boxes[:, 1])
    rep = spec.report("train")
    assert rep.counts == {"image without annotation": 1}
    assert "5c1.jpg" in rep.problems[0] and "no XML annotation" in rep.problems[0]


def test_voc_yaml_with_several_lists_given_names_and_unknown_class(shared_data, tmp_path):
    bccd = shared_data / "bccd"
    cfg = {"path": str(bccd), "train": ["ImageSets/Main/train.txt", "ImageSets/Main/val.txt"],
           "val": "ImageSets/Main/val.txt", "names": {0: "WBC", 1: "RBC"}}
    (tmp_path / "bccd.yaml").write_text(yaml.safe_dump(cfg))
    spec = load_dataset(tmp_path / "bccd.yaml")
    assert spec.format == "voc" and spec.info.names == ["WBC", "RBC"]
    train = spec.records("train")
    assert len(train) == 205 + 87  # 07+12-style list of lists
    rep = spec.report("train")
    # Platelets is not in names: every Platelets box is skipped and counted (292 boxes), with the file named
    assert rep.counts["unknown class"] == 292
    assert "unknown class 'Platelets'" in rep.problems[0] and rep.problems[0].split(":")[0].endswith(".xml")
    assert all(set(r.labels.tolist()) <= {0, 1} for r in train)


# ------------------------------------------------------------------------------------------ COCO
def test_coco_non_contiguous_ids_crowd_negatives_and_64bit_ids(coco128_json, shared_data):
    info = coco128_json.info
    assert info.format == "coco" and len(info.names) == 80
    assert info.category_ids[:12] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13]  # 12 is a gap
    assert info.category_ids[-1] == 90 and info.category_id(79) == 90
    assert info.names[info.category_ids.index(90)] == "toothbrush"
    recs = coco128_json.records("train")
    assert len(recs) == 128
    assert sum(int(r.iscrowd.sum()) for r in recs) == 10  # the 10 RLE crowd annotations are kept, flagged
    negatives = sorted(r.path.name for r in recs if len(r.boxes) == 0)
    assert negatives == ["000000000250.jpg", "000000000508.jpg"]  # images without annotations kept
    assert all(isinstance(r.image_id, int) for r in recs)
    # unused categories are kept as classes and reported
    assert any("have no annotations" in n and "toaster" in n for n in coco128_json.report("train").notes)
    # three boxes under 2 px wide survive
    widths = np.concatenate([r.boxes[:, 2] - r.boxes[:, 0] for r in recs])
    assert (widths < 2).sum() == 3 and widths.min() > 0


def test_coco_yaml_with_images_key(shared_data, tmp_path):
    cfg = {"path": str(shared_data / "coco128"), "format": "coco",
           "train": "coco_json/instances_train2017.json", "images": "images/train2017"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    recs = load_dataset(tmp_path / "c.yaml").records("train")
    assert len(recs) == 128 and all(r.path.parent.name == "train2017" for r in recs)


def test_coco128_yolo_and_coco_json_give_the_same_boxes(coco128_yolo, coco128_json):
    assert coco128_yolo.info.names == coco128_json.info.names
    ys, cs = _by_stem(coco128_yolo.records("train")), _by_stem(coco128_json.records("train"))
    assert set(ys) == set(cs)
    worst, n = 0.0, 0
    for stem, c in cs.items():
        y = ys[stem]
        assert (y.width, y.height) == (c.width, c.height)
        keep = ~c.iscrowd
        a, b = c.boxes[keep].astype(np.float64), y.boxes.astype(np.float64)
        assert len(a) == len(b), stem
        if not len(a):
            continue
        # pair each COCO box with its YOLO twin (same class, nearest coordinates), one-to-one
        d = np.abs(a[:, None] - b[None]).max(-1) + 1e9 * (c.labels[keep][:, None] != y.labels[None])
        pair = d.argmin(1)
        assert len(set(pair.tolist())) == len(a), stem
        worst, n = max(worst, d.min(1).max()), n + len(a)
    assert n == 929 and worst < 1e-3  # pixels


def test_sharks_coco_placeholder_category_dropped_and_reported(shared_data, tmp_path):
    root = shared_data / "roboflow_fixtures" / "sharks-tiny-coco"
    single = load_dataset(root / "train" / "_annotations.coco.json")
    assert single.splits == ["train"]
    assert single.info.names == ["fish", "primary", "shark"] and single.info.category_ids == [1, 2, 3]
    assert any("placeholder" in n and "'sharks'" in n for n in single.report("train").notes)
    # the same export in YOLO format has the same three classes, in the same order
    yolo = load_dataset(shared_data / "roboflow_fixtures" / "sharks-tiny-yolov9" / "data.yaml")
    assert yolo.info.names == single.info.names
    # a YAML with the three split files: one class mapping for all splits
    cfg = {"path": str(root), "train": "train/_annotations.coco.json", "val": "valid/_annotations.coco.json",
           "test": "test/_annotations.coco.json"}
    (tmp_path / "sharks.yaml").write_text(yaml.safe_dump(cfg))
    spec = load_dataset(tmp_path / "sharks.yaml")
    assert spec.format == "coco"
    counts = {s: sum(len(r.boxes) for r in spec.records(s)) for s in spec.splits}
    assert counts == {"train": 44, "val": 10, "test": 6}
    # the same splits through YOLO give the same box counts per class
    for s in spec.splits:
        yl = np.concatenate([r.labels for r in yolo.records(s)])
        cl = np.concatenate([r.labels for r in spec.records(s)])
        assert np.bincount(yl, minlength=3).tolist() == np.bincount(cl, minlength=3).tolist()


# ------------------------------------------------------------------------------------------ YOLO
def test_sharks_yolo_foreign_paths_and_polygon_lines(shared_data):
    root = shared_data / "roboflow_fixtures" / "sharks-tiny-yolov9"
    spec = load_dataset(root / "data.yaml")
    assert spec.format == "yolo" and spec.splits == ["train", "val", "test"]
    for split, folder in (("train", "train"), ("val", "valid"), ("test", "test")):
        recs = spec.records(split)
        assert recs and all(r.path.parent == root / folder / "images" for r in recs)
        assert any("not found" in n and "using" in n for n in spec.report(split).notes)  # fallback reported
    # polygon lines become the polygon's bounding box
    rec = spec.records("test")[0]
    label = root / "test" / "labels" / (rec.path.stem + ".txt")
    lines = [ln.split() for ln in label.read_text().splitlines() if ln.strip()]
    polys = [ln for ln in lines if len(ln) > 5]
    assert polys and spec.report("test").stats["polygon labels converted to boxes"] == len(polys)
    # some label files mix 5-field box lines with polygon lines: both kinds read from the same file
    mixed = [f for f in (root / "train" / "labels").glob("*.txt")
             if {len(ln.split()) == 5 for ln in f.read_text().splitlines() if ln.strip()} == {True, False}]
    assert mixed
    n_lines = sum(1 for ln in mixed[0].read_text().splitlines() if ln.strip())
    assert len(next(r for r in spec.records("train") if r.path.stem == mixed[0].stem).boxes) == n_lines
    vals = np.array(polys[0][1:], dtype=np.float64)
    want = [vals[0::2].min() * rec.width, vals[1::2].min() * rec.height,
            vals[0::2].max() * rec.width, vals[1::2].max() * rec.height]
    assert np.abs(rec.boxes[0] - np.clip(want, 0, rec.width)).max() < 1e-3
    # a folder holding data.yaml works as data= too
    assert len(load_dataset(root).records("train")) == len(spec.records("train"))


def test_coco128_yolo_negatives_orphan_labels_and_grayscale(coco128_yolo):
    recs = _by_stem(coco128_yolo.records("train"))
    rep = coco128_yolo.report("train")
    assert len(recs) == 128
    # images without a label file are negatives (noted, not problems)
    assert len(recs["000000000250"].boxes) == 0 and len(recs["000000000508"].boxes) == 0
    assert rep.stats["images without label file"] == 2
    # label files without an image are reported
    assert rep.counts == {"label without image": 2}
    assert sorted(p.split(":")[0].rsplit("/", 1)[-1] for p in rep.problems) == ["000000000656.txt",
                                                                               "000000000659.txt"]
    # the config's images/ (a symlink that was not unpacked) is found one level up, labels beside the config
    assert recs["000000000009"].path.parts[-3:] == ("images", "train2017", "000000000009.jpg")
    # grayscale JPEG decodes to 3-channel pixels
    gray = load_image(recs["000000000086"].path)
    assert gray.shape == (recs["000000000086"].height, recs["000000000086"].width, 3)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])


# ------------------------------------------------------------------------------- entry points
def test_load_dataset_errors_are_one_line_and_name_the_input(tmp_path, bccd):
    with pytest.raises(DatasetError, match=r"^data=foo\.yaml: file not found$"):
        load_dataset("foo.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [a, b\nnames: {0: x}\n")
    with pytest.raises(DatasetError, match=r"data=.*bad\.yaml: invalid YAML") as e:
        load_dataset(bad)
    assert "\n" not in str(e.value)
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({"format": "voc", "train": "nope/ImageSets/Main/train.txt"}))
    spec = load_dataset(missing)
    with pytest.raises(DatasetError, match=r"train: 'nope/ImageSets/Main/train.txt' not found"):
        spec.records("train")
    with pytest.raises(DatasetError, match=r"no split 'test'; this dataset has train, val, trainval"):
        bccd.records("test")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DatasetError, match="expected a dataset .yaml"):
        load_dataset(tmp_path / "x.txt")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(DatasetError, match="cannot tell the dataset format"):
        load_dataset(empty_dir)
    nc = tmp_path / "nc.yaml"
    nc.write_text(yaml.safe_dump({"train": "x", "nc": 3, "names": ["a", "b"]}))
    with pytest.raises(DatasetError, match="nc=3 but names has 2 entries"):
        load_dataset(nc)
