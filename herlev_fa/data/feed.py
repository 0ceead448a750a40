"""The feed: decoded cache -> fastai DataLoaders, with the cache on the training device where it fits.

The letterboxed images of a data set are small (734 cells at 224 px: 110 MB of uint8), so they are
stacked once into one uint8 tensor [N, 3, S, S] and placed on the device (MONAI's cache-on-GPU
pattern). A batch is then one index operation on that tensor, and everything after it runs on
the batch, on the device, as fastai batch transforms: `IntToFloatTensor`, the random
augmentation (`data.augment.batch_augment`: dihedral, rotation, zoom, brightness, contrast,
saturation, hue, drawn per image) and `Normalize`. No worker processes, no per-item Python work
beyond one index per image, no host-to-device copy per batch: the feed's speed does not depend
on the number of CPU cores.

Where the cache does not fit the device (more than a quarter of its free memory) it stays in host
memory and each batch is gathered there and copied over (uint8, 1/4 of the float size) through
pinned memory, without making the host wait for the GPU.
`augment="albumentations"` is the opt-in per-item CPU policy (`data.augment.train_augment`):
each image is augmented by albumentations in DataLoader worker processes, one thread each, and
the batch crosses processes as uint8.

What does not live here: decoding and letterboxing (`data.images`), the policies (`data.augment`).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch
from fastai.data.core import DataLoaders, TfmdDL
from fastai.data.transforms import IntToFloatTensor, Normalize
from fastai.torch_core import TensorCategory, TensorImage

from herlev_fa.config import AUGMENTS
from herlev_fa.data.augment import ItemAugment, batch_augment, get_policy, train_augment
from herlev_fa.errors import HerlevError
from herlev_fa.labels import Task

DEVICE_SHARE = 0.25  # the cache goes on a GPU when it takes at most this share of its free memory


class CachedImages:
    """A split of the data set: the cache's images and labels, seen by fastai as a dataset of indices.

    `images` uint8 [N, 3, S, S] and `labels` int64 [N] (shared by both splits); `rows` [n] are this
    split's indices into them; `split_idx` 0 (train) or 1 (valid) selects fastai's random transforms.
    With `item_aug`, each item is an augmented uint8 [3, S, S] image instead of an index.
    """

    n_inp = 1  # one input (the image), one target: fastai need not run a batch to find out

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, rows: np.ndarray, split_idx: int,
                 item_aug: ItemAugment | None = None, balance: bool = False):
        self.images, self.labels, self.rows, self.split_idx = images, labels, np.asarray(rows), split_idx
        self.item_aug = item_aug
        self.weights = None  # [n] drawing weight of each item, or None: every item once an epoch
        if balance:
            y = labels[torch.as_tensor(self.rows, dtype=torch.long).to(labels.device)].cpu().numpy()  # [n]
            self.weights = (1.0 / np.bincount(y)[y]).tolist()  # each class drawn equally often

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = int(self.rows[i])
        if self.item_aug is None:
            return row
        return self.item_aug(self.images[row]), row  # uint8 [3, S, S], index


class CachedDL(TfmdDL):
    """fastai's TfmdDL whose batch is gathered from the cache with one index operation.

    Items are indices (or, with per-item augmentation, (image, index) pairs); `create_batch` turns a
    list of them into (TensorImage uint8 [B, 3, S, S], TensorCategory [B]) on the cache's device.
    fastai's loop then moves the batch to the DataLoader's device (nothing to do when the cache is
    there) and applies the batch transforms.
    """

    def before_iter(self) -> None:
        super().before_iter()
        if self.dataset.item_aug is not None:  # drawn from torch's seeded generator: a resumed run repeats it
            self.dataset.item_aug.epoch_seed = int(torch.randint(2**31 - 1, ()))

    def shuffle_fn(self, idxs: list) -> list:
        """An epoch's order: a permutation, or with class balancing as many draws, with replacement, by weight."""
        if self.dataset.weights is None:
            return super().shuffle_fn(idxs)
        return self.rng.choices(idxs, weights=[self.dataset.weights[i] for i in idxs], k=len(idxs))

    def create_batch(self, items: list) -> tuple[TensorImage, TensorCategory]:
        ds = self.dataset
        if ds.item_aug is not None:  # in a worker process: host tensors, fastai's loop moves them
            x = torch.stack([img for img, _ in items])  # [B, 3, S, S] uint8
            return TensorImage(x), TensorCategory(ds.labels[torch.as_tensor([i for _, i in items])])
        rows = torch.as_tensor(items, dtype=torch.long)  # [B]
        x = ds.images[to_device(rows, ds.images.device)]  # [B, 3, S, S] uint8
        return TensorImage(to_device(x, self.device)), TensorCategory(ds.labels[to_device(rows, ds.labels.device)])


