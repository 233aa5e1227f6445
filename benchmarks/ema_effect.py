"""The EMA's effect at the end of a run, at no training cost: a last.pt written with ``ema`` on holds
both the averaged weights (``model``) and the raw training weights (``train_model``). Both are scored
on the validation split with BN statistics re-estimated the same way (as ``dsod train`` does before
it saves: ``precise_bn`` images of the run's own augmentation, its batch size).

    python benchmarks/ema_effect.py runs/NAME/weights/last.pt data=../shared/data/bccd
"""
from __future__ import annotations

import json
import sys

import torch
from torch.utils.data import DataLoader


def main(argv):
    from dsod.data import DetectionDataset, collate, eval_loader, load_dataset, train_transform
    from dsod.data.sampler import ResumableBatchSampler
    from dsod.engine.evaluate import run_evaluation
    from dsod.engine.precise_bn import recompute_bn_stats
    from dsod.metrics import Evaluator
    from dsod.model.checkpoint import build_from_checkpoint, load_checkpoint

    path, opts = argv[0], dict(a.split("=", 1) for a in argv[1:])
    ckpt = load_checkpoint(path)
    if ckpt.get("train_model") is None:
        raise SystemExit(f"{path}: no raw training weights in it (trained with ema=false?)")
    ta = ckpt["train_args"]
    spec = load_dataset(opts.get("data", ta["data"]), val_fraction=ta.get("val_fraction"),
                        val_images=ta.get("val_images"))
    val = spec.records("val")
    train_set = DetectionDataset(spec.records("train"), train_transform(ckpt["image_size"], mode=ta["augment"],
                                 flipud=ta["flipud"]), train=True)
    batch = int(ta["batch"])
    images = int(opts.get("images", 256))
    out = {}
    for key in ("model", "train_model"):
        model, cfg = build_from_checkpoint({**ckpt, "model": ckpt[key]})
        sampler = ResumableBatchSampler(len(train_set), batch, shuffle=True, seed=12345, drop_last=True)
        sampler.set_epoch(0)
        loader = DataLoader(train_set, batch_sampler=sampler, collate_fn=collate)
        batches = (b[0] for _, b in zip(range(max(1, images // batch)), loader))
        recompute_bn_stats(model, batches, torch.device("cpu"))
        vl = eval_loader(val, cfg.image_size, 16)
        m = run_evaluation(model, vl, Evaluator(spec.info, val), torch.device("cpu"), progress=False)
        out["ema" if key == "model" else "raw"] = {"voc07_map50": round(m["voc07_map50"], 4),
                                                   "coco_ap": round(m["coco"]["AP"], 4)}
    out["checkpoint"], out["iteration"], out["ema_updates"] = path, ckpt["iteration"], ckpt["ema"]["updates"]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
