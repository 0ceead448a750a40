"""The fastai DataBlock of a data set: the tool's items, letterbox, folds and policy, as fastai users build data.

`datablock` is a `DataBlock` over the item table (`data.items`: one row per image, with `path`,
`label` and `fold` columns): fastai's `ImageBlock` with each file decoded and letterboxed exactly
as the cache holds it (`data.images.Letterboxed`), a `CategoryBlock` in the task's severity order
(never alphabetical), the folds as splitter (`FoldSplitter`), the albumentations policy as a
training-only item transform (`data.augment.AlbumentationsTransform`), and fastai's batch
transforms (`IntToFloatTensor`, `Normalize` with the model's statistics). Without augmentation its
batches are the device feed's (`data.feed`), image for image, label for label, in the same order.

`herlev train --augment albumentations` trains through it (`training_dataloaders`: each image
augmented in DataLoader worker processes). The device feed, the default, is the fast path on a
GPU; the DataBlock is the one to take into a notebook, or to extend with albumentations' transforms.

What does not live here: decoding and letterboxing (`data.images`), the policies (`data.augment`),
the folds and the inner split (`data.items`).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch
from fastai.callback.data import WeightedDL
from fastai.data.block import CategoryBlock, DataBlock, TransformBlock
from fastai.data.core import DataLoaders
from fastai.data.transforms import ColReader, IntToFloatTensor, Normalize
from fastai.vision.core import PILImage

from herlev_fa.data.augment import AlbumentationsTransform, Policy, train_augment
from herlev_fa.data.feed import balance_weights, require_training_rows
from herlev_fa.data.images import Letterboxed
from herlev_fa.data.items import inner_split
from herlev_fa.errors import HerlevError
from herlev_fa.labels import Task


class FoldSplitter:
    """fastai splitter from the item table's `fold` column: train on every fold but `fold`, validate on it.

    With `val_split`, the validation split is instead the inner split of the training folds
    (`data.items.inner_split`, seeded by `seed`: what `--keep best` chooses the epoch on) and the
    held-out `fold` is a third subset (`dls[2]`), neither trained nor validated on. Indices are in
    the table's order.
    """

    def __init__(self, fold: int, val_split: float | None = None, seed: int = 0):
        self.fold, self.val_split, self.seed = fold, val_split, seed

    def __call__(self, items: pd.DataFrame) -> list[list[int]]:
        if "fold" not in items.columns:
            raise HerlevError("the items have no 'fold' column: assign folds first (data.items.assign_folds)")
        held = items["fold"].to_numpy() == self.fold  # [N]
        if not held.any():
            folds = ", ".join(str(k) for k in sorted(set(items["fold"])))
            raise HerlevError(f"no item is in fold {self.fold} (folds: {folds})")
        valid = held if self.val_split is None else inner_split(items.reset_index(drop=True), self.fold,
                                                                self.val_split, self.seed)
        train = ~valid & ~held
        require_training_rows(int(train.sum()))
        splits = [train, valid] if self.val_split is None else [train, valid, held]
        return [np.flatnonzero(s).tolist() for s in splits]


def datablock(task: Task, size: int, mean: tuple[float, ...], std: tuple[float, ...], fold: int = 0,
              policy: Policy | None = None, val_split: float | None = None, seed: int = 0,
              cache: dict[str, np.ndarray] | None = None) -> DataBlock:
    """The fastai DataBlock of the item table (`data.items.scan` + a `fold` column), for `size` px images.

    Batches are (TensorImage float [B, 3, size, size] normalised with the model's `mean`/`std`,
    TensorCategory [B] class indices in `task.classes` order). Use it as any DataBlock:
    `datablock(...).dataloaders(items, bs=32)`.

    Args:
        fold: the held-out fold, validated on (`FoldSplitter`).
        policy: the random training policy (`data.augment.POLICIES`) applied per image by
            albumentations on the training split; None trains without augmentation.
        val_split, seed: validate on a seeded inner split of the training folds instead, and hold
            `fold` out as a third subset (`FoldSplitter`).
        cache: decoded images (`data.images.decode_all` at `size`): read there instead of decoding
            each file every epoch.
    """
    # fastai's ImageBlock (PILImage.create, then IntToFloatTensor on the batch), each file letterboxed first
    images = TransformBlock(type_tfms=[Letterboxed(size, cache), PILImage.create], batch_tfms=IntToFloatTensor)
    item_tfms = [] if policy is None else [AlbumentationsTransform(train_augment(policy=policy))]
    return DataBlock(blocks=(images, CategoryBlock(vocab=list(task.classes), sort=False)),
                     get_x=ColReader("path"), get_y=ColReader("label"),
                     splitter=FoldSplitter(fold, val_split, seed),
                     item_tfms=item_tfms,
                     batch_tfms=[Normalize.from_stats(list(mean), list(std), cuda=False)])  # after IntToFloatTensor


def default_workers(device: str) -> int:
    """Worker processes for per-image augmentation: none on the CPU (they would share its cores), up to 8 on a GPU."""
    return 0 if device == "cpu" else min(8, os.cpu_count() or 1)


def training_dataloaders(block: DataBlock, items: pd.DataFrame, bs: int, device: str = "cpu",
                         workers: int | None = None, balance: bool = False) -> DataLoaders:
    """The DataBlock's DataLoaders as `herlev train` uses them: `dls.train`, `dls.valid` (and `dls[2]`: held-out fold).

    The training split is shuffled in batches of `bs` (at most its size; the last partial batch
    dropped), its images augmented in `workers` processes (default `default_workers`); the other
    splits keep the table's order and are read in the main process.
    `balance`: fastai's `WeightedDL` draws the training items (with replacement; the epoch keeps
    its length) so that every class is equally likely.

    Raises:
        HerlevError: the items have no `fold` column, no item in the held-out fold, or fewer than
            2 training images.
    """
    dsets = block.datasets(items)
    first = {}
    if balance:
        y = pd.factorize(items["label"].iloc[dsets.splits[0]])[0]  # [n_train] any class numbering
        first = {"wgts": balance_weights(y)}
    n_workers = default_workers(device) if workers is None else workers
    return dsets.dataloaders(bs=max(1, min(bs, len(dsets.splits[0]))), val_bs=bs,
                             dl_type=WeightedDL if balance else None,
                             dl_kwargs=[first] + [{"num_workers": 0}] * (dsets.n_subsets - 1),
                             after_item=block.item_tfms, after_batch=block.batch_tfms, device=torch.device(device),
                             num_workers=n_workers, pin_memory=n_workers > 0 and device != "cpu")
