"""``dsod export``: the command (its keys are declared in the CLI's option table, ``dsod.cli.options``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from .build import INT8_MAX_LOSS_POINTS, checkpoint_sha256, write_fp32, write_int8
from .graph import ExportError
from .inputs import load_batch, records_batch
from .quantize import has_int8_dot

DEFAULTS: Dict[str, Any] = {
    "model": None, "format": "onnx", "out": None, "nms": False, "conf": 0.01, "iou": 0.45, "max_det": 200,
    "opset": 17, "imgsz": None, "graph": "fused", "data": None, "verify_n": 8, "atol": 1e-3, "int8": False,
    "calib": None, "calib_n": 64, "calib_method": "minmax", "reduce_range": None, "int8_keep_fp32": "",
    "threads": None,
}


def load_for_export(spec: str, imgsz: Optional[int]) -> Tuple[Any, Dict[str, Any], Path, Optional[dict]]:
    """(eval model, metadata for the file, default output path, checkpoint or None)."""
    from ..model.checkpoint import CheckpointError
    from ..model.load import ModelSpecError, load_model_and_checkpoint

    try:
        model, cfg, ckpt = load_model_and_checkpoint(spec, imgsz)
    except (ModelSpecError, CheckpointError) as e:
        raise ExportError(str(e)) from None
    if ckpt is None:
        return model, {"names": [], "model": cfg.name, "source": "random init"}, Path(f"{spec}.onnx"), None
    p = Path(str(spec)).expanduser()
    meta = {"names": list(ckpt.get("names") or []), "category_ids": ckpt.get("category_ids"), "model": cfg.name,
            "source": p.name, "checkpoint_sha256": checkpoint_sha256(p)}
    if ckpt.get("train_geometry"):  # slice=auto on the exported file too
        meta["train_geometry"] = ckpt["train_geometry"]
    return model, meta, p.with_suffix(".onnx"), ckpt


def resolve_dataset(data: Optional[str], ckpt: Optional[dict]):
    """The dataset to calibrate and check int8 on: ``data=`` if it reads as a dataset, else the one the
    checkpoint was trained on when it is still where training found it; None otherwise."""
    from ..data import DatasetError, load_dataset

    candidates = [data] if data else [((ckpt or {}).get("train_args") or {}).get("data")]
    for c in candidates:
        if c and Path(str(c)).expanduser().exists():
            try:
                return load_dataset(str(c))
            except (DatasetError, ValueError, OSError):
                return None
    return None


def export_main(opts: Dict[str, Any]) -> int:
    """``dsod export`` with parsed values (missing keys take ``DEFAULTS``). Prints what it wrote."""
    o = {**DEFAULTS, **opts}
    bad = sorted(set(o) - set(DEFAULTS))
    if bad:
        raise ExportError(f"unknown key(s) {', '.join(bad)}; valid: {', '.join(DEFAULTS)}")
    if not o["model"]:
        raise ExportError("model= is required (a checkpoint .pt)")
    if str(o["format"]).lower() != "onnx":
        raise ExportError(f"format={o['format']}: only onnx is supported")
    model, meta, default_out, ckpt = load_for_export(str(o["model"]), o["imgsz"])
    imgsz = model.config.image_size
    out = Path(o["out"] or default_out)
    spec = resolve_dataset(o["data"], ckpt)
    if spec is not None and "val" in spec.splits:
        batch = records_batch(spec.records("val"), int(o["verify_n"]), imgsz)
        where = f"{len(batch)} {spec.root} val images"
    else:
        batch, where = load_batch(o["data"] or o["calib"], int(o["verify_n"]), imgsz)
    _, diffs, seconds = write_fp32(model, out, imgsz, batch, graph=str(o["graph"]), nms=bool(o["nms"]),
                                   opset=int(o["opset"]), conf=float(o["conf"]), iou=float(o["iou"]),
                                   max_det=int(o["max_det"]), metadata=meta, atol=float(o["atol"]),
                                   threads=o["threads"])
    print(f"exported {out} ({out.stat().st_size / 1e6:.1f} MB, {o['graph']} graph, opset {o['opset']}, input images "
          f"(N, 3, {imgsz}, {imgsz}) BGR-minus-mean, dynamic N{', with NMS' if o['nms'] else ''}) in {seconds:.1f} s")
    print(f"verified on {where}: max |onnx - eager| boxes {diffs['boxes']:.2e}, scores "
          f"{diffs['scores']:.2e}" + (f", NMS selections agree {diffs['nms_agreement']:.1%}"
                                       if "nms_agreement" in diffs else ""))
    if o["int8"]:
        export_int8(out, o, spec, imgsz)
    return 0


def export_int8(fp32: Path, o: Dict[str, Any], spec, imgsz: int) -> Path:
    """The int8 copy of ``fp32``, calibrated on the dataset's train images (or ``calib=``/``data=``
    images), its mAP change measured on the val split when there is a dataset."""
    if o["calib"] or spec is None or "train" not in spec.splits:
        calib, cwhere = load_batch(o["calib"] or o["data"], int(o["calib_n"]), imgsz, seed=1)
    else:
        calib = records_batch(spec.records("train"), int(o["calib_n"]), imgsz)
        cwhere = f"{len(calib)} {spec.root} train images"
    out = fp32.with_name(f"{fp32.stem}-int8.onnx")
    keep = [k for k in str(o["int8_keep_fp32"] or "").split(",") if k]
    fig = write_int8(fp32, out, calib, spec=spec, method=str(o["calib_method"]), reduce_range=o["reduce_range"],
                     keep_fp32=keep, threads=o["threads"])
    bits = 7 if (o["reduce_range"] if o["reduce_range"] is not None else not has_int8_dot()) else 8
    print(f"quantised {out} ({out.stat().st_size / 1e6:.1f} MB, int8 QDQ, {bits}-bit weights, {o['calib_method']} "
          f"calibration on {cwhere}) in {fig['quantize_s']:.1f} s")
    if "map_change" in fig:
        verdict = "within" if fig["map_change"] >= -INT8_MAX_LOSS_POINTS else "beyond"
        print(f"int8 accuracy: {fig['map_data']}: fp32 {fig['map_fp32']:.2f}, int8 {fig['map_int8']:.2f} "
              f"({fig['map_change']:+.2f} points, {verdict} the {INT8_MAX_LOSS_POINTS} backend=auto accepts)")
    else:
        print("int8 accuracy not measured (no dataset with a val split: give data=DATASET); backend=auto will "
              "not choose this file")
    if not has_int8_dot():
        print(f"note: this CPU has no int8 dot-product instructions (VNNI/AMX): int8 may run no faster than "
              f"{fp32.name} here; backend=auto times both and serves the faster (docs/PERFORMANCE.md)")
    return out
