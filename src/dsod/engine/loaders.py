"""The training data streams, shared by the trainer and the Faster R-CNN comparison
(experiments/frcnn.py): one seeded, resumable sampler (``data.sampler.ResumableBatchSampler``) for
the training batches, and side streams of augmented training batches for the speed probe and
precise BN that leave the training order untouched."""
from __future__ import annotations

from typing import Iterator

from torch.utils.data import DataLoader, Dataset

from ..data import collate
from ..data.sampler import ResumableBatchSampler


def train_loader(dataset: Dataset, batch: int, *, seed: int, rank: int = 0, world: int = 1, workers: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    """Shuffled, full batches of ``(index, seed)`` keys; ``loader.batch_sampler.set_epoch(e, b)`` says
    where to (re)start."""
    sampler = ResumableBatchSampler(len(dataset), batch, shuffle=True, seed=seed, rank=rank, world=world,
                                    drop_last=True)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                      pin_memory=pin_memory, persistent_workers=False)


def side_batches(dataset: Dataset, batch: int, num_batches: int, *, seed: int, rank: int = 0, world: int = 1,
                 workers: int = 0, targets: bool = False) -> Iterator:
    """``num_batches`` augmented training batches drawn as in training but from a stream of their own
    (``seed``: the caller derives it from the run's seed and the iteration); images only unless
    ``targets``."""
    loader = train_loader(dataset, batch, seed=seed, rank=rank, world=world, workers=workers)
    done = 0
    while done < num_batches:
        for images, labels in loader:  # each pass is the next epoch of this stream
            yield (images, labels) if targets else images
            done += 1
            if done == num_batches:
                return


def side_seed(seed: int, iteration: int, stream: int = 0) -> int:
    """The seed of a side stream at ``iteration``: apart from the training stream's and each other's."""
    return (seed + 1) * 1_000_003 + iteration + stream * 7919