def to_device(t: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    """`t` on `device`; from the host to a GPU through (cached) pinned memory, without making the host wait.

    A plain copy from pageable memory waits for every kernel queued before it: one wait per batch.
    """
    device = t.device if device is None else torch.device(device)
    if t.device == device or device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def cache_device(nbytes: int, device: str) -> str:
    """Where a cache of `nbytes` lives: on the training `device` if it is the CPU or fits the GPU, else the host."""
    if not device.startswith("cuda"):
        return "cpu"
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return device if nbytes <= DEVICE_SHARE * free else "cpu"


def stack_cache(items: pd.DataFrame, cache: dict[str, np.ndarray], task: Task,
                device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The items' cached images as one tensor and their labels, where the feed reads them.

    Returns:
        images uint8 [N, 3, S, S] and labels int64 [N] (class indices in the task's order), on
        `device` when they fit (`cache_device`), else in host memory.
    """
    index = {name: i for i, name in enumerate(task.classes)}
    labels = torch.tensor([index[c] for c in items["label"]], dtype=torch.long)  # [N]
    images = torch.from_numpy(np.stack([cache[p] for p in items["path"]]))  # [N, S, S, 3]
    images = images.permute(0, 3, 1, 2).contiguous()  # [N, 3, S, S]
    where = cache_device(images.numel(), device)
    return images.to(where), labels.to(where)


def _workers(workers: int | None, augment: str, device: str) -> int:
    if augment != "albumentations":
        return 0  # nothing per item to parallelise
    if workers is not None:
        return workers
    return 0 if device == "cpu" else min(8, os.cpu_count() or 1)


def build_dataloaders(items: pd.DataFrame, cache: dict[str, np.ndarray], task: Task, valid: np.ndarray,
                      bs: int, mean: tuple[float, ...], std: tuple[float, ...], device: str = "cpu",
                      workers: int | None = None, inference: bool = False, seed: int | None = None,
                      augment: str = "batch", held_out: np.ndarray | None = None,
                      policy: str = "poster", balance: bool = False) -> DataLoaders:
    """DataLoaders over `items` with `valid` (bool [N]) marking the validation rows.

    Batches are float [B, 3, S, S] on `device`, normalised with the model's `mean`/`std`; targets
    are class indices [B] in the task's severity order (never alphabetical). The training split is
    shuffled and augmented (`augment`: "batch" on the device, "albumentations" per item on the
    CPU, "none"); the validation split is neither.

    `inference`: ignore `valid` and put every row, in order, in the validation split (`dls.valid`).
    `held_out`: bool [N] rows for a third loader (`dls[2]`, in order, not augmented), neither trained on
    nor validated on: the held-out fold when the epoch is chosen on an inner split (`valid`).
    `seed`: seeds the albumentations policy (the batch policy draws from torch's seeded generator).
    `policy`: the random policy's name (`data.augment.POLICIES`), in either form.
    `balance`: draw the training batches with every class equally likely (with replacement; the
    epoch keeps its length), for data sets where some classes are rare.

    Raises:
        HerlevError: the training split is smaller than 2 images, or `augment` is unknown.
    """
    if augment not in AUGMENTS:
        raise HerlevError(f"unknown augmentation '{augment}': choose one of {', '.join(AUGMENTS)}")
    valid = np.ones(len(items), bool) if inference else np.asarray(valid, dtype=bool)
    held = np.zeros(len(items), bool) if held_out is None else np.asarray(held_out, dtype=bool)
    train_rows, valid_rows = np.flatnonzero(~valid & ~held), np.flatnonzero(valid)
    if len(train_rows) < 2 and not inference:
        raise HerlevError(f"only {len(train_rows)} training image(s) left after the split; add images or use fewer folds")
    # per-item augmentation runs in CPU worker processes: its cache stays on the host
    images, labels = stack_cache(items.reset_index(drop=True), cache, task,
                                 "cpu" if augment == "albumentations" else device)
    item_aug = ItemAugment(train_augment(seed, get_policy(policy))) if augment == "albumentations" else None
    n_workers = _workers(workers, augment, device)
    to_float, normalise = IntToFloatTensor(), Normalize.from_stats(list(mean), list(std), cuda=False)
    train_tfms = [to_float, *(batch_augment(get_policy(policy)) if augment == "batch" else []), normalise]

    def loader(rows, split_idx, tfms, **kwargs) -> CachedDL:
        ds = CachedImages(images, labels, rows, split_idx, item_aug if split_idx == 0 else None,
                          balance=balance and split_idx == 0)
        return CachedDL(ds, after_batch=tfms, **kwargs)

    train = loader(train_rows if len(train_rows) else valid_rows, 0, train_tfms,
                   bs=max(1, min(bs, len(train_rows))), shuffle=True, drop_last=True,
                   num_workers=n_workers if item_aug else 0, pin_memory=item_aug is not None and device != "cpu",
                   persistent_workers=False)
    # gathered from the in-memory cache by one index per batch: worker processes would only copy it through shared
    # memory (fastai's default starts one per CPU, for every validation pass), and fail where shared memory is limited
    valid_dl = loader(valid_rows, 1, [to_float, normalise], bs=bs, shuffle=False, drop_last=False, num_workers=0)
    extra = [] if held_out is None else [loader(np.flatnonzero(held), 1, [to_float, normalise], bs=bs, shuffle=False,
                                                drop_last=False, num_workers=0)]
    return DataLoaders(train, valid_dl, *extra, device=torch.device(device))  # moves the normalisation statistics too
