"""Bad input, generated in tmp_path (no binary files in the repo): every problem is reported as one line
naming the file, the broken sample/box is skipped (or clipped) and counted, strict mode raises; image
modes decode correctly; load-time decode failures do not stop a Dataset; ``check`` on real data."""
import io
import json
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dsod.data import (
    DatasetError,
    DetectionDataset,
    ImageError,
    eval_transform,
    image_size,
    load_dataset,
    load_image,
)
from dsod.data.check import DefaultBoxSet, check, format_report


def preset_boxes(name):
    """A preset's default boxes for ``check`` (the data layer takes them from the caller)."""
    from dsod.config import get_config
    from dsod.geometry.anchors import default_boxes
    from dsod.geometry.boxes import cxcywh_to_xyxy
    from dsod.model import feature_sizes

    cfg = get_config(name)
    return [DefaultBoxSet(name, cfg.image_size,
                          cxcywh_to_xyxy(default_boxes(cfg.anchors, cfg.image_size, feature_sizes(cfg))))]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Per-sample augmentation runs single-threaded, as in DataLoader workers: on a busy 2-core
    machine intra-op threads only spin (10x slower transforms)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------------- generators
def noise_image(w=64, h=48, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


def jpeg_bytes(w=64, h=48):
    buf = io.BytesIO()
    noise_image(w, h).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_header_only(path, w, h):
    """A PNG whose header claims w x h pixels (a decompression bomb's header), without the pixels."""
    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def voc_xml(path, filename, size, objects, raw=""):
    objs = ""
    for name, coords in objects:
        bb = "".join(f"<{k}>{v}</{k}>" for k, v in coords.items())
        objs += f"<object><name>{name}</name><difficult>0</difficult><bndbox>{bb}</bndbox></object>"
    path.write_text(f"<annotation><filename>{filename}</filename><path>/elsewhere/{filename}</path>"
                    f"<size><width>{size[0]}</width><height>{size[1]}</height></size>{objs}{raw}</annotation>")


def box(x1, y1, x2, y2):
    return dict(xmin=x1, ymin=y1, xmax=x2, ymax=y2)


GOOD = [("cat", box(10, 10, 30, 30))]


@pytest.fixture
def broken_voc(tmp_path):
    """A flat VOC folder + a dataset YAML (names: cat, dog) with one file per kind of problem."""
    d = tmp_path / "voc"
    d.mkdir()
    noise_image().save(d / "good.jpg")
    voc_xml(d / "good.xml", "good.jpg", (64, 48), GOOD)
    (d / "zero.jpg").write_bytes(b"")
    voc_xml(d / "zero.xml", "zero.jpg", (64, 48), GOOD)
    (d / "text.jpg").write_text("this is not an image")
    voc_xml(d / "text.xml", "text.jpg", (64, 48), GOOD)
    png_header_only(d / "bomb.png", 12000, 10000)
    voc_xml(d / "bomb.xml", "bomb.png", (12000, 10000), GOOD)
    data = jpeg_bytes()
    (d / "trunc.jpg").write_bytes(data[: len(data) * 6 // 10])  # header intact: only a decode finds it
    voc_xml(d / "trunc.xml", "trunc.jpg", (64, 48), GOOD)
    noise_image().save(d / "malformed.jpg")
    (d / "malformed.xml").write_text("<annotation><object><name>cat</name></annotation>")
    noise_image().save(d / "coords.jpg")
    voc_xml(d / "coords.xml", "coords.jpg", (64, 48),
            [("cat", dict(xmin="abc", ymin=1, xmax=5, ymax=5)), ("cat", dict(xmin=1, ymin=1, xmax=5)), *GOOD])
    noise_image().save(d / "boxes.jpg")
    voc_xml(d / "boxes.xml", "boxes.jpg", (64, 48), [
        ("cat", box(30, 10, 20, 30)),  # inverted
        ("cat", box(5, 5, 5, 20)),  # zero width
        ("dog", box(50, 30, 70, 60)),  # partly outside 64x48: clipped to [50, 30, 64, 48]
        ("dog", box(80, 60, 90, 70)),  # entirely outside
        ("horse", box(1, 1, 9, 9)),  # not in names
        ("dog", box(2.5, 3.5, 20.25, 40)),  # decimal coordinates are fine
    ])
    voc_xml(d / "nofile.xml", "nofile.jpg", (64, 48), GOOD)
    (tmp_path / "voc.yaml").write_text(yaml.safe_dump({"path": "voc", "format": "voc", "train": ".",
                                                      "names": ["cat", "dog"]}))
    return tmp_path / "voc.yaml"


READ_PROBLEMS = {  # what reading the folder above must report (decoding finds trunc.jpg later)
    "unusable image": 3, "malformed annotation file": 1, "non-numeric coordinate": 1,
    "missing coordinates": 1,
    "inverted box": 1, "zero-size box": 1, "box clipped to the image": 1, "box outside the image": 1,
    "unknown class": 1, "missing image": 1,
}


# ------------------------------------------------------------------------------------- VOC/images
def test_broken_voc_every_problem_skipped_counted_and_named(broken_voc):
    spec = load_dataset(broken_voc)
    recs = {r.path.name: r for r in spec.records("train")}
    rep = spec.report("train")
    assert dict(rep.counts) == READ_PROBLEMS
    assert sorted(recs) == ["boxes.jpg", "coords.jpg", "good.jpg", "trunc.jpg"]
    for line in rep.problems:
        file, _, reason = line.partition(": ")
        assert "\n" not in line and reason and file.rsplit("/", 1)[-1].split(".")[0] in (
            "zero", "text", "bomb", "malformed", "coords", "boxes", "nofile")
    text = "\n".join(rep.problems)
    assert "zero.jpg: empty file (0 bytes)" in text
    assert "text.jpg: not an image PIL can read" in text
    assert "bomb.png: image too large: 12000x10000 = 120 MP > limit 100 MP" in text
    assert "malformed.xml: malformed XML" in text
    assert "non-numeric <xmin> 'abc'" in text and "missing <ymax>" in text
    assert "unknown class 'horse'" in text and "nofile.xml: image not found" in text
    b = recs["boxes.jpg"]
    assert b.boxes.tolist() == [[50, 30, 64, 48], [2.5, 3.5, 20.25, 40]] and b.labels.tolist() == [1, 1]
    assert recs["coords.jpg"].boxes.tolist() == [[10, 10, 30, 30]]  # the good object of a bad file survives
    assert all(p in spec.info.problems for p in rep.problems)


def test_strict_mode_raises_the_one_line_message(broken_voc):
    with pytest.raises(DatasetError) as e:
        load_dataset(broken_voc, strict=True).records("train")
    msg = str(e.value)
    assert "\n" not in msg and msg.split(": ")[0].endswith((".xml", ".jpg", ".png"))


def test_image_modes_exif_and_limits(tmp_path):
    rgba = Image.new("RGBA", (8, 6), (10, 20, 30, 0))
    rgba.save(tmp_path / "rgba.png")
    assert load_image(tmp_path / "rgba.png")[0, 0].tolist() == [10, 20, 30]  # alpha dropped
    Image.new("L", (8, 6), 77).save(tmp_path / "gray.png")
    gray = load_image(tmp_path / "gray.png")
    assert gray.shape == (6, 8, 3) and (gray == 77).all()
    Image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)  # pure red
    r, g, b_ = load_image(tmp_path / "cmyk.jpg")[3, 4].tolist()
    assert r > 240 and g < 15 and b_ < 15
    i16 = Image.fromarray(np.full((6, 8), 65535, np.uint16))
    i16.save(tmp_path / "i16.png")
    assert (load_image(tmp_path / "i16.png") == 255).all()  # 16-bit scaled, not clipped
    pal = Image.new("P", (8, 6), 3)
    pal.putpalette([0, 0, 0] * 3 + [200, 10, 20] + [0, 0, 0] * 252)
    pal.save(tmp_path / "pal.png", transparency=0)
    assert load_image(tmp_path / "pal.png")[0, 0].tolist() == [200, 10, 20]
    # EXIF orientation 6 (rotate 90 deg clockwise to display): 64x32 stored -> 32x64 upright
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:, :32] = (255, 0, 0)
    stored[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    assert image_size(tmp_path / "rot.jpg") == (32, 64, 6)
    up = load_image(tmp_path / "rot.jpg")
    assert up.shape == (64, 32, 3)
    assert up[2, 16, 0] > 200 and up[-3, 16, 2] > 200  # the stored left (red) half is now on top
    # BGR for the network
    from dsod.data import load_image_bgr
    assert load_image_bgr(tmp_path / "cmyk.jpg")[3, 4, 2] > 240
    with pytest.raises(ImageError, match="image too large"):
        load_image(tmp_path / "gray.png", max_pixels=10)
    png_header_only(tmp_path / "huge.png", 20000, 20000)  # beyond PIL's own bomb limit: refused at open
    with pytest.raises(ImageError, match="image too large.*decompression bomb"):
        image_size(tmp_path / "huge.png")


def test_exif_rotated_image_in_a_dataset_uses_upright_size(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 8
    noise_image(64, 32).save(tmp_path / "r.jpg", exif=exif)
    voc_xml(tmp_path / "r.xml", "r.jpg", (64, 32), [("cat", box(1, 1, 20, 40))])
    spec = load_dataset(tmp_path)
    (rec,) = spec.records("train")
    assert (rec.width, rec.height) == (32, 64) and rec.boxes.tolist() == [[1, 1, 20, 40]]
    notes = "\n".join(spec.report("train").notes)
    assert "EXIF orientation 8" in notes and "un-rotated size" in notes


# ------------------------------------------------------------------------------------------ COCO
def test_broken_coco_json(tmp_path):
    (tmp_path / "bad.json").write_text('{ "images": [1, 2,, ] }')
    with pytest.raises(DatasetError, match=r"bad\.json: malformed JSON \(line 1 column 19"):
        load_dataset(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(DatasetError, match=r"list\.json: not a COCO annotation file"):
        load_dataset(tmp_path / "list.json")

    big = 2 ** 40 + 1  # 64-bit ids
    noise_image().save(tmp_path / "a.jpg")
    noise_image().save(tmp_path / "neg.jpg")
    js = {
        "images": [{"id": big, "file_name": "a.jpg", "width": 64, "height": 48},
                   {"id": 5, "file_name": "missing.jpg", "width": 64, "height": 48},
                   {"id": 6, "file_name": "neg.jpg", "width": 64, "height": 48}],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 9, "name": "unused"}],
        "annotations": [
            {"id": 2 ** 40 + 5, "image_id": big, "category_id": 7, "bbox": [1, 2, 10, 20], "iscrowd": 0},
            {"id": 2, "image_id": big, "category_id": 3, "bbox": [0, 0, 64, 48], "iscrowd": 1},
            {"id": 3, "image_id": 99, "category_id": 7, "bbox": [1, 2, 3, 4]},
            {"id": 4, "image_id": big, "category_id": 42, "bbox": [1, 2, 3, 4]},
            {"id": 5, "image_id": big, "category_id": 7, "bbox": ["a", 2, 3, 4]},
            {"id": 6, "image_id": big, "category_id": 7, "bbox": [1, 2, -3, 4]},
            {"id": 7, "image_id": big, "category_id": 7, "bbox": [1, 2, 0, 4]},
            {"id": 8, "image_id": big, "category_id": 7},
        ]}
    (tmp_path / "instances_train.json").write_text(json.dumps(js))
    spec = load_dataset(tmp_path / "instances_train.json")
    assert spec.splits == ["train"]
    assert spec.info.names == ["dog", "cat", "unused"] and spec.info.category_ids == [3, 7, 9]
    recs = {r.image_id: r for r in spec.records("train")}
    rep = spec.report("train")
    assert dict(rep.counts) == {"missing image": 1, "annotation for unknown image": 1, "unknown class": 1,
                                "non-numeric coordinate": 1, "inverted box": 1, "zero-size box": 1,
                                "missing coordinates": 1}
    assert sorted(recs) == [6, big]
    a = recs[big]
    assert a.boxes.tolist() == [[1, 2, 11, 22], [0, 0, 64, 48]]
    assert a.labels.tolist() == [1, 0] and a.iscrowd.tolist() == [False, True]
    assert len(recs[6].boxes) == 0  # no annotations: a negative
    text = "\n".join(rep.problems)
    assert "annotation id 3: image_id 99 is not in 'images'" in text and "unknown category_id 42" in text
    assert "missing.jpg: image file not found" in text
    assert any("unused" in n for n in rep.notes)


# ------------------------------------------------------------------------------------------ YOLO
def test_broken_yolo_labels(tmp_path):
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    noise_image(100, 50).save(tmp_path / "images" / "train" / "a.jpg")
    noise_image(100, 50).save(tmp_path / "images" / "train" / "b.jpg")
    noise_image(100, 50).save(tmp_path / "images" / "train" / "c.png")
    (tmp_path / "labels" / "train" / "a.txt").write_text("\n".join([
        "0 0.5 0.5 0.2 0.2",  # good: [40, 20, 60, 30]
        "1 0.5 0.5 0.2",  # 4 values
        "x 0.5 0.5 0.2 0.2",  # non-numeric
        "7 0.5 0.5 0.2 0.2",  # class id out of range
        "0 320 240 50 50",  # pixels, not normalised
        "1 0.95 0.5 0.2 0.2",  # partly outside: clipped to x2 = 100
        "1 0.1 0.2 0.3 0.1 0.2 0.6",  # polygon -> [10, 5, 30, 30]
        "0 0.5 0.5 0 0.2",  # zero width
        "",
    ]))
    (tmp_path / "labels" / "train" / "b.txt").write_text("")  # empty label file: a negative
    (tmp_path / "labels" / "train" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    cfg = {"path": ".", "train": "images/train", "names": ["a", "b"]}
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(cfg))
    spec = load_dataset(tmp_path / "data.yaml")
    assert spec.format == "yolo"
    recs = {r.path.name: r for r in spec.records("train")}
    rep = spec.report("train")
    assert dict(rep.counts) == {"malformed label line": 1, "non-numeric coordinate": 1, "unknown class": 1,
                                "un-normalised coordinates": 1, "box clipped to the image": 1,
                                "zero-size box": 1, "label without image": 1}
    a = recs["a.jpg"]
    assert np.allclose(a.boxes, [[40, 20, 60, 30], [85, 20, 100, 30], [10, 5, 30, 30]])
    assert a.labels.tolist() == [0, 1, 1]
    assert len(recs["b.jpg"].boxes) == 0 and len(recs["c.png"].boxes) == 0
    assert rep.stats["images without label file"] == 1  # c.png: a negative, noted
    assert "orphan.txt: label file without a matching image" in "\n".join(rep.problems)
    assert "a.txt: line 2: expected 'class cx cy w h' or a polygon" in "\n".join(rep.problems)
    # the same images through an Ultralytics list file ('./' = the list's folder); a listed image that
    # does not exist is reported
    (tmp_path / "train.txt").write_text("./images/train/a.jpg\nimages/train/c.png\n./images/train/gone.jpg\n")
    cfg = {"path": ".", "format": "yolo", "train": "train.txt", "names": ["a", "b"]}
    (tmp_path / "list.yaml").write_text(yaml.safe_dump(cfg))
    spec = load_dataset(tmp_path / "list.yaml")
    listed = {r.path.name: r for r in spec.records("train")}
    assert sorted(listed) == ["a.jpg", "c.png"] and np.array_equal(listed["a.jpg"].boxes, a.boxes)
    assert spec.report("train").counts["missing image"] == 1


# ------------------------------------------------------------------------------------ Dataset skip
def test_dataset_skips_images_that_fail_to_decode(broken_voc):
    recs = load_dataset(broken_voc).records("train")
    names = [r.path.name for r in recs]
    ds = DetectionDataset(recs, eval_transform(32), train=True)
    bad = names.index("trunc.jpg")
    with pytest.warns(RuntimeWarning, match=r"trunc\.jpg: truncated or corrupt image data"):
        image, target = ds[bad]
    assert image.shape == (3, 32, 32)
    assert target["index"] == (bad + 1) % len(recs) and "trunc.jpg" in target["skipped"][0]
    assert bad in ds.skipped
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once per file; later hits are silent but still listed
        assert ds[bad][1]["skipped"] == [ds.skipped[bad]]
    for i in range(len(ds)):  # every index yields a sample
        assert ds[i][0].shape == (3, 32, 32)


# ----------------------------------------------------------------------------------------- check
def test_check_on_broken_data_lists_every_problem(broken_voc, tmp_path):
    out = tmp_path / "out"
    res = check(broken_voc, preset_boxes("dsod-nano"), out_dir=out)
    s = res["splits"]["train"]
    assert s["problem_counts"] == {**READ_PROBLEMS, "unusable image": 4}  # + trunc.jpg, found by decoding
    assert s["images"] == 3
    assert res["problems_total"] == len(s["problems"]) == sum(s["problem_counts"].values())
    report = format_report(res)
    for p in s["problems"]:
        assert p in report
    from PIL import Image

    with Image.open(out / "labels_train.png") as im:  # a whole, readable PNG
        assert im.format == "PNG" and min(im.size) > 100
    with pytest.raises(DatasetError):
        check(broken_voc, strict=True)


def test_check_bccd_statistics_coverage_and_plots(shared_data, tmp_path):
    import matplotlib

    original = matplotlib.get_backend()
    matplotlib.use("pdf")  # not the headless default Agg, so that a switch to Agg would show
    try:
        res = check(shared_data / "bccd", preset_boxes("dsod300"), out_dir=tmp_path, samples=4)
        assert matplotlib.get_backend() == "pdf"  # plotting left the process's backend alone
    finally:
        matplotlib.use(original)
    assert res["names"] == ["Platelets", "RBC", "WBC"] and res["num_default_boxes"] == 8744
    tr = res["splits"]["train"]
    assert (tr["images"], tr["boxes"], tr["images_without_boxes"]) == (205, 2804, 0)
    assert tr["class_counts"] == {"Platelets": 209, "RBC": 2381, "WBC": 214}
    assert tr["box_size"]["width_px"] == {"min": 20.0, "p5": 43.0, "median": 105.0, "p95": 175.0, "max": 288.0}
    # small platelets are the hard case for DSOD300's default boxes (113 of 209); big RBCs are covered
    # (geometry only: the same counts on every CPU)
    assert tr["unmatched_boxes"] == 114 and tr["unmatched_share"] == pytest.approx(114 / 2804)
    assert tr["unmatched_by_class"] == pytest.approx({"Platelets": 113 / 209, "RBC": 0.0, "WBC": 1 / 214})
    assert tr["problem_counts"] == {"zero-size box": 1} and "BloodImage_00343.xml" in tr["problems"][0]
    assert res["problems_total"] == 4  # 1 train + 1 val + 2 trainval
    text = format_report(res)
    assert "match no default box at IoU >= 0.5" in text and "BloodImage_00338.xml" in text
    for split in ("train", "val", "trainval"):
        assert (tmp_path / f"labels_{split}.png").stat().st_size > 10_000
    assert res["samples_plot"] and (tmp_path / "train_samples.png").stat().st_size > 10_000
