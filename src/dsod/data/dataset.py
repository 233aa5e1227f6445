"""Records -> network-ready samples, batches and seeded, multi-worker data loaders.

``DetectionDataset(records, transform)[i]`` returns ``(image, target)``:
- ``image``: float32 (3, S, S), BGR, 0-255 minus the mean (104, 117, 123) (ORIGINAL.md §1.1);
- ``target``: ``boxes`` float32 (G, 4) xyxy normalised to [0, 1] of the network input, ``labels``
  int64 (G,) 0-based class index (the loss adds 1 for background), ``difficult`` bool (G,),
  ``iscrowd`` bool (G,) (evaluation datasets only), ``image_id`` (the record's, str or int),
  ``orig_size`` (h, w) ints of the original image (to map predictions back to its pixels), ``index``
  (int, the record actually returned), ``skipped`` (list of "file: reason" lines, see below).

Training datasets (``train=True``) drop ``iscrowd`` boxes: a crowd region is not an object to regress
to; evaluation datasets keep everything (the evaluator scores against the records anyway).

**Images that fail to decode at load time** (truncated, corrupt, vanished since the records were read)
must not stop a run. Training datasets (``on_error="next"``): ``__getitem__`` reports the file once
(``warnings.warn``), remembers it in ``self.skipped`` (per process: each DataLoader worker has its own
copy) and returns the next decodable record instead (index + 1, + 2, ... wrapping around), listing
what it skipped in ``target["skipped"]`` so the training loop can count them; only a dataset with no
decodable image at all raises. Evaluation datasets (``on_error="drop"``, ``eval_loader``) never
substitute: another image would be scored twice and the broken one's ground truth counted as missed.
The sample comes back as ``(None, {"image_id", "index", "dropped": "file: reason"})``; ``collate``
keeps such targets after the decoded ones, and the evaluation loop leaves the image out, counted.

**Reduced-size decoding.** A transform with ``plan``/``decode_size``/``render`` (``augment.SSDAugment``,
what ``train_transform`` returns for "ssd" and "light") draws its random geometry on the record's
boxes first; the image is then decoded only as large as that geometry needs (a JPEG at 1/2, 1/4 or
1/8 scale, ``images.load_image(min_size=...)``) and rendered. ``orig_size`` stays the record's size.

**Reproducibility.** A key may be an index or ``(index, seed)``: with a seed the transform runs with
torch's CPU generator seeded with ``seed`` inside ``torch.random.fork_rng`` (the transforms draw only
from it). ``build_dataloader`` feeds such keys (``sampler.ResumableBatchSampler``: the seed of the
sample at position p of epoch e is a function of (seed, e, p)), so the augmented batches are the same
with 0 or 8 workers and on every run; ``worker_init_fn`` additionally seeds ``random`` and NumPy in
each worker from the worker's torch seed (for user transforms that use them).
"""
from __future__ import annotations

import random
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors

from .images import MAX_PIXELS, ImageError, load_image
from .records import DatasetError, ImageRecord
from .sampler import ResumableBatchSampler


class DetectionDataset(Dataset):
    """See the module docstring. ``transform``: ``train_transform(size)`` / ``eval_transform(size)``
    (or any callable ``(tv_tensors.Image uint8 RGB, target) -> (tensor, target)``)."""

    def __init__(self, records: Sequence[ImageRecord], transform: Callable, train: bool = True,
                 max_pixels: int = MAX_PIXELS, on_error: str = "next"):
        if on_error not in ("next", "drop"):
            raise ValueError(f"on_error={on_error!r}: 'next' or 'drop'")
        self.on_error = on_error
        self.records = list(records)
        self.transform = transform
        self.train = train
        self.max_pixels = max_pixels
        self.skipped: Dict[int, str] = {}  # index -> "file: reason", images that failed to decode here

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        n = len(self.records)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} records")
        index %= n
        skipped: List[str] = []
        for step in range(n):
            i = (index + step) % n
            if i in self.skipped:
                skipped.append(self.skipped[i])
                continue
            rec = self.records[i]
            try:
                if hasattr(self.transform, "render"):  # plan -> reduced-size decode -> render
                    image, target = self._seeded(seed, self._planned, rec)
                else:
                    pixels = load_image(rec.path, self.max_pixels)
                    image, target = self._seeded(seed, self._sample, rec, pixels)
            except ImageError as e:
                if self.on_error == "drop":
                    return None, {"image_id": rec.image_id, "index": i, "dropped": f"{rec.path}: {e}"}
                msg = f"{rec.path}: {e}; skipped, using the next image"
                self.skipped[i] = msg
                skipped.append(msg)
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
                continue
            target.update(image_id=rec.image_id, orig_size=(int(rec.height), int(rec.width)), index=i,
                          skipped=skipped)
            return image, target
        first = skipped[0] if skipped else "-"
        raise DatasetError(f"none of the {n} images could be decoded (first: {first})")

    @staticmethod
    def _seeded(seed: Optional[int], fn: Callable, *args):
        if seed is None:
            return fn(*args)
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only, which is all the transforms draw from (and all fork_rng saves):
            # torch.manual_seed also queues a lazy CUDA seeding with a stack trace, ~2 ms per sample
            torch.default_generator.manual_seed(seed)
            return fn(*args)

    def _planned(self, rec: ImageRecord) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """``augment.SSDAugment``: its random geometry is drawn on the record's boxes first, so the
        image is decoded only as large as that geometry needs (``load_image(min_size=...)``); the
        transform maps the record's coordinates onto the decoded pixels by the ratio of the sizes
        (which also covers a file that changed size since the records were read)."""
        target = self.record_target(rec, int(rec.height), int(rec.width))
        plan = self.transform.plan(target)
        pixels = load_image(rec.path, self.max_pixels, min_size=self.transform.decode_size(plan))
        return self.transform.render(_chw(pixels), plan)

    def _sample(self, rec: ImageRecord, pixels: np.ndarray) -> Tuple[torch.Tensor, Dict[str, Any]]:
        h, w = pixels.shape[:2]
        return self.transform(tv_tensors.Image(_chw(pixels)), self.record_target(rec, h, w))

    def record_target(self, rec: ImageRecord, h: int, w: int) -> Dict[str, Any]:
        """The target a transform receives: the record's boxes (``BoundingBoxes`` scaled to an image
        of (h, w)), labels, flags; crowd boxes dropped for training."""
        boxes = np.asarray(rec.boxes, dtype=np.float32).reshape(-1, 4)
        labels, difficult, iscrowd = rec.labels, rec.difficult, rec.iscrowd
        if self.train and len(iscrowd) and iscrowd.any():
            keep = ~iscrowd
            boxes, labels, difficult, iscrowd = boxes[keep], labels[keep], difficult[keep], iscrowd[keep]
        if (w, h) != (rec.width, rec.height):  # the file changed since it was read: rescale its boxes
            boxes = boxes * np.array([w / rec.width, h / rec.height] * 2, dtype=np.float32)
        target: Dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(boxes.copy()), format="XYXY",
                                              canvas_size=(h, w)),
            "labels": torch.as_tensor(labels, dtype=torch.int64),
            "difficult": torch.as_tensor(difficult, dtype=torch.bool),
        }
        if not self.train:
            target["iscrowd"] = torch.as_tensor(iscrowd, dtype=torch.bool)
        return target


