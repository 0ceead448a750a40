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

What does not live here: decoding and letterboxing (`data.images`), the policies (`data.augment`),
the albumentations policy per image on CPU workers (`data.datablock`: the fastai DataBlock, whose
batches are this feed's without augmentation).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from fastai.data.core import DataLoaders, TfmdDL
from fastai.data.transforms import IntToFloatTensor, Normalize
from fastai.torch_core import TensorCategory, TensorImage

from herlev_fa.data.augment import batch_augment, get_policy
from herlev_fa.errors import HerlevError
from herlev_fa.labels import Task

DEVICE_SHARE = 0.25  # the cache goes on a GPU when it takes at most this share of its free memory
FEED_AUGMENTS = ("batch", "none")  # config.AUGMENTS but "albumentations", which is the DataBlock's (`data.datablock`)


def balance_weights(y: np.ndarray) -> np.ndarray:
    """Drawing weight of each item, class indices `y` [n] -> [n], so that every class is drawn equally often."""
    return 1.0 / np.bincount(y)[y]


def require_training_rows(n: int) -> None:
    """Raises HerlevError when a split leaves fewer than 2 training images (a batch norm needs two)."""
    if n < 2:
        raise HerlevError(f"only {n} training image(s) left after the split; add images or use fewer folds")


class CachedImages:
    """A split of the data set: the cache's images and labels, seen by fastai as a dataset of indices.

    `images` uint8 [N, 3, S, S] and `labels` int64 [N] (shared by both splits); `rows` [n] are this
    split's indices into them; `split_idx` 0 (train) or 1 (valid) selects fastai's random transforms.
    """

    n_inp = 1  # one input (the image), one target: fastai need not run a batch to find out

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, rows: np.ndarray, split_idx: int,
                 balance: bool = False):
        self.images, self.labels, self.rows, self.split_idx = images, labels, np.asarray(rows), split_idx
        self.weights = None  # [n] drawing weight of each item, or None: every item once an epoch
        if balance:
            y = labels[torch.as_tensor(self.rows, dtype=torch.long).to(labels.device)].cpu().numpy()  # [n]
            self.weights = balance_weights(y).tolist()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> int:
        return int(self.rows[i])


class CachedDL(TfmdDL):
    """fastai's TfmdDL whose batch is gathered from the cache with one index operation.

    Items are indices; `create_batch` turns a list of them into (TensorImage uint8 [B, 3, S, S],
    TensorCategory [B]) on the cache's device.
    fastai's loop then moves the batch to the DataLoader's device (nothing to do when the cache is
    there) and applies the batch transforms.
    """

    def shuffle_fn(self, idxs: list) -> list:
        """An epoch's order: a permutation, or with class balancing as many draws, with replacement, by weight."""
        if self.dataset.weights is None:
            return super().shuffle_fn(idxs)
        return self.rng.choices(idxs, weights=[self.dataset.weights[i] for i in idxs], k=len(idxs))

    def create_batch(self, items: list) -> tuple[TensorImage, TensorCategory]:
        ds = self.dataset
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


def build_dataloaders(items: pd.DataFrame, cache: dict[str, np.ndarray], task: Task, valid: np.ndarray,
                      bs: int, mean: tuple[float, ...], std: tuple[float, ...], device: str = "cpu",
                      inference: bool = False, augment: str = "batch", held_out: np.ndarray | None = None,
                      policy: str = "poster", balance: bool = False) -> DataLoaders:
    """DataLoaders over `items` with `valid` (bool [N]) marking the validation rows.

    Batches are float [B, 3, S, S] on `device`, normalised with the model's `mean`/`std`; targets
    are class indices [B] in the task's severity order (never alphabetical). The training split is
    shuffled and augmented (`augment`: "batch" on the device, or "none"; albumentations per item on
    the CPU is the DataBlock's, `data.datablock`); the validation split is neither.

    `inference`: ignore `valid` and put every row, in order, in the validation split (`dls.valid`).
    `held_out`: bool [N] rows for a third loader (`dls[2]`, in order, not augmented), neither trained on
    nor validated on: the held-out fold when the epoch is chosen on an inner split (`valid`).
    `policy`: the random policy's name (`data.augment.POLICIES`); it draws from torch's seeded generator.
    `balance`: draw the training batches with every class equally likely (with replacement; the
    epoch keeps its length), for data sets where some classes are rare.

    Raises:
        HerlevError: the training split is smaller than 2 images, or `augment` is unknown.
    """
    if augment not in FEED_AUGMENTS:
        raise HerlevError(f"unknown augmentation '{augment}' for the device feed: choose one of "
                          f"{', '.join(FEED_AUGMENTS)} (albumentations: data.datablock)")
    valid = np.ones(len(items), bool) if inference else np.asarray(valid, dtype=bool)
    held = np.zeros(len(items), bool) if held_out is None else np.asarray(held_out, dtype=bool)
    train_rows, valid_rows = np.flatnonzero(~valid & ~held), np.flatnonzero(valid)
    if not inference:
        require_training_rows(len(train_rows))
    images, labels = stack_cache(items.reset_index(drop=True), cache, task, device)
    to_float, normalise = IntToFloatTensor(), Normalize.from_stats(list(mean), list(std), cuda=False)
    train_tfms = [to_float, *(batch_augment(get_policy(policy)) if augment == "batch" else []), normalise]

    def loader(rows, split_idx, tfms, **kwargs) -> CachedDL:
        ds = CachedImages(images, labels, rows, split_idx, balance=balance and split_idx == 0)
        return CachedDL(ds, after_batch=tfms, **kwargs)

    train = loader(train_rows if len(train_rows) else valid_rows, 0, train_tfms,
                   bs=max(1, min(bs, len(train_rows))), shuffle=True, drop_last=True, num_workers=0)
    # gathered from the in-memory cache by one index per batch: worker processes would only copy it through shared
    # memory (fastai's default starts one per CPU, for every validation pass), and fail where shared memory is limited
    valid_dl = loader(valid_rows, 1, [to_float, normalise], bs=bs, shuffle=False, drop_last=False, num_workers=0)
    extra = [] if held_out is None else [loader(np.flatnonzero(held), 1, [to_float, normalise], bs=bs, shuffle=False,
                                                drop_last=False, num_workers=0)]
    return DataLoaders(train, valid_dl, *extra, device=torch.device(device))  # moves the normalisation statistics too
