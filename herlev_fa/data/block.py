"""The fastai DataBlock: item table + decoded cache -> DataLoaders for one fold.

`ImageBlock` + `CategoryBlock(vocab=task.classes, sort=False)`: the vocab is the task's
severity order, never alphabetical (the regression term maps class index to severity).
Batches reach the GPU with non-blocking copies from pinned memory (`NonBlockingDL`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from fastai.data.block import CategoryBlock, DataBlock
from fastai.data.core import DataLoaders, TfmdDL
from fastai.data.load import _loaders  # fastai 2.8's (worker, in-process) torch iterators; pinned <2.9
from fastai.data.transforms import ColReader, ColSplitter, Normalize
from fastai.torch_core import to_device
from fastai.vision.data import ImageBlock

from herlev_fa.data.augment import AlbumentationsTransform, train_augment
from herlev_fa.errors import HerlevError
from herlev_fa.labels import Task


class NonBlockingDL(TfmdDL):
    """fastai's TfmdDL, copying each batch to the device with `non_blocking=True`.

    fastai's loop copies with a blocking `to_device(b, device)`: on CUDA the host then waits for
    the copy, and so for every kernel queued before it (the previous step), once per batch. From
    pinned memory a non-blocking copy is queued on the stream like any kernel, in order, and the
    host goes on to the next batch. The loop is fastai 2.8's `DataLoader.__iter__` with that one
    argument changed; on the CPU both copy nothing.
    """

    def __iter__(self):
        self.randomize()
        self.before_iter()
        self._DataLoader__idxs = self.get_idxs()  # fastai's private index list, made in the main process
        for b in _loaders[self.fake_l.num_workers == 0](self.fake_l):
            if self.pin_memory and type(b) is list:  # pinning turns tuples into lists
                b = tuple(b)
            if self.device is not None:
                b = to_device(b, self.device, non_blocking=True)
            yield self.after_batch(b)
        self.after_iter()
        if hasattr(self, "it"):
            del self.it


class CachedImage:
    """get_x: an item row -> its decoded, letterboxed image, uint8 [S, S, 3] (no file access)."""

    def __init__(self, cache: dict[str, np.ndarray]):
        self.cache = cache

    def __call__(self, row: pd.Series) -> np.ndarray:
        return self.cache[row["path"]]


def _both_splits(items: pd.DataFrame) -> tuple[list[int], list[int]]:
    """Inference splitter: every item in both splits (fastai sets transforms up on the train split)."""
    every = list(range(len(items)))
    return every, every


def build_dataloaders(items: pd.DataFrame, cache: dict[str, np.ndarray], task: Task, valid: np.ndarray,
                      bs: int, mean: tuple[float, ...], std: tuple[float, ...], device: str = "cpu",
                      workers: int | None = None, inference: bool = False, seed: int | None = None,
                      dl_type: type[TfmdDL] = NonBlockingDL) -> DataLoaders:
    """DataLoaders over `items` with `valid` (bool [N]) marking the validation rows.

    Batches are float [B, 3, S, S], normalised with the model's `mean`/`std`; targets are
    class indices [B] in the task's severity order.

    `inference`: ignore `valid` and put every row in the validation split (`dls.valid`).
    `dl_type`: fastai's DataLoader class (`TfmdDL` copies batches to the GPU blocking).

    Raises:
        HerlevError: the training split is smaller than 2 images.
    """
    frame = items.assign(is_valid=np.asarray(valid, dtype=bool)).reset_index(drop=True)
    n_train = len(frame) if inference else int((~frame["is_valid"]).sum())
    if n_train < 2 and not inference:
        raise HerlevError(f"only {n_train} training image(s) left after the split; add images or use fewer folds")
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock(vocab=list(task.classes), sort=False)),
        get_x=CachedImage(cache),
        get_y=ColReader("label"),
        splitter=_both_splits if inference else ColSplitter("is_valid"),
        item_tfms=[] if inference else [AlbumentationsTransform(train_augment(seed))],
        batch_tfms=[Normalize.from_stats(list(mean), list(std))],
    )
    if workers is None:
        workers = 0 if device == "cpu" else 8
    return block.dataloaders(frame, bs=max(1, min(bs, n_train)), val_bs=bs, num_workers=workers, device=device,
                             pin_memory=device != "cpu", dl_type=dl_type)
