"""What each ``dsod`` command does with its parsed keys: wiring only, the work is in the package."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict

from .schema import CLIError


def cmd_info(args: Dict[str, object]) -> int:
    from ..model import build_model
    from ..model.summary import summarize

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



def cmd_train(args: Dict[str, object]) -> int:
    from ..engine.trainer import TrainArgs, Trainer

    trainer = Trainer(TrainArgs(**args))
    result = trainer.train()
    if trainer.main:
        m = result["metrics"]
        if m:
            print(f"mAP@0.5 VOC07 11-point {m.get('voc07_map50', float('nan')):.4f}, area "
                  f"{m.get('voc_area_map50', float('nan')):.4f}, COCO AP {m.get('coco', {}).get('AP', float('nan')):.4f}")
        print(f"results in {result['run_dir']} ({result['iterations']} iterations, {result['seconds']:.0f} s)")
    return 0



def report_data(problems, run_dir: Path) -> None:
    """Say what reading the data found (``data.problems``), and keep it in the run folder."""
    from ..files import atomic_write_text

    print("\n".join(problems.lines), flush=True)
    atomic_write_text(run_dir / "data_problems.txt", "\n".join(problems.lines) + "\n")


def cmd_val(args: Dict[str, object]) -> int:
    from ..data import load_dataset
    from ..data.problems import split_problems

    if not args["data"]:
        raise CLIError("data= is required (the dataset to evaluate on)")
    if bool(args["model"]) == bool(args["detections"]):
        raise CLIError("give exactly one of model=best.pt or detections=dets.json")
    try:
        spec = load_dataset(str(args["data"]))
        if args["split"] not in spec.splits:
            raise CLIError(f"split={args['split']} is not in {args['data']}; valid: {', '.join(spec.splits)}")
        records = spec.records(str(args["split"]))
        run_dir = make_run_dir(args)
        report_data(split_problems(str(args["split"]), records, spec.report(str(args["split"]))), run_dir)
        if not records:
            raise CLIError(f"data={args['data']}: the {args['split']} split has no usable image to evaluate")
        if args["detections"]:
            from ..metrics import score_detections_file
            evaluator = score_detections_file(spec.info, records, str(args["detections"]))
            results = evaluator.compute()
        else:
            results, evaluator = evaluate_checkpoint(args, spec.info, records)
    except (ValueError, OSError) as e:  # DsodError reaches main(); these are raw library errors
        raise CLIError(str(e)) from None
    print(evaluator.format_table())
    if args["plots"]:
        evaluator.plot(run_dir)
    if args["save_json"] and args["model"]:
        from ..metrics import write_detections_json

        ids, dets = evaluator.detections()
        write_detections_json(run_dir / "predictions.json", spec.info, ids, dets)
    out_json = Path(str(args["json"])) if args["json"] else run_dir / "metrics.json"
    evaluator.write_json(out_json)
    print(f"metrics written to {out_json}; plots in {run_dir}")
    return 0


def make_run_dir(args: Dict[str, object]) -> Path:
    from ..engine.run import next_run_dir

    d = next_run_dir(str(args["project"]), str(args["name"]), bool(args["exist_ok"]))
    d.mkdir(parents=True, exist_ok=True)
    return d


def evaluate_checkpoint(args, info, records):
    """Score a checkpoint on ``records`` through the backend ``predict`` would serve it on (the same
    preprocessing and post-processing as ``dsod predict``)."""
    from ..data import eval_loader
    from ..inference.predict import Detector
    from ..inference.runners import detector
    from ..metrics import Evaluator
    from ..metrics.loop import evaluate

    det = Detector.load(str(args["model"]), backend=str(args["backend"]), device=str(args["device"]),
                        data=str(args["data"]), threads=args["threads"], conf=float(args["conf"]),
                        iou=float(args["iou"]))
    if list(det.names) != list(info.names):
        raise CLIError(f"model={args['model']} was trained on classes {det.names} but {args['data']} has "
                       f"{info.names}")
    evaluator = Evaluator(info, records)
    if str(args["slice"]).lower() in ("false", "no", "off", "0", "none"):
        loader = eval_loader(records, det.image_size, int(args["batch"]), int(args["workers"]))
        return evaluate(detector(det.runner, det.postprocessor), loader, evaluator), evaluator
    from ..data import raw_loader
    from ..inference.slicing import sliced_detector

    detect = sliced_detector(det.runner, det.postprocessor, det.image_size, str(args["slice"]), det.geometry)
    return evaluate(detect, raw_loader(records, int(args["workers"])), evaluator), evaluator


def cmd_predict(args: Dict[str, object]) -> int:
    from ..inference.predict import Detector, PredictError, draw_detections, read_rgb
    from ..model.checkpoint import CheckpointError

    if not args["model"] or not args["source"]:
        raise CLIError("model= and source= are required")
    from ..inference.video import is_stream

    if is_stream(str(args["source"])):
        return predict_video(args)
    try:
        det = Detector.load(str(args["model"]), backend=str(args["backend"]), device=str(args["device"]),
                            data=args["data"], threads=args["threads"], conf=float(args["conf"]),
                            iou=float(args["iou"]), max_det=int(args["max_det"]), slice=str(args["slice"]))
        results = det.predict(str(args["source"]), batch=int(args["batch"]))
    except (CheckpointError, PredictError) as e:
        raise CLIError(str(e)) from None
    run_dir = make_run_dir(args)
    if det.skipped:
        more = f" (and {len(det.skipped) - 1} more)" if len(det.skipped) > 1 else ""
        print(f"{len(det.skipped)} image(s) skipped, could not be decoded: {det.skipped[0]}{more}")
    if not results:
        raise CLIError(f"source={args['source']}: none of the images could be decoded")
    total = 0
    for r in results:
        total += len(r["scores"])
        if args["save"] and r["path"]:  # the image id keeps files of the same stem apart (sub/a, a.png)
            draw_detections(read_rgb(Path(r["path"])), r, run_dir / f"{r['image_id']}.jpg")
    from ..data import DatasetInfo
    from ..metrics import write_detections_json
    info = DatasetInfo(names=det.names, format="coco" if det.category_ids else "voc", category_ids=det.category_ids)
    write_detections_json(run_dir / "predictions.json", info, [r["image_id"] for r in results], results)
    print(f"{len(results)} image(s), {total} detection(s) >= {args['conf']}; annotated images and "
          f"predictions.json (COCO results format, original pixels) in {run_dir}")
    return 0



def predict_video(args: Dict[str, object]) -> int:
    """``dsod predict`` on a video file, camera or stream (``dsod.inference.video``)."""
    from ..inference.predict import Detector
    from ..inference.video import predict_stream

    det = Detector.load(str(args["model"]), backend=str(args["backend"]), device=str(args["device"]),
                        data=args["data"], threads=args["threads"], conf=float(args["conf"]),
                        iou=float(args["iou"]), max_det=int(args["max_det"]))
    run_dir = make_run_dir(args)
    name = Path(str(args["source"])).stem if Path(str(args["source"])).suffix else "stream"
    r = predict_stream(det, str(args["source"]), run_dir, name=name, batch=int(args["batch"]),
                       save=bool(args["save"]), max_frames=int(args["max_frames"]), timeout=float(args["timeout"]),
                       progress=bool(args["progress"]))
    if r["ended_early"]:
        print(f"source={args['source']}: the stream ended after {r['frames']} frame(s): {r['ended_early']}")
    steps = "decode, network" + (", drawing, encoding" if r["video"] else "")
    written = f", annotated video {r['video']}" if r["video"] else ""
    print(f"{r['frames']} frame(s) in {r['seconds']:.1f} s: {r['fps']:.1f} frames/s end to end ({steps}), "
          f"{r['network_fps']:.1f} frames/s the network and selection alone; per-frame detections in "
          f"{r['jsonl']}{written}")
    return 0


def cmd_data(args: Dict[str, object]) -> int:
    from ..config import get_config
    from ..data import DatasetError, load_dataset
    from ..data.check import DefaultBoxSet, check, format_report, normalised_boxes
    from ..model.anchor_fit import default_box_sets

    if args["action"] != "check":
        raise CLIError(f"unknown data action '{args['action']}'; valid: check")
    if not args["data"]:
        raise CLIError("data= is required")
    run_dir = make_run_dir(args)
    cfg = get_config(str(args["model"]))
    # the data layer does not import the model: the default boxes are made by the model and passed in
    spec = load_dataset(str(args["data"]), strict=bool(args["strict"]))
    split = "train" if "train" in spec.splits else spec.splits[0]
    boxes = None
    if args["anchors"] == "auto":  # as training does: fitted to the training boxes
        try:
            boxes = normalised_boxes(spec.records(split))
        except DatasetError:
            if args["strict"]:
                raise
            # the split is unreadable: check() reports why
    sets = [DefaultBoxSet(*s) for s in default_box_sets(cfg, boxes, split)]
    result = check(spec, default_boxes=sets, out_dir=run_dir, samples=int(args["samples"]),
                   strict=bool(args["strict"]))
    print(format_report(result))
    print(f"plots in {run_dir}")
    bad = [f"{k} {'unreadable' if v.get('error') else 'empty'}" for k, v in result["splits"].items()
           if v.get("error") or not v.get("images")]
    if bad:  # nothing to train or evaluate on there: a failure for scripts, not a report to skim
        print(f"dsod data check: {', '.join(bad)}: no usable image there", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args: Dict[str, object]) -> int:
    """Train the small preset on the embedded synthetic set, evaluate, predict, say where it all is."""
    import time

    from ..engine.trainer import TrainArgs, Trainer
    from ..inference.predict import Detector, draw_detections, read_rgb

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



def cmd_export(args: Dict[str, object]) -> int:
    from ..export import ExportError, export_main
    from ..model.checkpoint import CheckpointError

    try:
        return export_main(args)
    except (ExportError, CheckpointError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None


def cmd_bench(args: Dict[str, object]) -> int:
    from ..bench import BenchError, bench_main
    from ..model.checkpoint import CheckpointError

    try:
        return bench_main(args)
    except (BenchError, CheckpointError) as e:
        raise CLIError(str(e)) from None
