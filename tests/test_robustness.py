"""Bad data and faults, met by the command that meets them: real files, real processes, one-line
messages. (A table of bad inputs through every command: benchmarks/bad_inputs.py.)"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import confident_dsod_nano

from dsod.cli import main
from dsod.model.checkpoint import load_checkpoint, model_payload, save_checkpoint

NAMES = ["Platelets", "RBC", "WBC"]  # as the VOC reader sorts them
GOOD = ["BloodImage_00000", "BloodImage_00001", "BloodImage_00003"]


def voc_set(shared_data, root, train, val, truncate=()):
    """A VOC set of BCCD images (copied: some are damaged) with the given split lists."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name in {*train, *val}:
        shutil.copy(shared_data / "bccd" / "Annotations" / f"{name}.xml", root / "Annotations")
        jpg = (shared_data / "bccd" / "JPEGImages" / f"{name}.jpg").read_bytes()
        (root / "JPEGImages" / f"{name}.jpg").write_bytes(jpg[: len(jpg) // 3] if name in truncate else jpg)
    for split, names in (("train", train), ("val", val)):
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def yolo_set(shared_data, root, labels=True):
    """Three cars_overhead images per split as a YOLO set (with or without their label files)."""
    for split in ("train", "valid"):
        (root / split / "images").mkdir(parents=True)
        if labels:
            (root / split / "labels").mkdir()
        for img in sorted((shared_data / "cars_overhead" / split / "images").iterdir())[:3]:
            shutil.copy(img, root / split / "images")
            if labels:
                shutil.copy(shared_data / "cars_overhead" / split / "labels" / (img.stem + ".txt"),
                            root / split / "labels")
    (root / "data.yaml").write_text("train: train/images\nval: valid/images\nnames: [car]\n")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = confident_dsod_nano(len(NAMES))
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, model_payload(model, model.config, NAMES, None))
    return path


def test_a_truncated_val_image_is_left_out_of_val_and_of_trainings_evaluation(shared_data, checkpoint,
                                                                               tmp_path, capsys):
    """The image that fails to decode is dropped with one counted line, its ground truth too; no other
    image is substituted (which the evaluator would see twice)."""
    bad = "BloodImage_00005"
    root = voc_set(shared_data, tmp_path / "voc", GOOD, [*GOOD[:2], bad], truncate={bad})
    common = [f"model={checkpoint}", "conf=0.3", "batch=2", "workers=0", "plots=false", "device=cpu",
              f"project={tmp_path}", "backend=torch"]
    assert main(["val", f"data={root}", "name=val", "json=" + str(tmp_path / "m.json"), *common]) == 0
    out = capsys.readouterr().out
    (line,) = [ln for ln in out.splitlines() if "could not be decoded" in ln]
    assert f"{bad}.jpg" in line and "1 image(s)" in line and "truncated" in line
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["num_images"] == 2 and len(m["images_left_out"]) == 1 and bad in m["images_left_out"][0]
    # the same two good images alone score the same: the bad one's ground truth is not counted
    clean = voc_set(shared_data, tmp_path / "clean", GOOD, GOOD[:2])
    assert main(["val", f"data={clean}", "name=clean", "json=" + str(tmp_path / "c.json"), *common]) == 0
    c = json.loads((tmp_path / "c.json").read_text())
    assert c["voc07_map50"] == m["voc07_map50"] and c["num_gt"] == m["num_gt"]

    assert main(["train", f"data={root}", "model=dsod-nano", "iterations=2", "val_interval=1", "batch=2",
                 "workers=0", "plots=false", "progress=false", f"project={tmp_path}", "name=train",
                 "precise_bn=false", "device=cpu"]) == 0
    out = capsys.readouterr().out
    assert "could not be decoded" in out and bad in out
    assert (tmp_path / "train" / "weights" / "best.pt").exists()


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/dsod-exploited",))


def test_hostile_and_broken_model_files_are_one_line(shared_data, checkpoint, tmp_path, capsys):
    """A checkpoint that loads with weights_only=True but names a 100000-px input, or whose tensors
    do not fit its config, and a damaged .onnx: each one line, before anything large is built."""
    import torch

    ckpt = load_checkpoint(checkpoint)
    huge = tmp_path / "huge.pt"
    torch.save({**ckpt, "model_config": {**ckpt["model_config"], "image_size": 100000}}, huge)
    mismatch = tmp_path / "mismatch.pt"
    torch.save({**ckpt, "model_config": {**ckpt["model_config"], "growth_rate": 8}}, mismatch)
    pickled = tmp_path / "pickled.pt"  # a pickle that would run code if loaded without weights_only
    torch.save({"model": _Exploit(), "model_config": {}}, pickled)
    onnx_bad = tmp_path / "bad.onnx"
    onnx_bad.write_bytes(b"\x08\x07garbage" * 50)
    (tmp_path / "img").mkdir()
    shutil.copy(shared_data / "bccd" / "JPEGImages" / f"{GOOD[0]}.jpg", tmp_path / "img")
    cases = {huge: "image_size=100000 is outside 16..4096", mismatch: "weights do not match its model_config",
             onnx_bad: "not a loadable ONNX model", pickled: "Python objects beyond tensors and plain data"}
    for path, message in cases.items():
        code = main(["predict", f"model={path}", f"source={tmp_path / 'img'}", "backend=torch"
                     if path.suffix == ".pt" else "backend=auto", f"project={tmp_path}"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and message in err and path.name in err, (path, err)
    assert not Path("/tmp/dsod-exploited").exists()


def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_previous_file(checkpoint, tmp_path):
    """A real process with a 1 MiB file-size limit (EFBIG at the write, as a full disk's ENOSPC): the
    save fails with one line naming the file, the previous checkpoint is untouched and no temporary
    is left."""
    target = tmp_path / "last.pt"
    target.write_bytes(b"previous")
    script = ("import resource, sys, torch\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
              "from dsod.files import OutOfSpace, atomic_write_text\n"
              "from dsod.model.checkpoint import save_checkpoint\n"
              "for write in (lambda: save_checkpoint(sys.argv[1], {'x': torch.zeros(1 << 20)}),\n"
              "              lambda: atomic_write_text(sys.argv[1], 'x' * (2 << 20))):\n"
              "    try:\n"
              "        write()\n"
              "    except OutOfSpace as e:\n"
              "        print(e)\n")
    r = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and not r.stderr.strip(), r  # torch.save's write and a plain one, one line each
    for line in lines:
        assert line == f"the file-size limit (ulimit -f) was reached while writing {target}; the previous " \
                       "last.pt is intact"
    assert target.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_full_disk_names_the_mount_point(tmp_path, monkeypatch):
    """ENOSPC at the write call (a full disk, simulated where no small filesystem can be mounted)."""
    import errno

    from dsod.files import OutOfSpace, atomic_write_text

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OutOfSpace, match=r"^no space left on /\S* while writing .*a.txt; nothing was written$"):
        atomic_write_text(tmp_path / "a.txt", "x")
    assert list(tmp_path.iterdir()) == []


def _voc_with_broken_boxes(shared_data, root, broken):
    """A VOC set of six BCCD images whose first ``broken`` annotation files have every box pushed
    outside the image (each box: a counted "box outside the image" problem)."""
    import xml.etree.ElementTree as ET

    names = sorted(p.stem for p in (shared_data / "bccd" / "Annotations").glob("*.xml"))[:6]
    voc_set(shared_data, root, names, names[:2])
    for name in names[:broken]:
        path = root / "Annotations" / f"{name}.xml"
        tree = ET.parse(path)
        for bb in tree.iter("bndbox"):
            for k in ("xmin", "xmax"):
                bb.find(k).text = str(float(bb.find(k).text) + 5000)
        tree.write(path)
    return root


def test_train_and_val_report_the_data_problems_and_training_refuses_too_few_boxes(shared_data, tmp_path, capsys):
    common = ["model=dsod-nano", "iterations=1", "batch=2", "workers=0", "plots=false", "progress=false",
              "precise_bn=false", "device=cpu", f"project={tmp_path}"]
    one = _voc_with_broken_boxes(shared_data, tmp_path / "set1", broken=1)
    assert main(["train", f"data={one}", "val=false", "name=one", *common]) == 0
    out = capsys.readouterr().out
    report = (tmp_path / "one" / "data_problems.txt").read_text()
    (head,) = [ln for ln in report.splitlines() if ln.startswith("data [train]")]
    assert head in out and "problem(s):" in head and "box outside the image" in head
    assert "BloodImage_00000.xml" in report and "likely fix" in report
    assert "2 image(s) are in both train and val" in out  # the split lists overlap

    most = _voc_with_broken_boxes(shared_data, tmp_path / "set5", broken=5)
    assert main(["train", f"data={most}", "val=false", "name=most", *common]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "bad_data_limit=0.5" in err and "First problem: " in err
    assert main(["train", f"data={most}", "val=false", "name=most2", "bad_data_limit=1", *common]) == 0
    capsys.readouterr()
    assert main(["val", f"data={one}", f"model={tmp_path / 'one' / 'weights' / 'last.pt'}", "name=v",
                 "plots=false", "workers=0", f"project={tmp_path}", "backend=torch"]) == 0
    out = capsys.readouterr().out
    assert "data [val]: 2 images" in out and (tmp_path / "v" / "data_problems.txt").exists()


def test_a_yolo_set_without_labels_is_refused_and_data_check_fails_on_an_empty_split(shared_data, tmp_path,
                                                                                    capsys):
    root = yolo_set(shared_data, tmp_path / "yolo", labels=False)
    assert main(["train", f"data={root / 'data.yaml'}", "model=dsod-nano", "iterations=1", "batch=2",
                 "workers=0", "val=false", f"project={tmp_path}", "device=cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "the train split has no usable box (3 images" in err

    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "annotations").mkdir()
    assert main(["data", "check", f"data={empty}", f"project={tmp_path}", "samples=0"]) != 0
    capsys.readouterr()


def test_resume_refuses_changed_classes_says_what_it_ignores_and_continues_time(shared_data, tmp_path, capsys):
    import csv

    from dsod.engine.trainer import TrainArgs, Trainer

    root = voc_set(shared_data, tmp_path / "data", GOOD, GOOD[:2])
    assert main(["train", f"data={root}", "model=dsod-nano", "iterations=2", "val_interval=1", "stop_at=1",
                 "batch=2", "workers=0", "plots=false", "progress=false", "precise_bn=false", "device=cpu",
                 f"project={tmp_path}", "name=run"]) == 0
    last = tmp_path / "run" / "weights" / "last.pt"
    rows = list(csv.DictReader(open(tmp_path / "run" / "results.csv")))
    assert [r["iteration"] for r in rows] == ["1"]

    resumed = Trainer(TrainArgs(resume=str(last), lr=0.5, progress=False, device="cpu"))
    assert resumed.time_offset == float(rows[0]["time_s"]) > 0
    assert any(n.startswith("resume: ignored lr=0.5") for n in resumed.notes), resumed.notes
    resumed.train()
    rows = list(csv.DictReader(open(tmp_path / "run" / "results.csv")))
    assert [r["iteration"] for r in rows] == ["1", "2"] and float(rows[1]["time_s"]) >= resumed.time_offset
    capsys.readouterr()

    xml = root / "Annotations" / f"{GOOD[0]}.xml"  # a fourth class appears in the data
    xml.write_text(xml.read_text().replace("<name>WBC</name>", "<name>Neutrophil</name>", 1))
    assert main(["train", f"resume={last}", "device=cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "trained on 3 classes" in err and "now has 4" in err


def test_predict_keeps_files_of_the_same_name_apart_and_skips_an_unreadable_one(shared_data, checkpoint,
                                                                               tmp_path, capsys):
    from PIL import Image

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    jpg = shared_data / "bccd" / "JPEGImages" / f"{GOOD[0]}.jpg"
    shutil.copy(jpg, src / "a.jpg")
    shutil.copy(shared_data / "bccd" / "JPEGImages" / f"{GOOD[1]}.jpg", src / "sub" / "a.jpg")
    Image.open(jpg).save(src / "a.png")
    (src / "broken.jpg").write_bytes(jpg.read_bytes()[:2000])
    assert main(["predict", f"model={checkpoint}", f"source={src}/**/*.*", "backend=torch", "conf=0.3",
                 f"project={tmp_path}", "name=p"]) == 0
    out = capsys.readouterr().out
    assert "1 image(s) skipped, could not be decoded: " in out and "broken.jpg" in out
    ids = sorted({d["image_id"] for d in json.loads((tmp_path / "p" / "predictions.json").read_text())})
    assert ids == ["a.jpg", "a.png", "sub/a.jpg"]
    drawn = sorted(str(p.relative_to(tmp_path / "p")) for p in (tmp_path / "p").rglob("*.jpg"))
    assert drawn == ["a.jpg.jpg", "a.png.jpg", "sub/a.jpg.jpg"]


def test_a_symlink_loop_and_a_linked_duplicate_add_no_images(shared_data, tmp_path):
    from dsod.data import load_dataset

    root = yolo_set(shared_data, tmp_path / "yolo", labels=True)
    os.symlink("..", root / "train" / "images" / "loop")  # images/loop -> images/.. -> images/loop ...
    os.symlink(root / "train" / "images", root / "train" / "images" / "again")
    spec = load_dataset(root / "data.yaml")
    assert len(spec.records("train")) == 3 and len(spec.records("val")) == 3


def test_a_nan_in_a_yolo_polygon_is_a_problem_not_a_box(tmp_path):
    """min()/max() over a polygon's coordinates skip a NaN silently: the line is refused by name."""
    from dsod.data.records import SplitReport
    from dsod.data.yolo import parse_label_file

    label = tmp_path / "a.txt"
    label.write_text("0 0.1 0.1 nan 0.2 0.3 0.3\n0 0.5 0.5 0.2 0.2\n0 nan 0.5 0.1 0.1\n")
    report = SplitReport("train")
    objects = parse_label_file(label, 640, 480, report)
    assert [o.where for o in objects] == ["line 2"]
    assert report.counts["non-finite coordinate"] == 2 and "a.txt: line 1: non-finite value" in report.problems[0]


def test_a_folder_that_is_not_an_image_folder_ends_the_scan_and_data_check_fails(shared_data, tmp_path,
                                                                                 monkeypatch, capsys):
    """``val: /usr`` looked through everything; the scan is bounded and says which folder it gave up on.
    ``path: /etc`` reads as empty splits: `data check` exits 1 saying so."""
    from dsod.data import yolo

    root = yolo_set(shared_data, tmp_path / "yolo", labels=False)
    monkeypatch.setattr(yolo, "MAX_SCAN_ENTRIES", 2)
    assert main(["data", "check", f"data={root / 'data.yaml'}", f"project={tmp_path}", "samples=0"]) == 1
    cap = capsys.readouterr()
    assert "looked at 2 entries without reaching the end" in cap.out and "train/images" in cap.out
    assert cap.err.strip() == "dsod data check: train unreadable, val unreadable: no usable image there"

    (tmp_path / "etc.yaml").write_text("path: /etc\ntrain: .\nval: .\nnames: [a]\n")
    monkeypatch.setattr(yolo, "MAX_SCAN_ENTRIES", 200_000)
    assert main(["data", "check", f"data={tmp_path / 'etc.yaml'}", f"project={tmp_path}", "samples=0"]) == 1
    assert capsys.readouterr().err.strip() == "dsod data check: train empty, val empty: no usable image there"
