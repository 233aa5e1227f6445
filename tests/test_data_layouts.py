"""Dataset layouts read as they are and the data package's module structure. Every dataset here is a handful of real images and annotations copied from ../shared/data
into tmp_path, laid out the way users' exports are: images/ + annotations/ (VOC XML), images/ +
labels/ (YOLO), split folders without a data.yaml, split lists as .csv or .txt, a relative VOC root."""
import ast
import random
import shutil
from pathlib import Path

import pytest
import yaml

from dsod.data import DatasetError, SplitReport, load_dataset
from dsod.data.spec import DEFAULT_VAL_FRACTION

DATA_PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dsod" / "data"


# ------------------------------------------------------------------------------------ fixtures
def bccd_stems(shared_data, n):
    return sorted(p.stem for p in (shared_data / "bccd" / "Annotations").glob("*.xml"))[:n]


def copy_bccd(shared_data, images: Path, annotations: Path, stems):
    """BCCD JPEGs and their VOC XMLs into two folders (copyfile: the shared files are read-only)."""
    images.mkdir(parents=True, exist_ok=True)
    annotations.mkdir(parents=True, exist_ok=True)
    for s in stems:
        shutil.copyfile(shared_data / "bccd" / "JPEGImages" / f"{s}.jpg", images / f"{s}.jpg")
        shutil.copyfile(shared_data / "bccd" / "Annotations" / f"{s}.xml", annotations / f"{s}.xml")


def copy_chess(shared_data, images: Path, labels: Path, split="train", n=4):
    """chess_rf100 photos and their YOLO labels; returns the stems (which contain dots: x_jpg.rf.<hash>)."""
    src = shared_data / "chess_rf100" / split
    stems = sorted(p.stem for p in (src / "labels").glob("*.txt"))[:n]
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for s in stems:
        shutil.copyfile(src / "images" / f"{s}.jpg", images / f"{s}.jpg")
        shutil.copyfile(src / "labels" / f"{s}.txt", labels / f"{s}.txt")
    return stems


@pytest.fixture
def chess_names(shared_data):
    return yaml.safe_load((shared_data / "chess_rf100" / "data.yaml").read_text())["names"]


# ------------------------------------------------------------------------------------- VOC layouts
def test_images_plus_annotations_folder_is_voc(shared_data, tmp_path):
    stems = bccd_stems(shared_data, 6)
    copy_bccd(shared_data, tmp_path / "web" / "images", tmp_path / "web" / "annotations", stems)
    spec = load_dataset(tmp_path / "web")  # was: "cannot tell the dataset format"
    assert spec.format == "voc" and spec.splits == ["train"]
    recs = spec.records("train")
    assert sorted(r.path.stem for r in recs) == stems
    assert all(r.path.parent == tmp_path / "web" / "images" for r in recs)
    assert spec.info.names == ["Platelets", "RBC", "WBC"] and sum(len(r.boxes) for r in recs) > 50
    assert any("images/ + annotations/ (VOC XML)" in n for n in spec.notes)
    assert spec.report("train").problems == []
    # an image without its XML is still reported (the images/ folder belongs to this split)
    shutil.copyfile(shared_data / "bccd" / "JPEGImages" / "BloodImage_00100.jpg",
                    tmp_path / "web" / "images" / "extra.jpg")
    spec = load_dataset(tmp_path / "web")
    assert len(spec.records("train")) == 6
    assert spec.report("train").counts == {"image without annotation": 1}


def test_split_lists_as_csv_and_txt(shared_data, tmp_path):
    root = tmp_path / "web"
    stems = bccd_stems(shared_data, 8)
    copy_bccd(shared_data, root / "images", root / "annotations", stems)
    # a spreadsheet export: header, file names, one row per box (names repeat), a BOM
    rows = [f"{s}.jpg,RBC" for s in stems[:5] for _ in range(2)]
    body = "".join(f"{i},{r}\n" for i, r in enumerate(rows))
    (root / "train.csv").write_text("\ufeffid,filename,class\n" + body)
    (root / "val.txt").write_text(f"{stems[5]}\n{stems[6]}\n# a comment\n\nnot_there\n")  # stems
    spec = load_dataset(root)
    assert spec.format == "voc" and spec.splits == ["train", "val"]
    assert [r.path.stem for r in spec.records("train")] == stems[:5]
    assert [r.path.stem for r in spec.records("val")] == stems[5:7]
    assert spec.report("train").problems == []
    val = spec.report("val")
    assert val.counts == {"missing annotation file": 1} and "not_there.xml" in val.problems[0]
    assert any("train: train.csv; val: val.txt" in n for n in spec.notes)
    # the same lists named in a YAML work as VOC split entries too
    cfg = {"path": "web", "train": "train.csv", "val": "val.txt"}
    (tmp_path / "web.yaml").write_text(yaml.safe_dump(cfg))
    spec = load_dataset(tmp_path / "web.yaml")
    assert spec.format == "voc" and len(spec.records("train")) == 5


