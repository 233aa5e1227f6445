"""The one seeded batch sampler: deterministic, resumable, distributed.

Every sample of every epoch gets a seed that depends only on (seed, epoch, position in the epoch);
``DetectionDataset`` seeds the augmentation with it when given an ``(index, seed)`` key. Data order
and augmentation are therefore a pure function of the global position: the same with 0 or 8
workers, across a resume in the middle of an epoch, and between 1 process with batch 2b and 2
processes with batch b (rank r takes the r-th contiguous chunk of each global batch).

The trainer says which epoch (and batch) comes next with ``set_epoch``; a plain loop over a
``build_dataloader`` loader gets the next epoch (a new order and new augmentation) each time it
iterates again, as with torch's ``RandomSampler``.
"""
from __future__ import annotations

from typing import Iterator, List, Tuple

import torch
from torch.utils.data import Sampler


def _mix(*values: int) -> int:
    # splitmix-style 64-bit mixing: independent streams for nearby (seed, epoch, position) triples
    x = 0x9E3779B97F4A7C15
    for v in values:
        x ^= (int(v) + 0x9E3779B97F4A7C15 + (x << 6) + (x >> 2)) & 0xFFFFFFFFFFFFFFFF
        x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFF


class ResumableBatchSampler(Sampler[List[Tuple[int, int]]]):
    """Yields this rank's batches of (dataset index, sample seed) for epoch ``epoch``, starting at
    global batch ``start_batch``. Incomplete final global batches are dropped when training."""

    def __init__(self, num_samples: int, batch_size: int, *, shuffle: bool, seed: int, rank: int = 0,
                 world: int = 1, drop_last: bool = True):
        if num_samples < 1:
            raise ValueError("the dataset is empty")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.shuffle, self.seed, self.rank, self.world = shuffle, seed, rank, world
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0
        self._explicit = False  # set_epoch called since the last pass
        self._passes = 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world

    def batches_per_epoch(self) -> int:
        n = self.num_samples // self.global_batch
        if not self.drop_last and self.num_samples % self.global_batch:
            n += 1
        return max(n, 1)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch
        self._explicit = True

    def _order(self) -> List[int]:
        if not self.shuffle:
            order = list(range(self.num_samples))
        else:
            g = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
            order = torch.randperm(self.num_samples, generator=g).tolist()
        if self.drop_last:
            need = self.batches_per_epoch() * self.global_batch
            while len(order) < need:  # tiny datasets: wrap around so every batch is full
                order += order[: need - len(order)]
        return order  # not dropping (evaluation): every sample once, the last batch short

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        if self._passes and not self._explicit:  # iterated again without set_epoch: the next epoch
            self.epoch, self.start_batch = self.epoch + 1, 0
        self._explicit, self._passes = False, self._passes + 1
        order = self._order()
        for b in range(self.start_batch, self.batches_per_epoch()):
            lo = b * self.global_batch + self.rank * self.batch_size
            batch = [(order[p], _mix(self.seed, self.epoch, p)) for p in range(lo, min(lo + self.batch_size, len(order)))]
            if batch:
                yield batch

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch
