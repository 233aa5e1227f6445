"""`dsod` command line: Ultralytics-style ``key=value`` arguments; parses and wires, nothing more.

    dsod train data=bccd.yaml model=dsod-tiny epochs=30 batch=16 device=cpu project=runs name=exp
    dsod val data=bccd.yaml model=runs/exp/weights/best.pt      (or detections=dets.json)
    dsod predict model=runs/exp/weights/best.pt source=img.jpg|folder|"glob/*.jpg" conf=0.25
    dsod info model=dsod300 num_classes=21
    dsod data check data=bccd.yaml
    dsod demo
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


@dataclass
class Option:
    default: object
    help: str
    type: Callable = str
    choices: Optional[List[str]] = None


@dataclass
class Command:
    help: str
    run: Callable[[Dict[str, object]], int]
    options: Dict[str, Option] = field(default_factory=dict)
    # Commands that validate their own keys (export, bench) get the raw key=value strings.
    passthrough: bool = False
    doc: str = ""


def _bool(v: str) -> bool:
    low = v.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def parse_kv(cmd_name: str, cmd: Command, argv: List[str]) -> Dict[str, object]:
    values = {k: o.default for k, o in cmd.options.items()}
    for arg in argv:
        if "=" not in arg:
            raise CLIError(f"'{arg}' is not key=value; valid keys for 'dsod {cmd_name}': {', '.join(cmd.options)}")
        key, raw = arg.split("=", 1)
        key = key.lstrip("-").replace("-", "_")
        if key not in cmd.options:
            raise CLIError(f"unknown key '{key}' for 'dsod {cmd_name}'; valid: {', '.join(cmd.options)}")
        opt = cmd.options[key]
        if opt.choices is not None and raw not in opt.choices:
            raise CLIError(f"{key}={raw} is not valid; choose one of: {', '.join(opt.choices)}")
        try:
            values[key] = opt.type(raw)
        except ValueError as e:
            raise CLIError(f"{key}={raw} is not valid: {e}") from None
    return values


def _model_names() -> List[str]:
    from .config import PRESETS
    return list(PRESETS)


def _positive_int(v: str) -> int:
    n = int(v)
    if n < 1:
        raise ValueError("must be a positive integer")
    return n


def cmd_info(args: Dict[str, object]) -> int:
    from .model import build_model
    from .model.summary import summarize

    overrides = {}
    if args["num_classes"] is not None:
        overrides["num_classes"] = args["num_classes"]
    if args["imgsz"] is not None:
        overrides["image_size"] = args["imgsz"]
    try:
        model = build_model(str(args["model"]), **overrides)
    except (ValueError, RuntimeError) as e:
        raise CLIError(f"cannot build model '{args['model']}': {e}") from None
    print(summarize(model).format())
    return 0


def _float_range(lo: float, hi: float):
    def parse(v: str) -> float:
        x = float(v)
        if not lo <= x <= hi:
            raise ValueError(f"must be between {lo:g} and {hi:g}")
        return x
    return parse


def _nonneg_float(v: str) -> float:
    x = float(v)
    if x < 0:
        raise ValueError("must be >= 0")
    return x


def _floats(v: str) -> tuple:
    return tuple(float(x) for x in v.strip("[]()").split(",") if x.strip())


def _augment(v: str) -> str:
    from .data import AUGMENT_MODES, augment_mode
    try:
        return augment_mode(v)
    except ValueError:
        raise ValueError(f"choose one of: {', '.join(AUGMENT_MODES)}") from None


def _precise_bn(v: str):
    from .engine.train_args import TrainingError, precise_bn_images
    try:
        precise_bn_images(v)
    except TrainingError:
        raise ValueError("use auto, false or a number of images") from None
    return v


def _duration(v: str):
    from .engine.budget import parse_duration
    parse_duration(v)  # a ValueError names the problem
    return v


def _auto_bool(v: str):
    return None if v.strip().lower() in ("auto", "none", "") else _bool(v)


def _optional(kind):
    def parse(v: str):
        return None if v.lower() in ("none", "null", "") else kind(v)
    return parse


def _train_options() -> Dict[str, Option]:
    import dataclasses

    from .engine.train_args import TrainArgs

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
                      "and checkpoint (auto: 256; false: off)",
        "time": "time budget (30m, 2h, 1h30m; a bare number is hours): sets the iterations to fit it",
        "recipe": "auto (short runs: AdamW/cosine/light; long runs: the paper's), paper or short",
        "ema": "EMA of the weights, evaluated and saved (auto: the recipe's)",
        "patience": "stop after N evaluations without improvement", "anchors": "auto (fitted to the data) or preset",
        "val_fraction": "held-out fraction when the dataset has no val split",
        "weight_decay": "weight decay (auto: the recipe's)", "no_decay_norm": "no weight decay on norms (auto: the recipe's)",
    }
    types = {
        "data": _optional(str), "model": str, "weights": _optional(str), "resume": _optional(str),
        "epochs": _positive_int, "iterations": _optional(_positive_int), "batch": _positive_int,
        "accumulate": _positive_int, "imgsz": _optional(_positive_int), "lr": _optional(_nonneg_float),
        "momentum": _float_range(0, 1), "weight_decay": _optional(_nonneg_float), "no_decay_norm": _auto_bool, "augment": _augment, "flipud": _float_range(0, 1),
        "milestones": _floats, "warmup": _optional(int), "amp": _bool, "bf16": _auto_bool, "channels_last": _auto_bool, "grad_clip": _nonneg_float,
        "max_bad_steps": _positive_int, "bn_decay": _optional(_float_range(0, 1)), "workers": int, "seed": int, "exist_ok": _bool,
        "val_interval": _optional(_positive_int), "save_interval": _optional(_positive_int), "val": _bool,
        "plots": _bool, "progress": _bool, "max_images": _optional(_positive_int), "stop_at": _optional(_positive_int),
        "precise_bn": _precise_bn, "time": _duration, "ema": _auto_bool, "patience": _optional(_positive_int),
        "val_fraction": _float_range(0, 0.9),
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


def cmd_train(args: Dict[str, object]) -> int:
    from .data import DatasetError
    from .engine.checkpoint import CheckpointError
    from .engine.trainer import Trainer, TrainArgs, TrainingError

    try:
        trainer = Trainer(TrainArgs(**args))
        result = trainer.train()
    except (TrainingError, CheckpointError, DatasetError) as e:
        raise CLIError(str(e)) from None
    if trainer.main:
        m = result["metrics"]
        if m:
            print(f"mAP@0.5 VOC07 11-point {m.get('voc07_map50', float('nan')):.4f}, area "
                  f"{m.get('voc_area_map50', float('nan')):.4f}, COCO AP {m.get('coco', {}).get('AP', float('nan')):.4f}")
        print(f"results in {result['run_dir']} ({result['iterations']} iterations, {result['seconds']:.0f} s)")
    return 0


def _val_options() -> Dict[str, Option]:
    return {
        "data": Option(None, "dataset (YAML, VOC root, COCO JSON, YOLO data.yaml)", _optional(str)),
        "model": Option(None, "checkpoint .pt to evaluate", _optional(str)),
        "detections": Option(None, "COCO-results JSON to score instead of a model", _optional(str)),
        "split": Option("val", "split to evaluate"),
        "batch": Option(16, "images per batch", _positive_int),
        "device": Option("auto", "auto, cpu, cuda or cuda:N"),
        "workers": Option(2, "data loader workers", int),
        "conf": Option(0.01, "score threshold (0.01 as in the original evaluation)", _float_range(0, 1)),
        "iou": Option(0.45, "NMS IoU threshold", _float_range(0, 1)),
        "json": Option(None, "write all metrics to this JSON file", _optional(str)),
        "plots": Option(True, "write PR curves and a confusion matrix", _bool),
        "project": Option("runs", "results folder"), "name": Option("val", "run name"),
        "exist_ok": Option(False, "reuse an existing run folder", _bool),
    }


def cmd_val(args: Dict[str, object]) -> int:
    from .data import DatasetError, load_dataset
    from .engine.checkpoint import CheckpointError

    if not args["data"]:
        raise CLIError("data= is required (the dataset to evaluate on)")
    if bool(args["model"]) == bool(args["detections"]):
        raise CLIError("give exactly one of model=best.pt or detections=dets.json")
    try:
        spec = load_dataset(str(args["data"]))
        if args["split"] not in spec.splits:
            raise CLIError(f"split={args['split']} is not in {args['data']}; valid: {', '.join(spec.splits)}")
        records = spec.records(str(args["split"]))
        run_dir = _run_dir(args)
        if args["detections"]:
            from .metrics import score_detections_file
            evaluator = score_detections_file(spec.info, records, str(args["detections"]))
            results = evaluator.compute()
        else:
            results, evaluator = _evaluate_checkpoint(args, spec.info, records)
    except (CheckpointError, DatasetError, ValueError, OSError) as e:
        raise CLIError(str(e)) from None
    print(evaluator.format_table())
    if args["plots"]:
        evaluator.plot(run_dir)
    out_json = Path(str(args["json"])) if args["json"] else run_dir / "metrics.json"
    evaluator.write_json(out_json)
    print(f"metrics written to {out_json}; plots in {run_dir}")
    return 0


def _run_dir(args: Dict[str, object]) -> Path:
    from .engine.run import next_run_dir

    d = next_run_dir(str(args["project"]), str(args["name"]), bool(args["exist_ok"]))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _evaluate_checkpoint(args, info, records):
    from torch.utils.data import DataLoader

    from .data import DetectionDataset, collate, eval_transform
    from .engine.checkpoint import build_from_checkpoint, load_checkpoint
    from .engine.evaluate import run_evaluation
    from .engine.run import select_device
    from .metrics import Evaluator
    from .postprocess import PostProcessor

    ckpt = load_checkpoint(str(args["model"]))
    if list(ckpt["names"]) != list(info.names):
        raise CLIError(f"model={args['model']} was trained on classes {ckpt['names']} but {args['data']} has "
                       f"{info.names}")
    model, cfg = build_from_checkpoint(ckpt)
    device = select_device(str(args["device"]))
    model.to(device)
    loader = DataLoader(DetectionDataset(records, eval_transform(cfg.image_size), train=False),
                        batch_size=int(args["batch"]), num_workers=int(args["workers"]), collate_fn=collate)
    evaluator = Evaluator(info, records)
    pp = PostProcessor(score_thresh=float(args["conf"]), nms_thresh=float(args["iou"]),
                       variances=cfg.anchors.variances)
    return run_evaluation(model, loader, evaluator, device, pp), evaluator


def _predict_options() -> Dict[str, Option]:
    return {
        "model": Option(None, "checkpoint .pt (or .onnx with backend=onnxruntime)", _optional(str)),
        "source": Option(None, "image file, folder or glob pattern", _optional(str)),
        "conf": Option(0.25, "minimum score to keep", _float_range(0, 1)),
        "iou": Option(0.45, "NMS IoU threshold", _float_range(0, 1)),
        "max_det": Option(200, "detections per image", _positive_int),
        "batch": Option(8, "images per forward pass", _positive_int),
        "device": Option("auto", "auto, cpu, cuda or cuda:N"),
        "backend": Option("torch", "inference backend", choices=["torch", "onnxruntime"]),
        "save": Option(True, "write annotated images", _bool),
        "project": Option("runs", "results folder"), "name": Option("predict", "run name"),
        "exist_ok": Option(False, "reuse an existing run folder", _bool),
    }


def cmd_predict(args: Dict[str, object]) -> int:
    from .engine.checkpoint import CheckpointError
    from .engine.run import select_device
    from .predict import Detector, PredictError, draw_detections, read_rgb

    if not args["model"] or not args["source"]:
        raise CLIError("model= and source= are required")
    try:
        if args["backend"] == "onnxruntime":
            from .predict import OnnxRuntimeDetector
            det = OnnxRuntimeDetector(str(args["model"]), conf=float(args["conf"]), iou=float(args["iou"]),
                                      max_det=int(args["max_det"]))
        else:
            det = Detector.load(str(args["model"]), device=str(select_device(str(args["device"]))),
                                conf=float(args["conf"]), iou=float(args["iou"]), max_det=int(args["max_det"]))
        results = det.predict(str(args["source"]), batch=int(args["batch"]))
    except (CheckpointError, PredictError) as e:
        raise CLIError(str(e)) from None
    run_dir = _run_dir(args)
    total = 0
    for r in results:
        total += len(r["scores"])
        if args["save"] and r["path"]:
            draw_detections(read_rgb(Path(r["path"])), r, run_dir / (Path(r["path"]).stem + ".jpg"))
    from .data import DatasetInfo
    from .metrics import write_detections_json
    info = DatasetInfo(names=det.names, format="coco" if det.category_ids else "voc", category_ids=det.category_ids)
    write_detections_json(run_dir / "predictions.json", info, [r["image_id"] for r in results], results)
    print(f"{len(results)} image(s), {total} detection(s) >= {args['conf']}; annotated images and "
          f"predictions.json (COCO results format, original pixels) in {run_dir}")
    return 0


def cmd_data(args: Dict[str, object]) -> int:
    import dataclasses

    from .anchors import default_boxes
    from .boxes import cxcywh_to_xyxy
    from .config import get_config
    from .data import DatasetError, load_dataset
    from .data.check import DefaultBoxSet, check, format_report, normalised_boxes
    from .model.anchor_fit import fit_anchors
    from .model.factory import feature_sizes

    if args["action"] != "check":
        raise CLIError(f"unknown data action '{args['action']}'; valid: check")
    if not args["data"]:
        raise CLIError("data= is required")
    run_dir = _run_dir(args)
    cfg = get_config(str(args["model"]))

    def box_set(c, label: str, note: str = "") -> DefaultBoxSet:
        xyxy = cxcywh_to_xyxy(default_boxes(c.anchors, c.image_size, feature_sizes(c)))
        return DefaultBoxSet(label, c.image_size, xyxy, note)

    try:
        # the data layer does not import the model: the default boxes are made here and passed in
        spec = load_dataset(str(args["data"]), strict=bool(args["strict"]))
        sets = [box_set(cfg, f"{cfg.name} preset")]
        split = "train" if "train" in spec.splits else spec.splits[0]
        if args["anchors"] == "auto":  # as training does: fitted to the training boxes
            try:
                fit = fit_anchors(cfg, normalised_boxes(spec.records(split)))
            except DatasetError:
                if args["strict"]:
                    raise
                fit = None  # the split is unreadable: check() reports why
            if fit is not None and fit.changed:
                a = fit.anchors
                sizes = (f"fitted min/max sizes (% of input): {', '.join(map(str, a.min_sizes))} / "
                         f"{', '.join(map(str, a.max_sizes))}"
                         + (f"; aspect ratios {list(map(list, a.aspect_ratios))}" if a.aspect_ratios else ""))
                sets.append(box_set(cfg.replace(anchors=a), f"{cfg.name} fitted to {split}",
                                    f"{fit.describe()}\n  {sizes}"))
            elif fit is not None:
                sets[0] = dataclasses.replace(sets[0], note=fit.describe())
        result = check(spec, default_boxes=sets, out_dir=run_dir, samples=int(args["samples"]),
                       strict=bool(args["strict"]))
    except DatasetError as e:
        raise CLIError(str(e)) from None
    print(format_report(result))
    print(f"plots in {run_dir}")
    return 0


def cmd_demo(args: Dict[str, object]) -> int:
    """Train the small preset on the embedded synthetic set, evaluate, predict, say where it all is."""
    import time

    from .engine.trainer import Trainer, TrainArgs
    from .predict import Detector, draw_detections, read_rgb

    t0 = time.time()
    print("dsod demo: training dsod-nano from scratch on the embedded SYNTHETIC shapes set "
          "(procedurally generated, not real data), then evaluating and predicting.\n")
    # AdamW + cosine and no SSD augmentation: the paper's SGD recipe with the full augmentation needs
    # far more iterations than a 5-minute CPU demo has (measured: VOC07 mAP 0.10 after 200 of them).
    # bn_decay 0.99: with Caffe's 0.999 the running statistics of a 300-iteration run still carry its
    # first iterations (measured: mAP 0.60 with running statistics vs 0.67 with batch statistics).
    trainer = Trainer(TrainArgs(data=None, model="dsod-nano", iterations=int(args["iterations"]), batch=16,
                                optimizer="adamw", lr=float(args["lr"]), weight_decay=0.0, schedule="cosine",
                                augment=bool(args["augment"]), bn_decay=0.99,
                                warmup=30, workers=2, project=str(args["project"]), name="demo", device="cpu",
                                seed=0, val_interval=max(1, int(args["iterations"]) // 3)))
    result = trainer.train()
    best = Path(result["run_dir"]) / "weights" / "best.pt"
    det = Detector.load(best, conf=0.4)
    val_dir = Path(trainer.dataset_spec.info.root or ".") / "JPEGImages"
    images = sorted(val_dir.glob("val_*.jpg"))[:4]
    pred_dir = Path(result["run_dir"]) / "predictions"
    pred_dir.mkdir(exist_ok=True)
    for r in det.predict(images):
        draw_detections(read_rgb(Path(r["path"])), r, pred_dir / Path(r["path"]).name)
    m = result["metrics"]
    print(f"\ndemo finished in {time.time() - t0:.0f} s: mAP@0.5 (VOC07 11-point) {m.get('voc07_map50', 0):.3f}, "
          f"COCO AP {m.get('coco', {}).get('AP', 0):.3f} on the synthetic val split")
    print(f"results:      {result['run_dir']}  (results.csv, results.png, train_batch0.jpg, val_predictions.jpg)")
    print(f"weights:      {best}")
    print(f"predictions:  {pred_dir}")
    return 0


def _commands() -> Dict[str, Command]:
    model_opt = Option("dsod300", "model preset", choices=_model_names())
    commands = {
        "train": Command("train a detector from scratch", cmd_train, _train_options()),
        "val": Command("evaluate a checkpoint or a detections file (VOC07, VOC area, COCO)", cmd_val,
                       _val_options()),
        "predict": Command("detect objects in images", cmd_predict, _predict_options()),
        "info": Command(
            "print a model's trainable parameters, multiply-accumulates, sources and default boxes",
            cmd_info,
            {"model": model_opt,
             "num_classes": Option(None, "classes including background (21 VOC, 81 COCO)", _positive_int),
             "imgsz": Option(None, "input size (square)", _positive_int)}),
        "data": Command("dataset tools: `dsod data check data=...`", cmd_data, {
            "action": Option("check", "what to do", choices=["check"]),
            "data": Option(None, "dataset (YAML, VOC root, COCO JSON, YOLO data.yaml)", _optional(str)),
            "model": Option("dsod300", "model whose default boxes to check coverage against", choices=_model_names()),
            "anchors": Option("auto", "auto: also the default boxes fitted to the training boxes (as training "
                              "does); preset: the preset's only", choices=["auto", "preset"]),
            "samples": Option(0, "also draw a grid of this many augmented training samples", int),
            "strict": Option(False, "fail on the first problem instead of skipping it", _bool),
            "project": Option("runs", "results folder"), "name": Option("data", "run name"),
            "exist_ok": Option(False, "reuse an existing run folder", _bool)}),
        "demo": Command("the README's main job: train on the embedded synthetic set, evaluate, predict", cmd_demo,
                        {"iterations": Option(300, "training iterations", _positive_int),
                         "lr": Option(5e-3, "AdamW learning rate", _nonneg_float),
                         "augment": Option(False, "use the SSD augmentation (slower to converge)", _bool),
                         "project": Option("runs", "results folder")}),
    }
    commands["export"] = Command("export a checkpoint to ONNX (verified against eager; optional int8)",
                                 cmd_export, passthrough=True, doc="dsod.export")
    commands["bench"] = Command("speed, MACs and memory against torchvision's SSD peers, in one run", cmd_bench,
                                passthrough=True, doc="dsod.bench")
    return commands


def cmd_export(args: Dict[str, object]) -> int:
    from .engine.checkpoint import CheckpointError
    from .export import ExportError, export_main

    try:
        return export_main(args)
    except (ExportError, CheckpointError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None


def cmd_bench(args: Dict[str, object]) -> int:
    from .bench import BenchError, bench_main
    from .engine.checkpoint import CheckpointError

    try:
        return bench_main(args)
    except (BenchError, CheckpointError) as e:
        raise CLIError(str(e)) from None


def _usage(commands: Dict[str, Command]) -> str:
    lines = ["usage: dsod COMMAND [key=value ...]   (dsod COMMAND --help for its keys)", "", "commands:"]
    lines += [f"  {name:<8} {c.help}" for name, c in commands.items()]
    return "\n".join(lines)


def _command_help(name: str, cmd: Command) -> str:
    if cmd.passthrough:
        import importlib
        return f"usage: dsod {name} [key=value ...]\n\n{importlib.import_module(cmd.doc).__doc__}"
    lines = [f"usage: dsod {name} [key=value ...]", "", cmd.help, "", "keys:"]
    for k, o in cmd.options.items():
        choices = f" (one of: {', '.join(o.choices)})" if o.choices else ""
        lines.append(f"  {k + '=' + str(o.default):<26} {o.help}{choices}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    # Only as the `dsod` command (argv None) does main() touch process-wide settings; called from
    # Python (tests, notebooks) it leaves the caller's allocator and thread count alone.
    own_process = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _commands()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage(commands))
        return 0
    name, rest = argv[0], argv[1:]
    if name == "data" and rest and "=" not in rest[0] and not rest[0].startswith("-"):
        rest = [f"action={rest[0]}"] + rest[1:]
    if name not in commands:
        print(f"dsod: unknown command '{name}'; valid: {', '.join(commands)}", file=sys.stderr)
        return 2
    cmd = commands[name]
    if any(a in ("-h", "--help") for a in rest):
        print(_command_help(name, cmd))
        return 0
    try:
        if cmd.passthrough:
            bad = [a for a in rest if "=" not in a]
            if bad:
                raise CLIError(f"'{bad[0]}' is not key=value (see dsod {name} --help)")
            return cmd.run(dict(a.split("=", 1) for a in rest))
        keys = parse_kv(name, cmd, rest)
        if name in ("train", "demo") and own_process:  # the command's own settings (dsod.launch)
            from .launch import configure_training_process
            code = configure_training_process(argv, keys, allow_ddp=name == "train")
            if code is not None:  # this process was the parent of CPU DDP workers
                return code
        return cmd.run(keys)
    except CLIError as e:
        print(f"dsod {name}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":  # one line per run, not one per DDP worker
            print(f"dsod {name}: interrupted", file=sys.stderr)
        return 130
