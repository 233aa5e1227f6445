"""A table of bad inputs through ``dsod data check``, ``train``, ``val`` and ``predict``: every case made
of real files (copies of ../shared/data, damaged on purpose) and run as a real ``python -m dsod``
process. Each run is classified:

- named: the problem is said (a one-line refusal naming the file or key, or a counted, reported skip);
- traceback: a Python traceback reached the user;
- lost: an output that should exist is missing, or two inputs share one output;
- silent: exit 0 with the problem unmentioned.

    PYTHONPATH=src python benchmarks/bad_inputs.py [shared=../shared/data] [json=bad_inputs.json]

Prints the table per case and the counts per command; exits 1 unless there are 0 tracebacks, 0 lost
and 0 silent. One training iteration per train case (dsod-nano, a few images): about 2-4 minutes
on 2 cores.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

NAMES = ["Platelets", "RBC", "WBC"]  # BCCD's classes as the VOC reader sorts them
QUICK = ["model=dsod-nano", "iterations=1", "batch=2", "workers=0", "plots=false", "progress=false",
         "precise_bn=false", "device=cpu", "val=false"]


@dataclass
class Run:
    command: str  # check | train | val | predict
    args: List[str]
    expect: str  # regex that says the problem was named
    lost: Optional[Callable[[Path], str]] = None  # run folder -> what was lost ("" if nothing)


@dataclass
class Case:
    name: str
    build: Callable[[Path, Path], Dict[str, str]]  # (work folder, shared data) -> placeholders
    runs: List[Run] = field(default_factory=list)


# ------------------------------------------------------------------------------------ datasets
def voc(root: Path, shared: Path, n: int = 4, val: int = 2) -> Path:
    names = sorted(p.stem for p in (shared / "bccd" / "Annotations").glob("*.xml"))[:n]
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for s in names:
        shutil.copy(shared / "bccd" / "Annotations" / f"{s}.xml", root / "Annotations")
        shutil.copy(shared / "bccd" / "JPEGImages" / f"{s}.jpg", root / "JPEGImages")
    (root / "ImageSets/Main/train.txt").write_text("\n".join(names[val:]) + "\n")
    (root / "ImageSets/Main/val.txt").write_text("\n".join(names[:val]) + "\n")
    return root


def yolo(root: Path, shared: Path, n: int = 4, labels: bool = True, names: str = "[car]") -> Path:
    for split in ("train", "valid"):
        (root / split / "images").mkdir(parents=True)
        if labels:
            (root / split / "labels").mkdir()
        for img in sorted((shared / "cars_overhead" / split / "images").iterdir())[:n]:
            shutil.copy(img, root / split / "images")
            if labels:
                shutil.copy(shared / "cars_overhead" / split / "labels" / f"{img.stem}.txt", root / split / "labels")
    (root / "data.yaml").write_text(f"train: train/images\nval: valid/images\nnames: {names}\n")
    return root / "data.yaml"


def first(folder: Path, pattern: str) -> Path:
    return sorted(folder.glob(pattern))[0]


def edit_xml(path: Path, fn) -> None:
    tree = ET.parse(path)
    fn(tree)
    tree.write(path)


def checkpoint(path: Path, **config_changes) -> Path:
    import torch

    from dsod import build_model
    from dsod.model.checkpoint import model_payload

    model = build_model("dsod-nano", num_classes=len(NAMES) + 1)
    payload = model_payload(model, model.config, NAMES, None)
    payload["model_config"].update(config_changes)
    torch.save(payload, path)
    return path


# ------------------------------------------------------------------------------------ the cases
def _class_out_of_range(w, s):
    data = yolo(w / "d", s)
    label = first(w / "d" / "train" / "labels", "*.txt")
    label.write_text(label.read_text().rstrip("\n") + "\n7 0.5 0.5 0.1 0.1\n")
    return {"data": str(data)}


def _nan_coords(w, s):
    data = yolo(w / "d", s)
    label = first(w / "d" / "train" / "labels", "*.txt")
    label.write_text(label.read_text().rstrip("\n") + "\n0 nan 0.5 0.1 0.1\n0 0.1 0.1 nan 0.2 0.3 0.3\n")
    return {"data": str(data)}


def _outside_boxes(w, s):
    data = voc(w / "d", s)

    def push(tree):
        for bb in tree.iter("bndbox"):
            for k in ("xmin", "xmax"):
                bb.find(k).text = str(float(bb.find(k).text) + 5000)
    for xml in sorted((data / "Annotations").glob("*.xml"))[2:3]:
        edit_xml(xml, push)
    return {"data": str(data)}


def _all_boxes_broken(w, s):
    data = voc(w / "d", s)

    def zero(tree):
        for bb in tree.iter("bndbox"):
            bb.find("xmax").text = bb.find("xmin").text
    for xml in sorted((data / "Annotations").glob("*.xml")):
        edit_xml(xml, zero)
    return {"data": str(data)}


def _no_labels(w, s):
    return {"data": str(yolo(w / "d", s, labels=False))}


def _truncated_val(w, s):
    data = voc(w / "d", s)
    jpg = first(data / "JPEGImages", "*.jpg")  # the first image is in val
    jpg.write_bytes(jpg.read_bytes()[:3000])
    return {"data": str(data), "model": str(checkpoint(w / "m.pt"))}


def _not_an_image(w, s):
    data = voc(w / "d", s)
    sorted((data / "JPEGImages").glob("*.jpg"))[3].write_text("this is not a JPEG")
    return {"data": str(data)}


def _missing_annotation(w, s):
    data = voc(w / "d", s)
    sorted((data / "Annotations").glob("*.xml"))[3].unlink()
    return {"data": str(data)}


def _malformed_xml(w, s):
    data = voc(w / "d", s)
    sorted((data / "Annotations").glob("*.xml"))[3].write_text("<annotation><object><name>RBC")
    return {"data": str(data)}


def _empty_split(w, s):
    (w / "d" / "images").mkdir(parents=True)
    (w / "d" / "annotations").mkdir()
    return {"data": str(w / "d")}


def _path_etc(w, s):
    (w / "etc.yaml").write_text("path: /etc\ntrain: .\nval: .\nnames: [a]\n")
    return {"data": str(w / "etc.yaml")}


def _wrong_path(w, s):
    return {"data": str(w / "nowhere"), "model": str(checkpoint(w / "m.pt"))}


def _overlap(w, s):
    data = voc(w / "d", s)
    (data / "ImageSets/Main/val.txt").write_text((data / "ImageSets/Main/train.txt").read_text())
    return {"data": str(data)}


def _symlink_loop(w, s):
    data = yolo(w / "d", s)
    os.symlink("..", w / "d" / "train" / "images" / "loop")
    return {"data": str(data), "n": "4"}


def _same_stems(w, s):
    from PIL import Image

    src = w / "src"
    (src / "sub").mkdir(parents=True)
    jpgs = sorted((s / "bccd" / "JPEGImages").glob("*.jpg"))[:2]
    shutil.copy(jpgs[0], src / "a.jpg")
    shutil.copy(jpgs[1], src / "sub" / "a.jpg")
    Image.open(jpgs[0]).save(src / "a.png")
    return {"source": f"{src}/**/*.*", "model": str(checkpoint(w / "m.pt"))}


def _unreadable_among_good(w, s):
    src = w / "src"
    src.mkdir()
    jpgs = sorted((s / "bccd" / "JPEGImages").glob("*.jpg"))[:2]
    for j in jpgs:
        shutil.copy(j, src)
    (src / "broken.jpg").write_bytes(jpgs[0].read_bytes()[:2000])
    return {"source": str(src), "model": str(checkpoint(w / "m.pt"))}


def _model_file(kind):
    def build(w, s):
        src = w / "src"
        src.mkdir()
        shutil.copy(first(s / "bccd" / "JPEGImages", "*.jpg"), src)
        data = voc(w / "d", s)
        if kind == "huge":
            model = checkpoint(w / "m.pt", image_size=100000)
        elif kind == "mismatch":
            model = checkpoint(w / "m.pt", growth_rate=8)
        elif kind == "onnx":
            model = w / "m.onnx"
            model.write_bytes(b"\x08\x07garbage" * 50)
        elif kind == "pickle":
            import torch
            model = w / "m.pt"
            torch.save({"model": _Exploit(), "model_config": {}}, model)
        else:  # text
            model = w / "m.pt"
            model.write_text("not a checkpoint\n")
        return {"source": str(src), "model": str(model), "data": str(data)}
    return build


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo exploited",))


def _resume_changed_classes(w, s):
    data = voc(w / "d", s)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "DSOD_CPU_PROCESSES": "1"}
    subprocess.run([sys.executable, "-m", "dsod", "train", f"data={data}", *QUICK, f"project={w}", "name=r"],
                   check=True, capture_output=True, env=env)
    xml = first(data / "Annotations", "*.xml")
    xml.write_text(xml.read_text().replace("<name>RBC</name>", "<name>Neutrophil</name>", 1))
    return {"resume": str(w / "r" / "weights" / "last.pt")}


def _no_dup_ids(expected: int):
    def lost(run_dir: Path) -> str:
        p = run_dir / "predictions.json"
        if not p.exists():
            return "no predictions.json"
        ids = {d["image_id"] for d in json.loads(p.read_text())}
        drawn = len(list(run_dir.rglob("*.jpg")))
        if len(ids) < expected or drawn < expected:  # two inputs shared an id or a drawn file
            return f"{len(ids)} image ids and {drawn} drawn images for {expected} inputs"
        return ""
    return lost


CASES = [
    Case("class id beyond the names list", _class_out_of_range, [
        Run("check", ["data={data}"], r"unknown class|class id"),
        Run("train", ["data={data}", *QUICK], r"unknown class|class id")]),
    Case("NaN coordinate", _nan_coords, [
        Run("check", ["data={data}"], r"non-finite|nan|non-numeric"),
        Run("train", ["data={data}", *QUICK], r"non-finite|nan|non-numeric")]),
    Case("boxes far outside the image", _outside_boxes, [
        Run("check", ["data={data}"], r"outside"),
        Run("train", ["data={data}", *QUICK], r"outside")]),
    Case("every box zero-size", _all_boxes_broken, [
        Run("check", ["data={data}"], r"zero-size"),
        Run("train", ["data={data}", *QUICK], r"no usable box")]),
    Case("YOLO set without labels/", _no_labels, [
        Run("check", ["data={data}"], r"no label file|images without label"),
        Run("train", ["data={data}", *QUICK], r"no usable box")]),
    Case("truncated image in val", _truncated_val, [
        Run("check", ["data={data}"], r"truncated"),
        Run("train", ["data={data}", *QUICK[:-1], "val=true"], r"could not be decoded"),
        Run("val", ["data={data}", "model={model}", "backend=torch", "plots=false"], r"could not be decoded")]),
    Case("a text file named .jpg", _not_an_image, [
        Run("check", ["data={data}"], r"unusable image|not an image|cannot identify|truncated"),
        Run("train", ["data={data}", *QUICK], r"unusable image|not an image|cannot identify")]),
    Case("split list names a missing annotation", _missing_annotation, [
        Run("check", ["data={data}"], r"annotation"),
        Run("train", ["data={data}", *QUICK], r"annotation")]),
    Case("malformed XML", _malformed_xml, [
        Run("check", ["data={data}"], r"malformed"),
        Run("train", ["data={data}", *QUICK], r"malformed")]),
    Case("an empty dataset", _empty_split, [
        Run("check", ["data={data}"], r"no annotations/"),
        Run("train", ["data={data}", *QUICK], r"no annotations/")]),
    Case("a YAML whose path: is /etc", _path_etc, [
        Run("check", ["data={data}"], r"no usable image|no image"),
        Run("train", ["data={data}", *QUICK], r"no usable image|no image")]),
    Case("data= that does not exist", _wrong_path, [
        Run("check", ["data={data}"], r"nowhere"),
        Run("train", ["data={data}", *QUICK], r"nowhere"),
        Run("val", ["data={data}", "model={model}"], r"nowhere")]),
    Case("train and val lists overlap", _overlap, [
        Run("train", ["data={data}", *QUICK], r"in both train and val")]),
    Case("a symlink loop in images/", _symlink_loop, [
        Run("check", ["data={data}"], r"\[train\] 4 images"),
        Run("train", ["data={data}", *QUICK], r"data \[train\]: 4 images")]),
    Case("same file names in subfolders and formats", _same_stems, [
        Run("predict", ["source={source}", "model={model}", "backend=torch"], r"3 image\(s\)",
            _no_dup_ids(3))]),
    Case("an unreadable image among good ones", _unreadable_among_good, [
        Run("predict", ["source={source}", "model={model}", "backend=torch"], r"1 image\(s\) skipped",
            _no_dup_ids(2))]),
    Case("checkpoint with image_size=100000", _model_file("huge"), [
        Run("predict", ["source={source}", "model={model}", "backend=torch"], r"image_size=100000 is outside"),
        Run("val", ["data={data}", "model={model}", "backend=torch"], r"image_size=100000 is outside")]),
    Case("checkpoint tensors that do not fit its config", _model_file("mismatch"), [
        Run("predict", ["source={source}", "model={model}", "backend=torch"], r"do not match its model_config")]),
    Case("damaged .onnx", _model_file("onnx"), [
        Run("predict", ["source={source}", "model={model}"], r"not a loadable ONNX model")]),
    Case("a pickle that runs code", _model_file("pickle"), [
        Run("predict", ["source={source}", "model={model}", "backend=torch"], r"never executed")]),
    Case("a text file as model", _model_file("text"), [
        Run("predict", ["source={source}", "model={model}", "backend=torch"], r"not a PyTorch checkpoint file")]),
    Case("bad CLI values", _wrong_path, [
        Run("train", ["data={data}", "batch=-1"], r"batch"),
        Run("train", ["data={data}", "modle=dsod300"], r"modle"),
        Run("predict", ["source=x", "model={model}", "device=cuda"], r"cuda|CUDA")]),
    Case("resume after the classes changed", _resume_changed_classes, [
        Run("train", ["resume={resume}", "device=cpu"], r"trained on 3 classes")]),
]


def run_case(case: Case, shared: Path, env: Dict[str, str]) -> List[Dict[str, str]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        values = case.build(work, shared)
        for i, r in enumerate(case.runs):
            args = [a.format(**values) for a in r.args]
            cmd = ["data", "check"] if r.command == "check" else [r.command]
            run_dir = work / "runs" / f"r{i}"
            proc = subprocess.run([sys.executable, "-m", "dsod", *cmd, *args, f"project={work / 'runs'}",
                                   f"name=r{i}", "exist_ok=true"], capture_output=True, text=True, env=env,
                                  timeout=600)
            text = proc.stdout + proc.stderr
            if "Traceback (most recent call last)" in proc.stderr or proc.returncode not in (0, 1, 2):
                verdict = "traceback"
            elif r.lost is not None and proc.returncode == 0 and r.lost(run_dir):
                verdict = "lost"
            elif re.search(r.expect, text, re.IGNORECASE):
                verdict = "named"
            else:
                verdict = "silent"
            said = [ln for ln in text.splitlines() if re.search(r.expect, ln, re.IGNORECASE)]
            line = (said or proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or [""])[0 if said else -1]
            rows.append({"case": case.name, "command": r.command, "exit": proc.returncode, "verdict": verdict,
                         "says": line[:150]})
    return rows


def main(argv: List[str]) -> int:
    opts = dict(a.split("=", 1) for a in argv)
    shared = Path(opts.get("shared", ROOT.parent / "shared" / "data")).resolve()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "DSOD_CPU_PROCESSES": "1", "OMP_NUM_THREADS": "1"}
    rows = []
    for case in CASES:
        for row in run_case(case, shared, env):
            rows.append(row)
            print(f"{row['verdict']:9s} {row['command']:7s} exit {row['exit']}  {row['case']}: {row['says']}",
                  flush=True)
    kinds = ("named", "traceback", "lost", "silent")
    print(f"\n{'command':8s} " + " ".join(f"{k:>9s}" for k in kinds))
    for command in ("check", "train", "val", "predict"):
        counts = [sum(1 for r in rows if r["command"] == command and r["verdict"] == k) for k in kinds]
        print(f"{command:8s} " + " ".join(f"{c:9d}" for c in counts))
    totals = {k: sum(1 for r in rows if r["verdict"] == k) for k in kinds}
    print(f"{'all':8s} " + " ".join(f"{totals[k]:9d}" for k in kinds))
    if opts.get("json"):
        Path(opts["json"]).write_text(json.dumps({"rows": rows, "totals": totals}, indent=1))
    return 0 if totals["traceback"] == totals["lost"] == totals["silent"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
