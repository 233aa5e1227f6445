"""The keys of every command, their defaults, parsers and help (``dsod COMMAND --help`` prints them)."""
from __future__ import annotations

from typing import Dict

from ..inference.backends import BACKENDS
from .schema import (
    Option,
    augment_value,
    auto_bool,
    boolean,
    duration,
    float_range,
    floats,
    model_names,
    nonneg_float,
    optional,
    positive_int,
    precise_bn_value,
)


def train_options() -> Dict[str, Option]:
    import dataclasses

    from ..engine.train_args import TrainArgs

    helps = {
        "data": "dataset YAML, VOC root, COCO JSON or YOLO data.yaml (none: the synthetic demo set)",
        "model": "preset name or a .pt checkpoint", "weights": "initial weights (.pt), fresh schedule",
        "resume": "runs/NAME/weights/last.pt to continue exactly", "epochs": "epochs (if iterations unset)",
        "iterations": "optimizer steps (overrides epochs)", "batch": "images per process per forward pass",
        "accumulate": "forward passes per optimizer step", "imgsz": "input size (default: the preset's)",
        "lr": "learning rate (default: the recipe's; paper: 0.1 x effective batch / 128)", "schedule": "multistep or cosine",
        "milestones": "multistep LR drops as fractions of the run", "warmup": "warm-up iterations",
        "norm": "bn, gn, or syncbn (DDP)", "amp": "float16 autocast on CUDA",
        "bf16": "bfloat16 autocast (auto: on CPUs with native bf16, AMX/AVX512-BF16)",
        "channels_last": "channels-last memory format (auto: where it measured faster)",
        "grad_clip": "max gradient norm (0 = off)", "device": "auto, cpu, cuda or cuda:N",
        "augment": "ssd (the paper's), light (short CPU runs) or none",
        "flipud": "vertical-flip probability (micrographs, aerial)", "optimizer": "sgd (the paper's) or adamw (auto: the recipe's)",
        "stop_at": "stop at this iteration (saving last.pt) without changing the schedule",
        "max_images": "use only the first N images of each split",
        "precise_bn": "re-estimate BN statistics on N augmented training images before each evaluation "
                      "and checkpoint (auto: 32; false: off)",
        "time": "time budget (30m, 2h, 1h30m; a bare number is hours): sets the iterations to fit it",
        "recipe": "auto (short runs: AdamW/cosine/light; long runs: the paper's), paper or short",
        "ema": "EMA of the weights, evaluated and saved (auto: the recipe's)",
        "patience": "stop after N evaluations without improvement", "anchors": "auto (fitted to the data) or preset",
        "val_fraction": "held-out fraction when the dataset has no val split",
        "bad_data_limit": "refuse to train when data problems dropped more than this share of the "
                          "annotations (1: train on whatever is left)",
        "weight_decay": "weight decay (auto: the recipe's)", "no_decay_norm": "no weight decay on norms (auto: the recipe's)",
    }
    types = {
        "data": optional(str), "model": str, "weights": optional(str), "resume": optional(str),
        "epochs": positive_int, "iterations": optional(positive_int), "batch": positive_int,
        "accumulate": positive_int, "imgsz": optional(positive_int), "lr": optional(nonneg_float),
        "momentum": float_range(0, 1), "weight_decay": optional(nonneg_float), "no_decay_norm": auto_bool, "augment": augment_value, "flipud": float_range(0, 1),
        "milestones": floats, "warmup": optional(int), "amp": boolean, "bf16": auto_bool, "channels_last": auto_bool, "grad_clip": nonneg_float,
        "max_bad_steps": positive_int, "bn_decay": optional(float_range(0, 1)), "workers": int, "seed": int, "exist_ok": boolean,
        "val_interval": optional(positive_int), "save_interval": optional(positive_int), "val": boolean,
        "plots": boolean, "progress": boolean, "max_images": optional(positive_int), "stop_at": optional(positive_int),
        "precise_bn": precise_bn_value, "time": duration, "ema": auto_bool, "patience": optional(positive_int),
        "val_fraction": float_range(0, 0.9), "bad_data_limit": float_range(0, 1),
    }
    choices = {"schedule": ["multistep", "cosine"], "norm": ["bn", "gn", "syncbn"], "optimizer": ["sgd", "adamw"],
               "recipe": ["auto", "paper", "short"], "anchors": ["auto", "preset"]}
    opts = {}
    for f in dataclasses.fields(TrainArgs):
        if f.name == "val_images":  # written by the run itself (args.yaml, checkpoints), not a key
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        opts[f.name] = Option(default, helps.get(f.name, ""), types.get(f.name, str), choices.get(f.name))
    return opts