def _chw(pixels: np.ndarray) -> torch.Tensor:
    # contiguous CHW: the v2 kernels are an order of magnitude slower on a strided HWC view
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def collate(batch: Sequence[Tuple[torch.Tensor, Dict[str, Any]]]
            ) -> Tuple[torch.Tensor, List[Dict[str, Any]]]:
    """Images stacked to (N, 3, S, S); targets kept as a list of per-image dicts (their box counts
    differ, and the loss matches each image separately). Samples an evaluation dataset dropped
    (image None) add their targets after the N decoded ones, and no image."""
    kept = [(im, t) for im, t in batch if im is not None]
    dropped = [t for im, t in batch if im is None]
    if not kept:
        return torch.zeros(0), dropped
    images, targets = zip(*kept)
    return torch.stack(images), list(targets) + dropped


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed Python's and NumPy's RNGs from the worker's torch seed (which the
    DataLoader derives from its generator), as PyTorch's reproducibility notes recommend."""
    s = torch.initial_seed() % 2 ** 32
    random.seed(s)
    np.random.seed(s)


def build_dataloader(dataset: Dataset, batch_size: int, shuffle: bool = False, workers: int = 0,
                     seed: int = 0, drop_last: bool = False, pin_memory: bool = False,
                     persistent_workers: bool = False) -> DataLoader:
    """A seeded, reproducible, multi-worker DataLoader with ``collate``, drawing its batches from
    ``ResumableBatchSampler`` (the trainer's own sampler): each sample carries its augmentation
    seed, and each pass over the loader is the next epoch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sampler = ResumableBatchSampler(len(dataset), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                      worker_init_fn=seed_worker if workers > 0 else None, pin_memory=pin_memory,
                      persistent_workers=persistent_workers and workers > 0)


def _as_decoded(image, target):
    return image, target


def _as_list(batch):
    kept = [(im, t) for im, t in batch if im is not None]
    return [im for im, _ in kept], [t for _, t in kept] + [t for im, t in batch if im is None]


def raw_loader(records: Sequence[ImageRecord], workers: int = 0) -> DataLoader:
    """Every image of ``records`` once, in order, as decoded: (list of uint8 RGB (3, H, W) tensors,
    targets), one image a batch; undecodable images dropped as in ``eval_loader``. For evaluations
    that see the original pixels (``dsod val slice=``: sliced inference)."""
    dataset = DetectionDataset(list(records), _as_decoded, train=False, on_error="drop")
    return DataLoader(dataset, batch_size=1, shuffle=False, num_workers=int(workers), collate_fn=_as_list)


def eval_loader(records: Sequence[ImageRecord], image_size: int, batch: int = 8, workers: int = 0) -> DataLoader:
    """Every image of ``records`` once, in order, with the test-time preprocessing
    (``data.preprocess``): what training's validation, ``dsod val`` and export's checks all read."""
    from .transforms import eval_transform

    dataset = DetectionDataset(list(records), eval_transform(image_size), train=False, on_error="drop")
    return DataLoader(dataset, batch_size=max(1, int(batch)), shuffle=False, num_workers=int(workers),
                      collate_fn=collate)