def test_voc_yaml_images_key_and_summarised_missing_images(shared_data, tmp_path):
    root = tmp_path / "ds"
    stems = bccd_stems(shared_data, 7)
    copy_bccd(shared_data, root / "photos", root / "xml_files", stems)  # names no rule can guess
    cfg = {"path": "ds", "format": "voc", "train": "xml_files"}
    (tmp_path / "no_images.yaml").write_text(yaml.safe_dump(cfg))
    spec = load_dataset(tmp_path / "no_images.yaml")
    assert spec.records("train") == []
    rep = spec.report("train")
    # 7 identical problems: one line with the first file, the count, the first 3 files and the fix
    assert rep.counts == {"missing image": 7} and len(rep.all_problems) == 7
    (line,) = rep.problems
    assert line.startswith(str(root / "xml_files" / f"{stems[0]}.xml") + ": image not found")
    assert f"[7 times in 7 files: {stems[0]}.xml, {stems[1]}.xml, {stems[2]}.xml, ...;" in line
    assert "likely fix:" in line and "images:" in line
    assert spec.info.problems == [line]
    cfg["images"] = "photos"  # an image folder separate from the XML folder
    (tmp_path / "images.yaml").write_text(yaml.safe_dump(cfg))
    spec = load_dataset(tmp_path / "images.yaml")
    recs = spec.records("train")
    assert sorted(r.path.stem for r in recs) == stems and all(r.path.parent.name == "photos" for r in recs)
    assert spec.report("train").problems == []
    cfg["images"] = "nowhere"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(DatasetError, match="images: 'nowhere' not found"):
        load_dataset(tmp_path / "bad.yaml").records("train")


def test_relative_voc_root_is_not_doubled(shared_data, tmp_path, monkeypatch):
    stems = bccd_stems(shared_data, 4)
    copy_bccd(shared_data, tmp_path / "voc" / "JPEGImages", tmp_path / "voc" / "Annotations", stems)
    (tmp_path / "voc" / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "voc" / "ImageSets" / "Main" / "train.txt").write_text("\n".join(stems) + "\n")
    monkeypatch.chdir(tmp_path)
    spec = load_dataset("voc")  # was: "'voc/ImageSets/Main/train.txt' not found at voc/voc/..."
    assert len(spec.records("train")) == 4
    assert spec.report("train").notes == []
    copy_bccd(shared_data, tmp_path / "flat", tmp_path / "flat", stems[:1])  # XML and JPEG side by side
    flat = load_dataset("flat")
    assert len(flat.records("train")) == 1 and flat.report("train").notes == []
    # a YAML whose split path repeats its own root still reads, and the note says what to change
    (tmp_path / "v.yaml").write_text(yaml.safe_dump({"path": "voc", "train": "voc/ImageSets/Main/train.txt"}))
    spec = load_dataset("v.yaml")
    assert len(spec.records("train")) == 4
    assert any("drop the leading 'voc/'" in n for n in spec.report("train").notes)


def test_voc_split_folders_without_yaml(shared_data, tmp_path):
    stems = bccd_stems(shared_data, 6)
    copy_bccd(shared_data, tmp_path / "d" / "train", tmp_path / "d" / "train", stems[:4])  # XML beside JPEG
    copy_bccd(shared_data, tmp_path / "d" / "valid" / "images", tmp_path / "d" / "valid" / "annotations",
              stems[4:])
    spec = load_dataset(tmp_path / "d")
    assert spec.format == "voc" and spec.splits == ["train", "val"]
    assert [len(spec.records(s)) for s in spec.splits] == [4, 2]
    assert all(r.path.parent.name == "images" for r in spec.records("val"))


