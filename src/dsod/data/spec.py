"""``load_dataset(data)``: one entry point for VOC, COCO and YOLO datasets, with honest problem reports.

``data`` is one of
- a dataset YAML (Ultralytics style, plus ``format:`` and, for COCO and VOC, ``images:``)::

      path: ../VOCdevkit          # root; relative to this YAML's folder (default: that folder)
      format: voc                 # voc | coco | yolo; detected when absent
      train: [VOC2007/ImageSets/Main/trainval.txt, VOC2012/ImageSets/Main/trainval.txt]
      val: VOC2007/ImageSets/Main/test.txt
      names: [aeroplane, bicycle, ...]   # or {0: aeroplane, 1: bicycle}; optional for voc and coco
      images: photos              # optional: the image folder, when it is not where the format says

  Split entries are a path or a list of paths, relative to ``path``: VOC ``ImageSets/Main/*.txt`` id
  lists (ids resolve to ``<list>/../../Annotations/<id>.xml`` and ``../../JPEGImages/<id>.*``), other
  ``.txt``/``.csv`` lists of image names or stems, or folders of XML files (images beside them, in
  ``JPEGImages/`` or ``images/`` next to them, or in ``images:``); COCO annotation JSONs (images beside
  the JSON unless ``images:`` says where); YOLO image folders or list files (labels in the sibling
  ``labels/`` folder, Ultralytics rule). Paths that do not exist fall back to an existing tail of the
  path (``layout``), with a note.
- a dataset folder, read as it is laid out (``layout.read_folder``): a VOC root (``Annotations/``,
  ``JPEGImages/``, ``ImageSets/Main/{train,val,trainval,test}.txt``); a folder of VOC XML files with
  their images beside them (one split, ``train``); ``images/`` + ``annotations/`` (VOC XML) or ``images/``
  + ``labels/`` (YOLO txt), with splits from ``train.csv``/``val.txt`` ... lists beside them or from
  ``images/train`` ... subfolders; ``train/``, ``valid/``, ``test/`` folders each holding one of those;
  a folder holding ``data.yaml``;
- a COCO JSON (one split, named after the file or its folder: ``val``/``valid`` -> ``val``, ``test``
  -> ``test``, otherwise ``train``).

A dataset with a train split and no val split gets a seeded one when asked (``val_fraction=``, see
``load_dataset``).

Problems and notes (``SplitReport``, ``DatasetInfo.problems``) and the box conventions every reader
follows are described in ``records``, the contract the readers share; this module only resolves
``data=`` (through ``layout``) and dispatches to the readers.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from . import coco, voc, yolo
from .images import MAX_PIXELS
from .layout import FORMATS, Layout, find_yaml, read_folder, read_yaml, resolve_entry, split_token
from .records import DatasetError, DatasetInfo, ImageRecord, RawImage, SplitReport, build_records

# The share of a train-only dataset's images that training holds out as "val" (``val_fraction=``).
DEFAULT_VAL_FRACTION = 0.15


class DatasetSpec:
    """A resolved dataset description. ``info`` (names, format, category ids, root, problems),
    ``splits`` (the split names it defines) and ``records(split)`` (cached ``ImageRecord`` lists;
    problems go to ``report(split)`` and ``info.problems``).

    A dataset with a train split and no val split gets one when ``val_fraction`` (or ``val_images``)
    is given: see ``load_dataset``. ``derived_val`` then lists the held-out images (paths relative to
    the root, sorted) and ``derived_val_note`` says what was done (also in ``notes``); both are None
    otherwise."""

    def __init__(self, data: str, layout: Layout, strict: bool = False, max_pixels: int = MAX_PIXELS,
                 val_fraction: Optional[float] = None, seed: int = 0,
                 val_images: Optional[Sequence[str]] = None):
        if layout.fmt not in FORMATS:
            raise DatasetError(f"data={data}: unknown format '{layout.fmt}'; valid: {', '.join(FORMATS)}")
        if not layout.entries:
            raise DatasetError(f"data={data}: no splits defined (expected train/val/test keys)")
        if val_fraction is not None and not 0.0 <= val_fraction < 1.0:
            raise DatasetError(f"data={data}: val_fraction={val_fraction:g} must be in [0, 1)")
        self.data, self.format, self.root, self.yaml_dir = data, layout.fmt, layout.root, layout.yaml_dir
        self.strict, self.max_pixels = strict, max_pixels
        self.images = layout.images
        self._entries = layout.entries
        self._resolved: Dict[str, List[Tuple[str, Optional[Path], Path]]] = {}
        self._reports: Dict[str, SplitReport] = {}
        self._raw: Dict[str, List[RawImage]] = {}
        self._records: Dict[str, List[ImageRecord]] = {}
        self._coco_json: Dict[str, dict] = {}
        self.notes: List[str] = list(layout.notes)
        for split, items in self._entries.items():
            rep = self._report(split)
            res = []
            for entry in items:
                found, configured = resolve_entry(entry, self.root, self.yaml_dir)
                if found is not None and found != configured:
                    rep.note(f"data={data}", f"{split}: '{entry}' not found at {configured}; using {found}"
                             f"{_doubled_root_hint(entry, self.root)}", "path fallbacks")
                res.append((entry, found, configured))
            self._resolved[split] = res
        names = layout.names
        self.info = DatasetInfo(names=list(names) if names else [], format=self.format, root=self.root)
        self._init_names(names)
        self.derived_val: Optional[List[str]] = None
        self.derived_val_note: Optional[str] = None
        if "train" in self._entries and "val" not in self._entries and (val_fraction or val_images):
            self._hold_out(val_fraction or 0.0, seed, val_images)

    # -- public ---------------------------------------------------------------------------------
    @property
    def splits(self) -> List[str]:
        out = list(self._entries)
        if self.derived_val is not None:
            out.insert(out.index("train") + 1, "val")
        return out

    def report(self, split: str) -> SplitReport:
        self._check_split(split)
        return self._report(split)

    def records(self, split: str) -> List[ImageRecord]:
        """The split's images as ``ImageRecord``s (cached). Raises ``DatasetError`` when the split's
        files cannot be found or read at all (or, when strict, on the first problem)."""
        self._check_split(split)
        if split not in self._records:
            try:
                if self.format == "coco":
                    recs = self._coco_records(split)
                else:
                    recs = self._map_records(split, self._raw_split(split))
            finally:
                self._collect_problems()
            self._records[split] = recs
        return self._records[split]

    # -- internals -------------------------------------------------------------------------------
    def _report(self, split: str) -> SplitReport:
        if split not in self._reports:
            self._reports[split] = SplitReport(split, self.strict)
        return self._reports[split]

    def _collect_problems(self) -> None:
        """``info.problems``: every split's problem lines so far (repeated problems summarised, which
        is why the list is rebuilt rather than appended to)."""
        self.info.problems[:] = [line for rep in self._reports.values() for line in rep.problems]

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise DatasetError(f"data={self.data}: no split '{split}'; this dataset has "
                               f"{', '.join(self.splits) or 'none'}")

    def _sources(self, split: str) -> List[Tuple[Path, Path]]:
        out = []
        for entry, found, configured in self._resolved[split]:
            if found is None:
                raise DatasetError(f"data={self.data}: {split}: '{entry}' not found (looked at {configured})")
            out.append((found, configured))
        return out

    def _raw_split(self, split: str) -> List[RawImage]:
        if split not in self._raw:
            rep = self._report(split)
            if self.format == "voc":
                self._raw[split] = voc.read_voc([s for s, _ in self._sources(split)], rep, self.max_pixels,
                                                images=self._image_dir(), root=self.root)
            else:
                self._raw[split] = yolo.read_yolo(self._sources(split), self.root, rep, self.max_pixels)
        return self._raw[split]

    def _init_names(self, names: Optional[List[str]]) -> None:
        if self.format == "coco":
            first = next(iter(self._entries))
            js, path = self._coco_load(first)
            self.info.names, self.info.category_ids, notes = coco.resolve_categories(js, path, names)
            for n in notes:
                self._report(first).note(path, n, "category notes")
            return
        if names:
            return
        # No names: collect them from the data (all splits, so every split maps the same way).
        keys = set()
        for split in self._entries:
            try:
                raw = self._raw_split(split)
            except DatasetError as e:
                if self.strict:
                    raise
                self._report(split).note(None, str(e))
                continue
            keys.update(o.key for im in raw for o in im.objects)
        self._collect_problems()
        if self.format == "voc":
            self.info.names = sorted(str(k) for k in keys)
            msg = f"no names given; {len(keys)} classes collected from the XML files (sorted): " \
                  f"{', '.join(self.info.names)}"
        else:
            n = max(keys) + 1 if keys else 0
            self.info.names = [str(i) for i in range(n)]
            msg = f"no names given; {n} classes inferred from the largest class id, named '0'..'{n - 1}'"
        self.notes.append(f"data={self.data}: {msg}")

    def _map_records(self, split: str, raw: List[RawImage]) -> List[ImageRecord]:
        rep = self._report(split)
        names = self.info.names
        if self.format == "voc":
            mapping = {n: i for i, n in enumerate(names)}
            return build_records(raw, mapping, rep, lambda k: f"unknown class '{k}' (not in names)")
        mapping = {i: i for i in range(len(names))}
        n = len(names)
        return build_records(raw, mapping, rep,
                             lambda k: f"unknown class id {k} (names has {n} classes: 0..{n - 1})")

    def _coco_load(self, split: str) -> Tuple[dict, Path]:
        sources = self._sources(split)
        if len(sources) != 1 or sources[0][0].suffix.lower() != ".json":
            raise DatasetError(f"data={self.data}: {split}: a COCO split must be one annotation .json file")
        path = sources[0][0]
        if split not in self._coco_json:
            self._coco_json[split] = coco.load_coco_json(path)
        return self._coco_json[split], path

    def _coco_records(self, split: str) -> List[ImageRecord]:
        js, path = self._coco_load(split)
        rep = self._report(split)
        image_dir = self._image_dir() or coco.find_image_dir(js, path, rep)
        recs = coco.read_coco(js, path, image_dir, self.info.names, self.info.category_ids, rep,
                              self.max_pixels)
        self._coco_json.pop(split, None)  # the parsed JSON can be large; records are what we keep
        return recs


    def _image_dir(self) -> Optional[Path]:
        """The YAML's ``images:`` folder (COCO and VOC), or None when it gives none."""
        if not self.images:
            return None
        found, configured = resolve_entry(self.images, self.root, self.yaml_dir)
        if found is None:
            raise DatasetError(f"data={self.data}: images: '{self.images}' not found "
                               f"(looked at {configured})")
        return found

    def _hold_out(self, fraction: float, seed: int, listed: Optional[Sequence[str]]) -> None:
        """Split the train records into train and a derived val. The choice depends only on the image
        file names and ``seed`` (a hash of both), not on the order the files are listed in, so a rerun,
        another machine or a copy of the dataset holds out the same images; ``listed`` (the
        ``derived_val`` of an earlier run) holds out exactly those instead."""
        records = self.records("train")
        rel = {id(r): _relative(r.path, self.root) for r in records}
        if listed:
            wanted = {str(x).replace("\\", "/") for x in listed}
            held = {id(r) for r in records if rel[id(r)] in wanted or r.path.name in wanted}
            how = f"the {len(held)} listed (val_images) of {len(records)} training images"
            missing = len(wanted) - len(held)
            how += f"; {missing} listed images are not in train" if missing > 0 else ""
        else:
            n = int(round(fraction * len(records)))
            n = min(max(n, 1), len(records) - 1) if len(records) >= 2 else 0
            order = sorted(records, key=lambda r: (_holdout_key(r.path.name, seed), rel[id(r)]))
            held = {id(r) for r in order[:n]}
            how = f"{100 * fraction:g}% ({n} of {len(records)}) training images, seed {seed}"
        self._records["train"] = [r for r in records if id(r) not in held]
        self._records["val"] = [r for r in records if id(r) in held]
        self.derived_val = sorted(rel[id(r)] for r in self._records["val"])
        self.derived_val_note = f"data={self.data}: no val split: holding out {how}; val_fraction= changes it"
        self.notes.append(self.derived_val_note)
        self._report("val").note(None, f"held out from train ({len(held)} images): {how}", "derived split")


