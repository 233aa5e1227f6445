"""Pascal VOC XML reader.

Sources are split lists, VOC roots, or folders of XML files:
- ``ImageSets/Main/<split>.txt`` id lists: ids resolve to ``<list>/../../Annotations/<id>.xml`` and
  ``<list>/../../JPEGImages/<id>.<ext>``. Other ``.txt``/``.csv`` lists of image names or stems (``lists``)
  use the ``Annotations/`` or ``annotations/`` folder beside them or in the dataset root, and the
  ``JPEGImages/`` or ``images/`` folder beside that.
- a folder of XML files with the images beside them (Roboflow/LabelImg exports), or, when there are
  none, in ``JPEGImages/`` or ``images/`` next to the folder (``annotations/`` + ``images/``; also
  ``annotations/train`` -> ``images/train``), noted.
- ``images=`` (a YAML's ``images:``) names the image folder of every source instead; it may hold other
  splits' images too, so its images without XML are not reported.

What real files do, and what we do about it:
- ``<bndbox>`` children in any order (Roboflow writes xmin, xmax, ymin, ymax): read by tag name;
  integer or decimal coordinates.
- ``<path>`` (foreign absolute paths) and ``<folder>`` are ignored; the image is the file beside or
  in ``JPEGImages/`` whose stem equals the XML's, compared case-insensitively (``0AF.jpg`` <->
  ``0af.xml``); ``<filename>`` is the fallback.
- ``<difficult>`` is kept per box; ``<truncated>`` only counted (``ImageRecord`` has no field for it,
  and neither SSD training nor VOC evaluation uses it); extra tags (``<occluded>``) are ignored.
- ``<size>`` is checked against the image header, which wins (EXIF orientation applied).
- Coordinates are kept as written (1-based devkit pixels are not shifted; see the ``records`` module doc).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .images import MAX_PIXELS, is_image_file
from .lists import entry_stem, read_name_list
from .records import RawImage, RawObject, SplitReport, read_image_size

_COORDS = ("xmin", "ymin", "xmax", "ymax")


def _flag(text: Optional[str]) -> bool:
    t = (text or "").strip().lower()
    if t in ("1", "true", "yes"):
        return True
    try:
        return float(t) > 0
    except ValueError:
        return False


def _image_index(folder: Path, cache: Dict[Path, Dict[str, List[Path]]]) -> Dict[str, List[Path]]:
    """lower-case stem -> image files in ``folder`` (listed once per folder)."""
    if folder not in cache:
        index: Dict[str, List[Path]] = {}
        if folder.is_dir():
            for f in sorted(folder.iterdir()):
                if f.is_file() and is_image_file(f):
                    index.setdefault(f.stem.lower(), []).append(f)
        cache[folder] = index
    return cache[folder]


def _xml_index(folder: Path, cache: Dict[Path, Dict[str, Path]]) -> Dict[str, Path]:
    if folder not in cache:
        index: Dict[str, Path] = {}
        if folder.is_dir():
            for f in sorted(folder.iterdir()):
                if f.suffix.lower() == ".xml" and f.is_file():
                    index.setdefault(f.stem.lower(), f)
        cache[folder] = index
    return cache[folder]


def _pick(candidates: List[Path], stem: str) -> Path:
    for c in candidates:  # an exact-case match wins over a case-insensitive one
        if c.stem == stem:
            return c
    return candidates[0]


def _has_xml(folder: Path) -> bool:
    return folder.is_dir() and any(f.suffix.lower() == ".xml" for f in folder.iterdir())


def _has_images(folder: Path) -> bool:
    return folder.is_dir() and any(is_image_file(f) for f in folder.iterdir())


def _list_folders(src: Path, root: Path) -> Optional[Tuple[Path, Path]]:
    """(annotation folder, default image folder) of a split list: the devkit's
    ``<base>/ImageSets/Main/x.txt`` -> ``<base>/Annotations`` + ``JPEGImages``; any other list (a
    ``train.csv`` beside ``images/`` + ``annotations/``): the XML folder beside it or in the root."""
    if len(src.parents) > 2 and (src.parents[2] / "Annotations").is_dir():
        base = src.parents[2]
        return base / "Annotations", base / "JPEGImages"
    for d in (src.parent, root):
        for ann in (d / "Annotations", d / "annotations"):
            if _has_xml(ann):
                return ann, _image_folder_near(ann) or ann.parent / "JPEGImages"
    return (src.parent, src.parent) if _has_xml(src.parent) else None


def _image_folder_near(xml_dir: Path) -> Optional[Path]:
    """Where the images of an XML folder are when they are not beside the XMLs: ``JPEGImages/`` or
    ``images/`` next to it, or the same-named split folder under them (``annotations/train`` ->
    ``images/train``)."""
    parent = xml_dir.parent
    for c in (parent / "JPEGImages", parent / "images", parent.parent / "images" / xml_dir.name,
              parent.parent / "JPEGImages" / xml_dir.name):
        if c != xml_dir and _has_images(c):
            return c
    return None


def _list_sources(sources: Sequence[Path], report: SplitReport, images: Optional[Path],
                  root: Path) -> List[Tuple[Path, Path, Optional[str]]]:
    """(xml path, image folder, id) for every annotation named by the sources. Missing XMLs and, in
    folder sources whose images are theirs alone (not a shared ``images:`` folder), images without
    XML are reported here."""
    xml_cache: Dict[Path, Dict[str, Path]] = {}
    img_cache: Dict[Path, Dict[str, List[Path]]] = {}
    items: List[Tuple[Path, Path, Optional[str]]] = []
    for src in sources:
        if src.is_file():  # a split list: ImageSets/Main id list, or .txt/.csv of image names
            folders = _list_folders(src, root)
            if folders is None:
                report.problem(src, "no annotation folder for this split list (looked for Annotations/ "
                               "or annotations/ with XML files beside it and in the dataset root)",
                               "missing annotation folder")
                continue
            ann_dir, img_dir = folders[0], images or folders[1]
            xmls = _xml_index(ann_dir, xml_cache)
            seen = set()
            for n, entry in read_name_list(src, report):
                image_id = entry_stem(entry)
                if image_id in seen:
                    report.problem(src, f"line {n}: id '{image_id}' listed twice; kept once", "duplicate id",
                                   same="listed twice")
                    continue
                seen.add(image_id)
                xml = xmls.get(image_id.lower())
                if xml is None:
                    report.problem(ann_dir / f"{image_id}.xml", f"annotation file not found (listed in "
                                   f"{src.name} line {n}); image skipped", "missing annotation file",
                                   same=f"listed in {src.name}")
                    continue
                items.append((xml, img_dir, image_id))
            continue
        if (src / "Annotations").is_dir():  # a VOC root without id lists
            ann_dir, img_dir = src / "Annotations", images or src / "JPEGImages"
        else:  # a flat folder of XML, with the images beside them or in a folder of their own
            ann_dir, img_dir = src, images or src
            if images is None and not _has_images(src):
                near = _image_folder_near(src)
                if near is not None:
                    img_dir = near
                    report.note(src, f"no images beside the XML files; using {near}", "path fallbacks")
        xmls = _xml_index(ann_dir, xml_cache)
        items.extend((xml, img_dir, None) for xml in xmls.values())
        if images is not None:
            continue  # a shared image folder also holds the other splits' images
        for key, files in _image_index(img_dir, img_cache).items():
            if key not in xmls:
                for f in files:
                    report.problem(f, "image has no XML annotation; skipped (an XML without <object> "
                                   "makes it a negative)", "image without annotation")
    return items


def parse_voc_xml(xml: Path, report: SplitReport):
    """(filename, (width, height) or None, [RawObject]) from one XML, or None after reporting why it
    cannot be used. Objects with missing/non-numeric coordinates are reported and left out."""
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError as e:
        report.problem(xml, f"malformed XML ({e}); image skipped", "malformed annotation file")
        return None
    except OSError as e:
        report.problem(xml, f"cannot read ({e.strerror or e}); image skipped", "unreadable file")
        return None
    if root.tag.lower() != "annotation":
        report.problem(xml, f"not a VOC annotation (root element <{root.tag}>, expected <annotation>); "
                       "image skipped", "malformed annotation file")
        return None
    filename = (root.findtext("filename") or "").strip()
    size = None
    s = root.find("size")
    if s is not None:
        try:
            size = (int(float(s.findtext("width") or 0)), int(float(s.findtext("height") or 0)))
        except ValueError:
            size = None
    objects = []
    for i, obj in enumerate(root.iter("object"), 1):
        name = (obj.findtext("name") or "").strip()
        where = f"object {i} '{name}'"
        if not name:
            report.problem(xml, f"object {i}: no <name>; skipped", "missing class name")
            continue
        bb = obj.find("bndbox")
        if bb is None:
            report.problem(xml, f"{where}: no <bndbox>; skipped", "missing coordinates")
            continue
        # by tag name, whatever the order (chess: xmin, xmax, ymin, ymax); tolerate Xmin/XMIN
        values = {child.tag.strip().lower(): (child.text or "").strip() for child in bb}
        box, bad = [], None
        for k in _COORDS:
            if not values.get(k):
                bad = (f"missing <{k}>", "missing coordinates")
                break
            try:
                box.append(float(values[k]))
            except ValueError:
                bad = (f"non-numeric <{k}> '{values[k]}'", "non-numeric coordinate")
                break
        if bad:
            report.problem(xml, f"{where}: {bad[0]}; skipped", bad[1])
            continue
        if _flag(obj.findtext("truncated")):
            report.stats["truncated boxes"] += 1
        objects.append(RawObject(name, tuple(box), where, difficult=_flag(obj.findtext("difficult"))))
    return filename, size, objects


def read_voc(sources: Sequence[Path], report: SplitReport, max_pixels: int = MAX_PIXELS,
             images: Optional[Path] = None, root: Optional[Path] = None) -> List[RawImage]:
    """Parse every annotation of the sources into ``RawImage``s (class keys = names as written).
    ``images``: the image folder of every source (a YAML's ``images:``) instead of the usual places;
    ``root``: the dataset root, where split lists also look for ``annotations/``."""
    img_cache: Dict[Path, Dict[str, List[Path]]] = {}
    out: List[RawImage] = []
    for xml, img_dir, image_id in _list_sources(sources, report, images, root or Path(".")):
        parsed = parse_voc_xml(xml, report)
        if parsed is None:
            continue
        filename, size, objects = parsed
        index = _image_index(img_dir, img_cache)
        stem = image_id or xml.stem
        found = index.get(stem.lower())
        if not found and filename:  # the XML names a differently-named image
            found = index.get(Path(filename).stem.lower())
        if not found:
            hint = "" if img_dir.is_dir() else " (no such folder)"
            report.problem(xml, f"image not found (looked for {img_dir / stem}.* and <filename> "
                           f"'{filename}'{hint}); skipped", "missing image", same=f"not in {img_dir}",
                           fix=f"the images are looked for in {img_dir}: give their folder with images: "
                               "in a dataset YAML")
            continue
        image = _pick(found, stem)
        wh = read_image_size(image, report, xml, max_pixels, annotated=size)
        if wh is None:
            continue
        out.append(RawImage(image.stem, image, wh[0], wh[1], xml, objects))
    return out