# ------------------------------------------------------------------------------------ YOLO layouts
def test_images_plus_labels_folder_is_yolo(shared_data, tmp_path, chess_names):
    root = tmp_path / "y"
    stems = copy_chess(shared_data, root / "images", root / "labels")
    (root / "classes.txt").write_text("\n".join(chess_names) + "\n")
    spec = load_dataset(root)
    assert spec.format == "yolo" and spec.splits == ["train"] and spec.info.names == chess_names
    recs = spec.records("train")
    assert sorted(r.path.stem for r in recs) == stems and all(len(r.boxes) for r in recs)
    assert (recs[0].width, recs[0].height) == (2048, 1371)
    assert spec.report("train").problems == []
    # the same records as the original dataset gives for these images
    orig = {r.path.stem: r for r in load_dataset(shared_data / "chess_rf100").records("train")}
    assert all((r.boxes == orig[r.path.stem].boxes).all() for r in recs)
    # Ultralytics' images/{train,val} + labels/{train,val}: one split per subfolder
    root2 = tmp_path / "u"
    copy_chess(shared_data, root2 / "images" / "train", root2 / "labels" / "train", n=3)
    copy_chess(shared_data, root2 / "images" / "val", root2 / "labels" / "val", split="valid", n=2)
    spec = load_dataset(root2)
    assert spec.format == "yolo" and spec.splits == ["train", "val"]
    assert [len(spec.records(s)) for s in spec.splits] == [3, 2]
    assert any("no names given" in n for n in spec.notes)  # no classes.txt: ids become names


def test_yolo_split_folders_without_yaml_and_csv_of_names(shared_data, tmp_path):
    root = tmp_path / "rf"
    copy_chess(shared_data, root / "train" / "images", root / "train" / "labels", n=3)
    copy_chess(shared_data, root / "valid" / "images", root / "valid" / "labels", split="valid", n=2)
    spec = load_dataset(root)  # chess_rf100's layout, without its data.yaml
    assert spec.format == "yolo" and spec.splits == ["train", "val"]
    assert [len(spec.records(s)) for s in spec.splits] == [3, 2]
    # a .csv of bare stems (with dots) resolves against images/
    flat = tmp_path / "flat"
    stems = copy_chess(shared_data, flat / "images", flat / "labels", n=4)
    (flat / "train.csv").write_text("image\n" + "\n".join(stems[:3]) + "\n")
    (flat / "val.csv").write_text(f"{stems[3]}.jpg\nmissing.jpg\n")
    spec = load_dataset(flat)
    assert spec.format == "yolo" and [len(spec.records(s)) for s in spec.splits] == [3, 1]
    assert spec.report("val").counts == {"missing image": 1}


def test_folders_that_are_no_dataset_say_what_is_expected(tmp_path):
    (tmp_path / "a" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match="images/ but no annotations/ .* or labels/"):
        load_dataset(tmp_path / "a")
    (tmp_path / "b" / "stuff").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"cannot tell the dataset format: expected .*images/ with annot"):
        load_dataset(tmp_path / "b")


# ----------------------------------------------------------------------------- derived val split
def test_train_only_dataset_gets_a_seeded_val_split(shared_data, tmp_path):
    stems = bccd_stems(shared_data, 20)
    copy_bccd(shared_data, tmp_path / "a" / "images", tmp_path / "a" / "annotations", stems)
    assert load_dataset(tmp_path / "a").splits == ["train"]  # checking/evaluating: read as it is
    spec = load_dataset(tmp_path / "a", val_fraction=DEFAULT_VAL_FRACTION)
    assert spec.splits == ["train", "val"]
    train, val = spec.records("train"), spec.records("val")
    assert (len(train), len(val)) == (17, 3)  # round(0.15 * 20)
    assert {r.path.stem for r in train}.isdisjoint(r.path.stem for r in val)
    assert sorted(r.path.stem for r in train + val) == stems
    assert spec.derived_val == sorted(f"images/{r.path.name}" for r in val)
    assert spec.derived_val_note.endswith("no val split: holding out 15% (3 of 20) training images, seed 0; "
                                          "val_fraction= changes it")
    assert spec.derived_val_note in spec.notes and spec.report("val").notes

    # the choice depends on the file names and the seed only: copies of the same files under other
    # folder names, listed (train.txt) in other orders, hold out the same images
    for k, name in enumerate(("b", "c")):
        root = tmp_path / name
        copy_bccd(shared_data, root / "images", root / "annotations", stems)
        order = list(stems)
        random.Random(k).shuffle(order)
        (root / "train.txt").write_text("\n".join(f"images/{s}.jpg" for s in order) + "\n")
        other = load_dataset(root, val_fraction=0.15)
        kept = [s for s in order if f"images/{s}.jpg" not in other.derived_val]
        assert [r.path.stem for r in other.records("train")] == kept  # in the list's order
        assert other.derived_val == spec.derived_val
    assert load_dataset(tmp_path / "a", val_fraction=0.15, seed=1).derived_val != spec.derived_val
    assert len(load_dataset(tmp_path / "a", val_fraction=0.5).records("val")) == 10
    # an earlier run's list is held out exactly (args.yaml -> rerun), whatever the seed
    again = load_dataset(tmp_path / "a", val_images=spec.derived_val, seed=7)
    assert again.derived_val == spec.derived_val and len(again.records("train")) == 17
    with pytest.raises(DatasetError, match=r"val_fraction=1\.5 must be in \[0, 1\)"):
        load_dataset(tmp_path / "a", val_fraction=1.5)


