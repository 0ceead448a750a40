"""Augmentation policies: the letterbox (once, at decode time) and the random training policies.

Three pieces:
- `letterbox` (albumentations): deterministic, keeps the aspect ratio and pads to a square; runs
  once per image when the cache is filled, with the mask carried through the same geometry for
  the explanation check.
- `batch_augment` (fastai batch transforms, the default): the random policy applied to whole
  batches on the training device, each image drawing its own parameters.
- `train_augment` + `ItemAugment` (albumentations, opt-in with `--augment albumentations`): the
  same policy per image on the CPU, for users who need albumentations' transforms.

The policy is the same in both (the batch one has no hue shift): a cell has no up or left, so
every element of the dihedral group is as likely as the original; a small rotation and zoom
jitter orientation, size and position; mild brightness, contrast, saturation (and hue) changes
mimic stain and scanner variation without changing what a nucleus looks like.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch
from fastai.vision.augment import Brightness, Contrast, Dihedral, Rotate, Saturation, Zoom, setup_aug_tfms


def letterbox(size: int) -> A.Compose:
    """Scale the longer side to `size` and pad to size x size by repeating the edge pixels.

    Edge repeat rather than a constant keeps the padding the colour of the slide background.
    Masks passed along get nearest-neighbour resizing and the same padding.
    """
    return A.Compose([
        A.LongestMaxSize(max_size=size, interpolation=cv2.INTER_AREA),
        A.PadIfNeeded(min_height=size, min_width=size, border_mode=cv2.BORDER_REPLICATE),
    ])


def batch_augment() -> list:
    """The random training policy as fastai batch transforms (on the batch's device, per image).

    Draws come from torch's generator, which the run's seed sets; fastai merges the geometric
    transforms into one affine resampling and the colour ones into one lighting step. No hue
    rotation: through HSV it costs five times the rest of the policy on a CPU, and the
    albumentations policy's shift (5 of 180) is within what brightness, contrast and saturation
    already vary.
    """
    return setup_aug_tfms([
        Dihedral(p=1.0, pad_mode="border"),
        Rotate(max_deg=15, p=0.75, pad_mode="border"),
        Zoom(min_zoom=0.9, max_zoom=1.1, p=0.75, pad_mode="border"),
        Brightness(max_lighting=0.1, p=0.5),
        Contrast(max_lighting=0.1, p=0.5),
        Saturation(max_lighting=0.1, p=0.5),
    ])


def train_augment(seed: int | None = None) -> A.Compose:
    """The random training policy as an albumentations pipeline, for one uint8 [H, W, 3] image."""
    return A.Compose([
        A.D4(p=1.0),
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-15, 15),
                 border_mode=cv2.BORDER_REPLICATE, p=0.75),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        A.HueSaturationValue(hue_shift_limit=5, sat_shift_limit=10, val_shift_limit=0, p=0.5),
    ], seed=seed)


class ItemAugment:
    """An albumentations pipeline on one cached image: uint8 [3, S, S] tensor -> uint8 [3, S, S].

    Albumentations draws from its own generator, which global seeds do not reach. It is reseeded
    from `epoch_seed` (drawn from torch's generator by the DataLoader at the start of each epoch,
    so a seeded or resumed run repeats it) and the worker's id, so that workers do not repeat each
    other's draws.
    """

    def __init__(self, aug: A.Compose):
        self.aug, self.epoch_seed, self._seeded = aug, 0, None

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        info = torch.utils.data.get_worker_info()
        key = (self.epoch_seed, info.id if info is not None else -1)
        if key != self._seeded:
            self.aug.set_random_seed((self.epoch_seed * 1009 + key[1] + 1) % 2**32)
            self._seeded = key
        out = self.aug(image=np.ascontiguousarray(image.permute(1, 2, 0).numpy()))["image"]  # [S, S, 3]
        return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)  # [3, S, S]