def _holdout_key(name: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}/{name}".encode("utf-8")).hexdigest()


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _doubled_root_hint(entry: str, root: Path) -> str:
    """An entry that starts with the root's own folder name (``path: voc`` + ``train: voc/...``)."""
    parts = Path(entry).parts
    if parts and not Path(entry).is_absolute() and parts[0] == root.name and (root.parent / entry).exists():
        return f" (split paths are relative to the dataset root {root}: drop the leading '{parts[0]}/')"
    return ""


# ------------------------------------------------------------------------------- load_dataset
def load_dataset(data: Union[str, Path], strict: bool = False, max_pixels: int = MAX_PIXELS,
                 val_fraction: Optional[float] = None, seed: int = 0,
                 val_images: Optional[Sequence[str]] = None) -> DatasetSpec:
    """Resolve ``data`` (dataset YAML, dataset folder, COCO JSON, folder with data.yaml) into a
    ``DatasetSpec``. Raises ``DatasetError`` (one line: ``data=...: <problem>``) when it cannot.

    ``val_fraction`` (training passes ``DEFAULT_VAL_FRACTION`` unless told otherwise): when the dataset
    has a train split and no val split, hold out this share of the training images as "val", chosen
    by a hash of each image's file name and ``seed`` (``DatasetSpec.derived_val`` lists them,
    ``derived_val_note`` says so). ``val_images``: hold out exactly these images instead (paths
    relative to the root as in ``derived_val``, or file names), to repeat an earlier run's split. Both
    None (the default: checking or evaluating a dataset reads it as it is): no val split is made."""
    label = f"data={data}"
    p = Path(str(data)).expanduser()
    if not p.exists():
        raise DatasetError(f"{label}: file not found")
    if p.is_dir():
        layout = read_folder(p, str(data))
        if layout is None:
            layout = read_yaml(find_yaml(p), str(data))
    elif p.suffix.lower() == ".json":
        layout = Layout("coco", p.parent, p.parent, {split_token(p): [p.name]})
    elif p.suffix.lower() in (".yaml", ".yml"):
        layout = read_yaml(p, str(data))
    else:
        raise DatasetError(f"{label}: expected a dataset .yaml, a COCO .json or a dataset folder, "
                           f"got a '{p.suffix.lower()}' file")
    return DatasetSpec(str(data), layout, strict=strict, max_pixels=max_pixels, val_fraction=val_fraction,
                       seed=seed, val_images=val_images)