def test_no_val_split_is_derived_when_there_is_one(shared_data):
    spec = load_dataset(shared_data / "bccd", val_fraction=0.15)
    assert spec.splits == ["train", "val", "trainval"] and spec.derived_val is None
    assert (len(spec.records("train")), len(spec.records("val"))) == (205, 87)
    with pytest.raises(DatasetError, match="val_fraction=-0.1 must be in"):  # checked even when unused
        load_dataset(shared_data / "bccd", val_fraction=-0.1)
    one = load_dataset(shared_data / "roboflow_fixtures" / "chess", val_fraction=0.15)  # 11 images, no val
    assert (len(one.records("train")), len(one.records("val"))) == (9, 2)


# ---------------------------------------------------------------------------- repeated problems
def test_split_report_summarises_repeated_problems_only():
    rep = SplitReport("train")
    for i in range(5):
        rep.problem(f"ann/{i}.xml", f"object 1 box [{i}, 0, {i}, 9]: zero size; skipped", "zero-size box",
                    same="zero-size box")
    for i in range(3):
        rep.problem(f"img/{i}.jpg", "empty file (0 bytes); image skipped", "unusable image")
    rep.problem("a.txt", "line 2: class id '1.5' is not an integer; skipped", "unknown class")
    lines = rep.problems
    assert len(lines) == 1 + 3 + 1 and rep.n_problems == len(rep.all_problems) == 9
    assert lines[0] == ("ann/0.xml: object 1 box [0, 0, 0, 9]: zero size; skipped [5 times in 5 files: "
                        "0.xml, 1.xml, 2.xml, ...; likely fix: fix or delete these boxes in the annotation "
                        "tool]")
    assert lines[1:4] == [f"img/{i}.jpg: empty file (0 bytes); image skipped" for i in range(3)]
    assert rep.counts == {"zero-size box": 5, "unusable image": 3, "unknown class": 1}
    assert rep.summary().startswith("9 problem(s): 5 zero-size box")
    # without same=, reasons that differ only in numbers and quoted values are the same problem
    other = SplitReport("train")
    for i, tok in enumerate("abcd"):
        other.problem(f"l/{i}.txt", f"line {i + 2}: non-numeric value '{tok}'; skipped", "non-numeric")
    other.problem("l/9.txt", "line 3: class id '1.5' is not an integer; skipped", "non-numeric")
    assert len(other.problems) == 2 and other.problems[0].startswith("l/0.txt: line 2: non-numeric value 'a'")
    for i in range(4):  # notes too: many negatives are one line
        rep.note(f"img/n{i}.jpg", "no label file: used as a negative (no objects)", "negatives")
    assert len(rep.notes) == 1 and "[4 times in 4 files" in rep.notes[0]
    strict = SplitReport("train", strict=True)
    with pytest.raises(DatasetError, match=r"^x\.xml: bad$"):
        strict.problem("x.xml", "bad", "malformed annotation file")


# --------------------------------------------------------------------------------- module structure
def _data_imports():
    """module -> the dsod.data modules it imports (also inside functions)."""
    modules = {p.stem for p in DATA_PACKAGE.glob("*.py")}
    graph = {}
    for path in DATA_PACKAGE.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dsod.data."):
                deps.add(node.module.split(".")[2])
        graph[path.stem] = deps & modules - {"__init__"}
    return graph


def test_data_modules_import_no_cycles_and_stay_small():
    graph = _data_imports()
    assert graph["records"] <= {"images"}  # the contract depends on nothing but decoding
    for reader in ("voc", "yolo", "coco"):
        assert "spec" not in graph[reader] and "layout" not in graph[reader], reader

    def reaches(start, target, seen):
        for d in graph[start]:
            if d == target or (d not in seen and (seen.add(d) or reaches(d, target, seen))):
                return True
        return False
    cycles = [m for m in graph if reaches(m, m, set())]
    assert not cycles, f"modules in an import cycle: {cycles}"
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in DATA_PACKAGE.glob("*.py")}
    assert max(sizes.values()) <= 400, sizes
