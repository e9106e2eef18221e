"""One LightningDataModule for every dataset, configured by Hydra.

The batch size is global (``global_batch_size``): each of W processes loads
``global_batch_size / W`` samples, so a config means the same optimisation on one CPU or
eight GPUs (users.md F19). Sample order is a seeded permutation per epoch shared by every
process (each takes an interleaved shard), so 2 processes x 8 see exactly the samples of
1 process x 16; a run resumed mid-epoch skips the batches it has already trained on.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from argen.data.base import collate_samples

log = logging.getLogger(__name__)


class EpochShardSampler(Sampler[int]):
    """Seeded per-epoch permutation, truncated to whole global batches, sharded across ranks.

    Global batch b of epoch e is ``perm_e[b*G:(b+1)*G]``; rank r gets its elements
    ``r, r+W, r+2W, ...``. ``skip_batches`` drops the first batches of the next iteration
    only (mid-epoch resume). With ``shuffle=False`` the order is 0..N-1.
    """

    def __init__(self, *, size: int, global_batch_size: int, world_size: int, rank: int, seed: int,
                 shuffle: bool = True, drop_last: bool = True) -> None:
        if global_batch_size % world_size != 0:
            raise ValueError(f"global_batch_size {global_batch_size} is not divisible by the {world_size} "
                             f"processes; choose a multiple of {world_size}")
        self.size = size
        self.global_batch_size = global_batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.skip_batches = 0
        self.num_batches = size // global_batch_size if drop_last else math.ceil(size / global_batch_size)
        if self.num_batches == 0:
            raise ValueError(f"dataset of {size} samples is smaller than one global batch of {global_batch_size}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches * (self.global_batch_size // self.world_size)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
            order = torch.randperm(self.size, generator=g)
        else:
            order = torch.arange(self.size)
        total = self.num_batches * self.global_batch_size
        if total > self.size:  # pad the last batch by wrapping around (drop_last=False)
            order = torch.cat([order, order[: total - self.size]])
        order = order[self.skip_batches * self.global_batch_size: total]
        self.skip_batches = 0
        return iter(order[self.rank:: self.world_size].tolist())


def auto_workers(*, cpus: int | None = None, processes: int = 1) -> int:
    """Loader workers per process when none are configured: this process's share of the CPUs it may
    use, less one for the training loop itself, at most 4 (2 cores, 1 process: 1 worker)."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cpus // max(processes, 1) - 1))


class DataModule(L.LightningDataModule):
    """Wraps train/val/test datasets (instantiated by Hydra) with sharded, resumable loaders.

    num_workers: loader processes per training process; None: :func:`auto_workers` of this machine.
    """

    def __init__(self, *, train: Dataset, val: Dataset | None = None, test: Dataset | None = None,
                 global_batch_size: int = 32, eval_batch_size: int | None = None, num_workers: int | None = 0,
                 seed: int = 0, pin_memory: bool = False) -> None:
        super().__init__()
        self.train_set, self.val_set, self.test_set = train, val, test
        self.global_batch_size = global_batch_size
        self.eval_batch_size = eval_batch_size or global_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.pin_memory = pin_memory

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def workers(self) -> int:
        if self.num_workers is not None:
            return int(self.num_workers)
        trainer = self.trainer
        on_this_node = trainer.world_size // max(trainer.num_nodes, 1) if trainer is not None else 1
        return auto_workers(processes=on_this_node)

    def _loader(self, dataset: Dataset, sampler: Sampler[int], batch_size: int) -> DataLoader:
        workers = self.workers()
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                          collate_fn=collate_samples, pin_memory=self.pin_memory, persistent_workers=workers > 0)

    def train_dataloader(self) -> DataLoader:
        world, rank = self._world()
        sampler = EpochShardSampler(size=len(self.train_set), global_batch_size=self.global_batch_size,
                                    world_size=world, rank=rank, seed=self.seed)
        done = self._batches_done_this_epoch()
        sampler.skip_batches = done if done < sampler.num_batches else 0
        if sampler.skip_batches:
            log.info("resuming mid-epoch: skipping the %d batches already trained on", sampler.skip_batches)
        return self._loader(self.train_set, sampler, self.global_batch_size // world)

    def _batches_done_this_epoch(self) -> int:
        trainer = self.trainer
        if trainer is None:
            return 0
        # Checkpoints are written in on_train_batch_end, after ``processed`` is incremented and
        # before ``completed`` is: ``processed`` counts the batches the checkpoint has trained on.
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        return int(progress.processed)

    def _eval_loader(self, dataset: Dataset | None) -> DataLoader | list[Any]:
        if dataset is None:
            return []
        world, rank = self._world()
        batch = max(1, self.eval_batch_size // world)
        sampler = EpochShardSampler(size=len(dataset), global_batch_size=batch * world, world_size=world,
                                    rank=rank, seed=self.seed, shuffle=False, drop_last=False)
        return self._loader(dataset, sampler, batch)

    def val_dataloader(self) -> DataLoader | list[Any]:
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader | list[Any]:
        return self._eval_loader(self.test_set)