def val_options() -> Dict[str, Option]:
    return {
        "data": Option(None, "dataset (YAML, VOC root, COCO JSON, YOLO data.yaml)", optional(str)),
        "model": Option(None, "checkpoint .pt to evaluate", optional(str)),
        "detections": Option(None, "COCO-results JSON to score instead of a model", optional(str)),
        "split": Option("val", "split to evaluate"),
        "batch": Option(16, "images per batch", positive_int),
        "device": Option("auto", "auto, cpu, cuda or cuda:N"),
        "workers": Option(2, "data loader workers", int),
        "conf": Option(0.01, "score threshold (0.01 as in the original evaluation)", float_range(0, 1)),
        "iou": Option(0.45, "NMS IoU threshold", float_range(0, 1)),
        "json": Option(None, "write all metrics to this JSON file", optional(str)),
        "save_json": Option(False, "also write predictions.json (COCO results format, original pixels)", boolean),
        "backend": Option("auto", "inference backend (auto: the fastest lossless one here, printed)",
                          choices=list(BACKENDS)),
        "threads": Option(None, "ONNX Runtime intra-op threads (default: one per core)", optional(positive_int)),
        "plots": Option(True, "write PR curves and a confusion matrix", boolean),
        "slice": Option("auto", "sliced inference (as dsod predict): auto, false, or a tile size in pixels",
                        slice_value),
        "project": Option("runs", "results folder"), "name": Option("val", "run name"),
        "exist_ok": Option(False, "reuse an existing run folder", boolean),
    }



def slice_value(v: str) -> str:
    """``slice=``: auto, false or a tile size (checked as ``inference.slicing.decide_tile`` does)."""
    from ..inference.slicing import decide_tile

    decide_tile(v, (1, 1), None)  # raises ValueError with the reason
    return str(v).strip().lower()


def predict_options() -> Dict[str, Option]:
    return {
        "model": Option(None, "checkpoint .pt or an exported .onnx", optional(str)),
        "source": Option(None, "image file, folder or glob pattern; a video file, a camera (0, /dev/video0) "
                         "or a stream URL (rtsp://, http://)", optional(str)),
        "conf": Option(0.25, "minimum score to keep", float_range(0, 1)),
        "iou": Option(0.45, "NMS IoU threshold", float_range(0, 1)),
        "max_det": Option(200, "detections per image", positive_int),
        "batch": Option(8, "images per forward pass", positive_int),
        "device": Option("auto", "auto, cpu, cuda or cuda:N"),
        "backend": Option("auto", "inference backend (auto: the fastest lossless one here, printed)",
                          choices=list(BACKENDS)),
        "data": Option(None, "dataset to calibrate and check an int8 export on (default: the checkpoint's)",
                       optional(str)),
        "threads": Option(None, "ONNX Runtime intra-op threads (default: one per core)", optional(positive_int)),
        "save": Option(True, "write annotated images (a video source: an annotated .mp4)", boolean),
        "slice": Option("auto", "sliced inference for big images: auto (tiles where images are much larger than "
                        "the training images; printed), false, or a tile size in pixels", slice_value),
        "max_frames": Option(0, "video sources: stop after this many frames (0: until the source ends)", int),
        "timeout": Option(30.0, "video sources: seconds to wait to open the source or for a frame",
                          float_range(0.1, 3600)),
        "progress": Option(True, "progress bar", boolean),
        "project": Option("runs", "results folder"), "name": Option("predict", "run name"),
        "exist_ok": Option(False, "reuse an existing run folder", boolean),
    }



def info_options() -> Dict[str, Option]:
    return {"model": Option("dsod300", "model preset", choices=model_names()),
            "num_classes": Option(None, "classes including background (21 VOC, 81 COCO)", positive_int),
            "imgsz": Option(None, "input size (square)", positive_int)}


