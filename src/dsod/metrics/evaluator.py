"""The one evaluator, used during training and by ``dsod val`` alike.

    ev = Evaluator(info, records)                 # ground truth: the readers' ImageRecords
    for batch in loader:
        ev.update(batch_image_ids, postprocessor(...))   # pixel boxes, 0-based labels
    results = ev.compute()                        # VOC07 / VOC2010+ AP50 and the 12 COCO numbers
    print(ev.format_table())
    ev.write_json("metrics.json"); ev.plot("plots/")

Each image may be updated once; images never updated count as images without detections.
See :mod:`dsod.metrics.voc` for the VOC protocol (ties, difficult, duplicates, classes without ground
truth, the ``plus_one`` IoU convention) and :mod:`dsod.metrics.coco` for the COCO one.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from ..errors import DsodError
from ..files import atomic_write_text
from . import coco as coco_mod
from .arrays import check_detections, flags, id_sort_key, json_safe, normalize_id, unique_class_keys
from .voc import VOCResult, confusion_matrix, evaluate_voc

if TYPE_CHECKING:  # the records contract; not imported at run time (keeps metrics light)
    from ..data.records import DatasetInfo, ImageRecord


class NothingToEvaluate(DsodError, ValueError):
    """Every image of the evaluation was left out (none could be decoded)."""


class Evaluator:
    """Scores detections against ``records`` with the VOC (2007 11-point and 2010+ all-point AP at
    IoU 0.5) and COCO (the 12 standard numbers) protocols, from a single pass of ``update`` calls.

    Args:
        info: the dataset's ``DatasetInfo`` (class names; COCO category ids).
        records: the ground truth, one ``ImageRecord`` per evaluated image (unique ``image_id``).
        iou_thresh: VOC IoU threshold (0.5), also used by the confusion matrix.
        plus_one: VOC IoU with the devkit's +1 on widths/heights (for 1-based inclusive integer boxes);
            default False: continuous pixel coordinates (see :mod:`dsod.metrics.voc`).
        coco: compute the COCO numbers (False skips them, e.g. for a quick per-epoch VOC mAP).
        coco_gt: for COCO datasets, the dataset's own annotation file (path or parsed dict). The COCO
            numbers then use its annotations verbatim -- segmentation areas for small/medium/large, the
            file's exact boxes -- restricted to the records' images: identical to pycocotools on the file.
            Without it, the COCO ground truth is built from the records (area = box w*h, or a per-box
            ``area`` array if a reader attaches one to its records; the same AP/AP50/AP75/AR1/AR10/AR100,
            while APs..ARl may differ from the official ones, which use segmentation areas).
        coco_backend: "auto" (faster-coco-eval, else pycocotools), "faster_coco_eval" or "pycocotools".
        conf_thresh: score threshold of the confusion matrix (plots).
    """

    def __init__(self, info: DatasetInfo, records: Sequence[ImageRecord], *, iou_thresh: float = 0.5,
                 plus_one: bool = False, coco: bool = True, coco_gt: Union[str, Path, dict, None] = None,
                 coco_backend: str = "auto", conf_thresh: float = 0.25):
        if len(records) == 0:
            raise ValueError("Evaluator needs at least one image record")
        self._settings = dict(iou_thresh=iou_thresh, plus_one=plus_one, coco=coco, coco_gt=coco_gt,
                              coco_backend=coco_backend, conf_thresh=conf_thresh)
        self.left_out: List[str] = getattr(self, "left_out", [])  # images dropped (``drop``), "file: reason"
        self.info = info
        self.num_classes = len(info.names)
        self.iou_thresh = float(iou_thresh)
        self.plus_one = bool(plus_one)
        self.coco = bool(coco)
        self.coco_backend = coco_backend
        self.conf_thresh = float(conf_thresh)
        if coco:
            coco_mod.get_backend(coco_backend)  # fail early if no backend is installed

        ids = [normalize_id(r.image_id) for r in records]
        order = sorted(range(len(records)), key=lambda i: id_sort_key(ids[i]))
        self.records: List[ImageRecord] = [records[i] for i in order]  # sorted by image id
        self.image_ids = [ids[i] for i in order]
        self._index: Dict[Any, int] = {}
        for i, image_id in enumerate(self.image_ids):
            if image_id in self._index:
                raise ValueError(f"image id {image_id!r} appears in more than one record")
            self._index[image_id] = i

        boxes, labels, images, difficult, crowd, areas = [], [], [], [], [], []
        any_area = False
        for i, r in enumerate(self.records):
            b = np.asarray(r.boxes, np.float64).reshape(-1, 4)
            n = len(b)
            lab = np.asarray(r.labels, np.int64).reshape(-1)
            if len(lab) != n:
                raise ValueError(f"record {r.image_id!r}: {n} boxes but {len(lab)} labels")
            if n and (lab.min() < 0 or lab.max() >= self.num_classes):
                raise ValueError(f"record {r.image_id!r}: label outside 0..{self.num_classes - 1}")
            boxes.append(b)
            labels.append(lab)
            images.append(np.full(n, i, np.int64))
            difficult.append(flags(getattr(r, "difficult", None), n))
            crowd.append(flags(getattr(r, "iscrowd", None), n))
            # Optional per-box area (e.g. COCO segmentation areas), if a reader provides one.
            a = getattr(r, "area", None)
            if a is not None and len(np.asarray(a).reshape(-1)) == n:
                areas.append(np.asarray(a, np.float64).reshape(-1))
                any_area = True
            else:
                areas.append((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
        self._gt_boxes = np.concatenate(boxes)
        self._gt_labels = np.concatenate(labels)
        self._gt_images = np.concatenate(images)
        self._gt_difficult = np.concatenate(difficult)
        self._gt_crowd = np.concatenate(crowd)
        self._gt_ignore = self._gt_difficult | self._gt_crowd
        self._gt_area = np.concatenate(areas) if any_area else None

        self._cat_ids = [int(info.category_id(c)) for c in range(self.num_classes)]
        if len(set(self._cat_ids)) != len(self._cat_ids):
            raise ValueError("DatasetInfo.category_ids are not unique")
        self._coco_gt_source = coco_gt
        self._coco_gt: Optional[dict] = None
        self.reset()

    # ------------------------------------------------------------------ accumulation
    def reset(self) -> None:
        """Forget all detections (e.g. before the next epoch's validation)."""
        self._dets: Dict[int, tuple] = {}
        self._results: Optional[Dict[str, Any]] = None
        self._voc: Optional[VOCResult] = None

    def update(self, image_ids: Sequence[Any], detections: Sequence[Mapping[str, Any]]) -> None:
        """Add the detections of some images: one dict per image with ``boxes`` (K, 4) xyxy in the
        image's original pixels, ``scores`` (K,) and ``labels`` (K,) 0-based class indices -- what
        ``PostProcessor`` returns with ``image_sizes`` (torch tensors or numpy arrays)."""
        if len(image_ids) != len(detections):
            raise ValueError(f"update: {len(image_ids)} image ids but {len(detections)} detection dicts")
        for image_id, det in zip(image_ids, detections):
            image_id = normalize_id(image_id)
            idx = self._index.get(image_id)
            if idx is None:
                raise ValueError(f"update: unknown image id {image_id!r} (not among the evaluator's records)")
            if idx in self._dets:
                raise ValueError(f"update: image {image_id!r} was already updated (call reset() to start over)")
            self._dets[idx] = check_detections(det, self.num_classes, image_id)
        self._results = None

    def drop(self, image_ids: Sequence[Any], reasons: Sequence[str] = ()) -> None:
        """Leave these images out of the evaluation, their ground truth included (images that could
        not be decoded: scoring them as missed would understate every class they hold). Detections
        of the other images are kept; ``compute()["images_left_out"]`` lists ``reasons``."""
        gone = {normalize_id(i) for i in image_ids}
        unknown = gone - set(self._index)
        if unknown:
            raise ValueError(f"drop: unknown image id {sorted(unknown, key=id_sort_key)[0]!r}")
        kept = [(r, i) for r, i in zip(self.records, self.image_ids) if i not in gone]
        if not kept:
            raise NothingToEvaluate(f"none of the {len(self.records)} images could be decoded (first: "
                                    f"{(list(reasons) or [str(next(iter(gone)))])[0]})")
        dets = {self.image_ids[k]: d for k, d in self._dets.items() if self.image_ids[k] not in gone}
        self.left_out = self.left_out + list(reasons or (str(i) for i in gone))
        self.__init__(self.info, [r for r, _ in kept], **self._settings)
        self._dets = {self._index[i]: d for i, d in dets.items()}

    @property
    def num_updated(self) -> int:
        return len(self._dets)

    def detections(self):
        """(image ids, detection dicts with ``boxes``, ``scores``, ``labels``) of the updated images, in
        the evaluator's image order (for ``write_detections_json``: ``dsod val save_json=true``)."""
        idxs = sorted(self._dets)
        return ([self.image_ids[i] for i in idxs],
                [dict(zip(("boxes", "scores", "labels"), self._dets[i][:3])) for i in idxs])

    def _det_arrays(self):
        idxs = sorted(self._dets)
        if not idxs:
            return np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64)
        boxes = np.concatenate([self._dets[i][0] for i in idxs])
        scores = np.concatenate([self._dets[i][1] for i in idxs])
        labels = np.concatenate([self._dets[i][2] for i in idxs])
        images = np.concatenate([np.full(len(self._dets[i][1]), i, np.int64) for i in idxs])
        return boxes, scores, labels, images

    # ------------------------------------------------------------------ metrics
    def compute(self) -> Dict[str, Any]:
        """All metrics as a JSON-ready dict (NaN where undefined; ``write_json`` stores null):

        ``voc07_map50``, ``voc_area_map50`` (means over classes with ground truth), ``coco`` (the 12
        numbers AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl exactly as pycocotools
        reports them, -1 where undefined; None with ``coco=False``), ``per_class`` (class name ->
        ``voc07_ap50``, ``voc_area_ap50``, ``coco_ap``, ``coco_ap50``, ``num_gt`` (non-difficult,
        non-crowd), ``num_det``), ``num_images``, ``num_images_updated``, ``num_detections``,
        ``num_gt``, ``num_classes_with_gt`` and ``settings``.
        """
        if self._results is not None:
            return self._results
        boxes, scores, labels, images = self._det_arrays()
        voc = evaluate_voc(self.num_classes, self._gt_boxes, self._gt_labels, self._gt_images, self._gt_ignore,
                           boxes, scores, labels, images, iou_thresh=self.iou_thresh, plus_one=self.plus_one)
        self._voc = voc
        coco_res = self._compute_coco(boxes, scores, labels, images) if self.coco else None

        per_class: Dict[str, Dict[str, Any]] = {}
        for c, key in enumerate(unique_class_keys(self.info.names)):
            cid = self._cat_ids[c]
            per_class[key] = {
                "voc07_ap50": float(voc.ap07[c]),
                "voc_area_ap50": float(voc.ap_area[c]),
                "coco_ap": coco_res.per_category_ap.get(cid, float("nan")) if coco_res else None,
                "coco_ap50": coco_res.per_category_ap50.get(cid, float("nan")) if coco_res else None,
                "num_gt": int(voc.num_gt[c]),
                "num_det": int(voc.num_det[c]),
            }
        self._results = {
            "voc07_map50": voc.map07,
            "voc_area_map50": voc.map_area,
            "coco": dict(coco_res.stats) if coco_res else None,
            "per_class": per_class,
            "num_images": len(self.records),
            "images_left_out": list(self.left_out),
            "num_images_updated": len(self._dets),
            "num_detections": int(len(scores)),
            "num_gt": int((~self._gt_ignore).sum()),
            "num_classes_with_gt": int((voc.num_gt > 0).sum()),
            "settings": {
                "voc_iou_thresh": self.iou_thresh,
                "voc_plus_one": self.plus_one,
                "voc_mean": "over classes with ground truth (others NaN/null)",
                "coco_backend": coco_res.backend if coco_res else None,
                "coco_ground_truth": ("annotation file" if self._coco_gt_source is not None else "records")
                if coco_res else None,
            },
        }
        return self._results

    def _compute_coco(self, boxes, scores, labels, images) -> coco_mod.COCOResult:
        cats = np.asarray(self._cat_ids, np.int64)
        if self._coco_gt_source is not None:
            if self._coco_gt is None:
                if not all(isinstance(i, int) for i in self.image_ids):
                    raise ValueError("coco_gt: the records' image ids must be the annotation file's integer ids")
                self._coco_gt = coco_mod.load_gt_file(self._coco_gt_source)
                file_imgs = {im["id"] for im in self._coco_gt["images"]}
                missing = [i for i in self.image_ids if i not in file_imgs]
                if missing:
                    raise ValueError(f"coco_gt: {len(missing)} record image ids are not in the annotation file "
                                     f"(first: {missing[0]!r})")
                file_cats = {c["id"] for c in self._coco_gt["categories"]}
                if not set(self._cat_ids) <= file_cats:
                    raise ValueError("coco_gt: the dataset's category ids are not all in the annotation file")
            gt = self._coco_gt
            img_ids = np.asarray(self.image_ids, np.int64)  # the file's own ids
        else:
            if self._coco_gt is None:
                ranks = np.arange(1, len(self.records) + 1)  # 1..N in sorted image-id order
                self._coco_gt = coco_mod.build_gt_dataset(
                    [(int(ranks[i]), r.width, r.height) for i, r in enumerate(self.records)],
                    [(cid, n) for cid, n in zip(self._cat_ids, self.info.names)],
                    ranks[self._gt_images], self._gt_boxes, cats[self._gt_labels],
                    self._gt_ignore, self._gt_area)
            gt = self._coco_gt
            img_ids = np.arange(1, len(self.records) + 1)
        res = coco_mod.results_from_arrays(img_ids[images], boxes, scores, cats[labels])
        return coco_mod.evaluate_coco(gt, res, img_ids.tolist(), self._cat_ids, self.coco_backend)

    def confusion_matrix(self, conf_thresh: Optional[float] = None, iou_thresh: Optional[float] = None) -> np.ndarray:
        """(C+1, C+1) counts, rows predicted class, columns true class, index C = background
        (see :func:`dsod.metrics.voc.confusion_matrix`)."""
        boxes, scores, labels, images = self._det_arrays()
        return confusion_matrix(self.num_classes, self._gt_boxes, self._gt_labels, self._gt_images, self._gt_ignore,
                                boxes, scores, labels, images,
                                conf_thresh=self.conf_thresh if conf_thresh is None else conf_thresh,
                                iou_thresh=self.iou_thresh if iou_thresh is None else iou_thresh,
                                plus_one=self.plus_one)

    # ------------------------------------------------------------------ output
    def write_json(self, path: Union[str, Path]) -> Path:
        """Write ``compute()``'s dict to ``path`` atomically (NaN -> null)."""
        text = json.dumps(json_safe(self.compute()), indent=2, allow_nan=False)
        return atomic_write_text(path, text + "\n")

    def format_table(self) -> str:
        """Per-class table; its header names the AP mode of every column."""
        r = self.compute()
        keys = list(r["per_class"])
        w = max([len("class"), len("mean"), *(len(k) for k in keys)])
        f = lambda v: "    -" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"  # noqa: E731
        has_coco = r["coco"] is not None
        lines = [
            f"AP modes: AP50-07 = VOC2007 11-point AP at IoU {self.iou_thresh:g}; "
            f"AP50-area = VOC2010+ all-point (area) AP at IoU {self.iou_thresh:g}"
            + ("; AP-COCO = COCO AP@[.50:.95] (101-point, maxDets 100)" if has_coco else "")
            + f"; IoU {'devkit +1 (1-based pixels)' if self.plus_one else 'continuous pixels (no +1)'}",
        ]
        head = f"{'class':<{w}}  {'gt':>6}  {'dets':>7}  {'AP50-07':>7}  {'AP50-area':>9}"
        head += f"  {'AP-COCO':>7}" if has_coco else ""
        lines += [head, "-" * len(head)]
        for k in keys:
            p = r["per_class"][k]
            row = f"{k:<{w}}  {p['num_gt']:>6}  {p['num_det']:>7}  {f(p['voc07_ap50']):>7}  {f(p['voc_area_ap50']):>9}"
            row += f"  {f(p['coco_ap']):>7}" if has_coco else ""
            lines.append(row)
        lines.append("-" * len(head))
        mean = f"{'mean':<{w}}  {r['num_gt']:>6}  {r['num_detections']:>7}  {f(r['voc07_map50']):>7}  " \
               f"{f(r['voc_area_map50']):>9}"
        mean += f"  {f(r['coco']['AP']):>7}" if has_coco else ""
        lines.append(mean)
        lines.append(f"(means over the {r['num_classes_with_gt']} of {self.num_classes} classes with ground truth; "
                     f"{r['num_images']} images, {r['num_images_updated']} with detections given)")
        if has_coco:
            c = r["coco"]
            lines.append(f"COCO bbox ({r['settings']['coco_backend']}, ground truth from "
                         f"{r['settings']['coco_ground_truth']}; -1 = no ground truth in that range):")
            lines.append("  " + "  ".join(f"{k} {c[k]:.4f}" for k in coco_mod.COCO_STAT_NAMES[:6]))
            lines.append("  " + "  ".join(f"{k} {c[k]:.4f}" for k in coco_mod.COCO_STAT_NAMES[6:]))
        return "\n".join(lines)

    def plot(self, out_dir: Union[str, Path], per_class_files: bool = True) -> List[Path]:
        """Write ``pr_curves.png`` (all classes), ``pr_curves/<i>_<name>.png`` (one per class, unless
        ``per_class_files=False``) and ``confusion_matrix.png`` into ``out_dir``; returns the paths."""
        from .plots import plot_confusion_matrix, plot_pr_curves

        self.compute()
        out_dir = Path(out_dir)
        paths = plot_pr_curves(self._voc, self.info.names, out_dir, per_class_files=per_class_files,
                               iou_thresh=self.iou_thresh)
        paths.append(plot_confusion_matrix(self.confusion_matrix(), self.info.names,
                                           out_dir / "confusion_matrix.png",
                                           conf_thresh=self.conf_thresh, iou_thresh=self.iou_thresh))
        return paths
