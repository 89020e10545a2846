"""A resumable, sharded, deterministic sampler: the data position is ``(epoch, batches done)``."""

from __future__ import annotations

from typing import Iterator, List

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Every process reads a disjoint shard of one seeded permutation per epoch.

    The permutation is padded (by wrapping) to a multiple of ``replicas * batch_size`` so all
    processes run the same number of steps.  ``start(epoch, batches_done)`` positions the next
    iteration; a resumed run therefore sees exactly the batches an uninterrupted one would.
    """

    def __init__(self, size: int, batch_size: int, replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True):
        if size < 1 or batch_size < 1 or not (0 <= rank < replicas):
            raise ValueError(f"bad sampler settings size={size} batch={batch_size} rank={rank}/{replicas}")
        self.size, self.batch_size, self.replicas, self.rank = size, batch_size, replicas, rank
        self.seed, self.shuffle = int(seed), shuffle
        self.epoch, self.skip_batches = 0, 0

    def batches_per_epoch(self) -> int:
        per = self.replicas * self.batch_size
        return -(-self.size // per)

    def start(self, epoch: int, batches_done: int = 0) -> None:
        self.epoch, self.skip_batches = int(epoch), int(batches_done)

    def epoch_indices(self, epoch: int) -> List[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = self.batches_per_epoch() * self.replicas * self.batch_size
        order = (order * (-(-total // len(order))))[:total]
        # rank r gets batches r, r + replicas, ... of the global order
        mine = []
        for b in range(self.rank, total // self.batch_size, self.replicas):
            mine.extend(order[b * self.batch_size:(b + 1) * self.batch_size])
        return mine

    def __iter__(self) -> Iterator[int]:
        idx = self.epoch_indices(self.epoch)[self.skip_batches * self.batch_size:]
        self.skip_batches = 0
        return iter(idx)

    def __len__(self) -> int:
        return (self.batches_per_epoch() - self.skip_batches) * self.batch_size