def data_options() -> Dict[str, Option]:
    return {
        "action": Option("check", "what to do", choices=["check"]),
        "data": Option(None, "dataset (YAML, VOC root, COCO JSON, YOLO data.yaml)", optional(str)),
        "model": Option("dsod300", "model whose default boxes to check coverage against", choices=model_names()),
        "anchors": Option("auto", "auto: also the default boxes fitted to the training boxes (as training "
                          "does); preset: the preset's only", choices=["auto", "preset"]),
        "samples": Option(0, "also draw a grid of this many augmented training samples", int),
        "strict": Option(False, "fail on the first problem instead of skipping it", boolean),
        "project": Option("runs", "results folder"), "name": Option("data", "run name"),
        "exist_ok": Option(False, "reuse an existing run folder", boolean)}


def demo_options() -> Dict[str, Option]:
    return {"iterations": Option(300, "training iterations", positive_int),
            "lr": Option(5e-3, "AdamW learning rate", nonneg_float),
            "augment": Option(False, "use the SSD augmentation (slower to converge)", boolean),
            "project": Option("runs", "results folder")}


def export_options() -> Dict[str, Option]:
    from ..export import DEFAULTS as D

    def o(key, help, kind=str, choices=None):
        return Option(D[key], help, kind, choices)
    return {
        "model": o("model", "checkpoint .pt to export (a preset: random weights, to try the pipeline)", optional(str)),
        "format": o("format", "output format", choices=["onnx"]),
        "out": o("out", "output path (default: the checkpoint's, .onnx)", optional(str)),
        "nms": o("nms", "add ONNX NonMaxSuppression (output `selected`)", boolean),
        "conf": o("conf", "NMS score threshold baked in with nms=true", float_range(0, 1)),
        "iou": o("iou", "NMS IoU threshold baked in with nms=true", float_range(0, 1)),
        "max_det": o("max_det", "boxes per class with nms=true", positive_int),
        "opset": o("opset", "ONNX opset", positive_int),
        "imgsz": o("imgsz", "input size (default: the checkpoint's)", optional(positive_int)),
        "graph": o("graph", "fused (BN folded) or plain (the training graph)", choices=["fused", "plain"]),
        "data": o("data", "dataset (int8 calibration, verification, mAP check) or images to verify on",
                  optional(str)),
        "verify_n": o("verify_n", "verification images", positive_int),
        "atol": o("atol", "largest |onnx - eager| accepted", nonneg_float),
        "int8": o("int8", "also write <out>-int8.onnx, its mAP change measured on data's val split", boolean),
        "calib": o("calib", "calibration images instead of the dataset's train images", optional(str)),
        "calib_n": o("calib_n", "calibration images", positive_int),
        "calib_method": o("calib_method", "int8 calibration", choices=["minmax", "entropy", "percentile"]),
        "reduce_range": o("reduce_range", "7-bit int8 weights (auto: 7 without VNNI/AMX, 8 with)", auto_bool),
        "int8_keep_fp32": o("int8_keep_fp32", "comma-separated node-name parts left in float (e.g. /stem/)"),
        "threads": o("threads", "intra-op threads for verification", optional(positive_int)),
    }


def bench_options() -> Dict[str, Option]:
    from ..bench import DEFAULTS as D

    def o(key, help, kind=str, choices=None):
        return Option(D[key], help, kind, choices)
    return {
        "model": o("model", "preset name or checkpoint .pt"),
        "compare": o("compare", "comma-separated peers (ssd300_vgg16, ssdlite320) or none"),
        "json": o("json", "write the results there", optional(str)),
        "batch": o("batch", "the large batch (batch 1 is always measured)", positive_int),
        "runs": o("runs", "timed repetitions per measurement", positive_int),
        "backends": o("backends", "comma-separated backends of our model (see below)"),
        "imgsz": o("imgsz", "input size (default: the model's)", optional(positive_int)),
        "data": o("data", "images for calibration and post-processing", optional(str)),
        "threads": o("threads", "intra-op threads, or auto (the fastest for our eager model)"),
        "threads_sweep": o("threads_sweep", "also time the fused backend at each thread count", boolean),
        "train": o("train", "training section: all, ours or none", choices=["all", "ours", "none"]),
        "train_steps": o("train_steps", "timed training steps per configuration", positive_int),
        "train_model": o("train_model", "the training section's model (default: model)", optional(str)),
        "train_batch": o("train_batch", "its batch (default: batch)", optional(positive_int)),
        "train_rounds": o("train_rounds", "round-robin repetitions of the training section", positive_int),
        "train_only": o("train_only", "comma-separated configurations to keep", optional(str)),
    }
