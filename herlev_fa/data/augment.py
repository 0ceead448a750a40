"""Albumentations pipelines and their fastai wrapper.

Two stages: `letterbox` is deterministic (keep aspect, pad to a square of `size`) and runs once
per image when the cache is filled, with the mask carried through the same geometry for the
explanation check; `train_augment` is random and runs on the cached squares every epoch.
The wrapper follows fastai's "Custom transforms" tutorial: a `RandTransform` that applies the
train pipeline on the training split and the (identity) valid pipeline on validation.
"""

import albumentations as A
import cv2
import numpy as np
import torch
from fastai.vision.core import PILImage

from fastai.vision.augment import RandTransform

def letterbox(size: int) -> A.Compose:
    """Scale the longer side to `size` and pad to size x size by repeating the edge pixels.

    Edge repeat rather than a constant keeps the padding the colour of the slide background.
    Masks passed along get nearest-neighbour resizing and the same padding.
    """
    return A.Compose([
        A.LongestMaxSize(max_size=size, interpolation=cv2.INTER_AREA),
        A.PadIfNeeded(min_height=size, min_width=size, border_mode=cv2.BORDER_REPLICATE),
    ])

def train_augment(seed: int | None = None) -> A.Compose:
    """Random augmentation for cytology, applied to letterboxed images.

    Albumentations draws from its own generator, which global seeds do not reach: `seed` makes
    the stream reproducible.

    A cell has no up or left, so every element of the dihedral group is as likely as the
    original; a small affine jitters size and position; mild brightness/contrast/hue changes
    mimic stain and scanner variation without changing what a nucleus looks like.
    """
    return A.Compose([
        A.D4(p=1.0),
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-15, 15),
                 border_mode=cv2.BORDER_REPLICATE, p=0.75),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        A.HueSaturationValue(hue_shift_limit=5, sat_shift_limit=10, val_shift_limit=0, p=0.5),
    ], seed=seed)

class AlbumentationsTransform(RandTransform):
    """Apply `train_aug` on the training split and `valid_aug` (default: none) on validation.

    In DataLoader worker processes the pipelines are reseeded from the worker's torch seed, so
    workers do not repeat each other's augmentations and a seeded run stays reproducible.
    """

    split_idx, order = None, 2

    def __init__(self, train_aug: A.Compose, valid_aug: A.Compose | None = None):
        super().__init__()
        self.train_aug, self.valid_aug = train_aug, valid_aug
        self._worker_seed: int | None = None

    def before_call(self, b, split_idx: int) -> None:
        self.idx = split_idx
        info = torch.utils.data.get_worker_info()
        if info is not None and info.seed != self._worker_seed:
            self._worker_seed = info.seed  # differs per worker and per epoch, derived from torch's seed
            for aug in (self.train_aug, self.valid_aug):
                if aug is not None:
                    aug.set_random_seed(info.seed % 2**32)

    def encodes(self, img: PILImage) -> PILImage:
        aug = self.train_aug if self.idx == 0 else self.valid_aug
        if aug is None:
            return img
        return PILImage.create(aug(image=np.asarray(img))["image"])
