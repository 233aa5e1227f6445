"""Datasets for DSOD: readers (VOC XML, COCO JSON, YOLO txt) -> ``ImageRecord``s -> SSD augmentation ->
network-ready batches, plus a dataset checker.

    from dsod.data import load_dataset, DetectionDataset, train_transform, build_dataloader
    spec = load_dataset("data.yaml")            # or a VOC root, a COCO JSON, a YOLO data.yaml
    train = DetectionDataset(spec.records("train"), train_transform(300))
    loader = build_dataloader(train, batch_size=8, shuffle=True, workers=2, seed=0, drop_last=True)

The checker (``from dsod.data.check import check, format_report``) is not imported here: it needs
matplotlib, which training does not; its default boxes come from the caller (``dsod data check``
makes them from the model presets). Otherwise ``dsod.data`` uses only ``dsod.config`` and the records
contract.
"""
from .dataset import DetectionDataset, build_dataloader, collate, eval_loader, raw_loader, seed_worker
from .images import MAX_PIXELS, ImageError, image_size, load_image, load_image_bgr
from .records import DatasetError, DatasetInfo, ImageRecord, SplitReport
from .sampler import ResumableBatchSampler
from .spec import DatasetSpec, load_dataset
from .transforms import (
                         AUGMENT_MODES,
                         SeededTransform,
                         SSDBatchSamplerCrop,
                         SSDPhotometricDistort,
                         ToNetworkInput,
                         augment_mode,
                         denormalize,
                         eval_transform,
                         train_transform,
)

__all__ = [
    "load_dataset", "DatasetSpec", "DatasetInfo", "ImageRecord", "DatasetError", "SplitReport",
    "DetectionDataset", "collate", "build_dataloader", "eval_loader", "raw_loader", "ResumableBatchSampler", "seed_worker",
    "train_transform", "eval_transform", "SSDPhotometricDistort", "SSDBatchSamplerCrop", "ToNetworkInput",
    "SeededTransform", "denormalize", "AUGMENT_MODES", "augment_mode",
    "load_image", "load_image_bgr", "image_size", "ImageError", "MAX_PIXELS",
]

