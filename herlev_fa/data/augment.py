"""Augmentation policies: the random training policies (the deterministic letterbox: ``data.images``).

Two pieces:
- `batch_augment` (fastai batch transforms, the default): the random policy applied to whole
  batches on the training device, each image drawing its own parameters.
- `train_augment` + `AlbumentationsTransform` (albumentations, opt-in with `--augment albumentations`):
  the same policy per image on the CPU, as a fastai item transform of the DataBlock (`data.datablock`).

The policy is the same in both (the batch one has no hue shift): a cell has no up or left, so
every element of the dihedral group is as likely as the original; a small rotation and zoom
jitter orientation, size and position; mild brightness, contrast, saturation (and hue) changes
mimic stain and scanner variation without changing what a nucleus looks like.
"""

from __future__ import annotations

from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np
import torch
from fastai.vision.augment import (Brightness, Contrast, Dihedral, RandTransform, Rotate, Saturation, Zoom,
                                   setup_aug_tfms)
from fastai.vision.core import PILImage

from herlev_fa.errors import HerlevError


@dataclass(frozen=True)
class Policy:
    """The random training policy's strengths, shared by the batch and the albumentations forms.

    Every element of the dihedral group is always drawn (a cell has no up or left).
    """

    name: str
    summary: str  # one line for help texts and tables
    max_deg: float  # rotation drawn uniformly in ±max_deg
    zoom: tuple[float, float]  # scale range; the zoom centre is drawn too, so the cell moves in the frame
    shift: float  # albumentations: translation as a fraction of the side (the batch form moves by zooming)
    p_affine: float  # probability of the rotation and of the zoom, each
    lighting: float  # brightness, contrast and saturation change (fastai's max_lighting)
    p_lighting: float  # probability of each lighting change


POLICIES: dict[str, Policy] = {p.name: p for p in (
    Policy("poster", "the poster's: dihedral, rotation ±15°, zoom 0.9-1.1, lighting ±10%",
           max_deg=15, zoom=(0.9, 1.1), shift=0.05, p_affine=0.75, lighting=0.1, p_lighting=0.5),
    Policy("cells", "dihedral, any rotation, zoom 0.8-1.25 with the cell moved in the frame, lighting ±20%",
           max_deg=180, zoom=(0.8, 1.25), shift=0.1, p_affine=1.0, lighting=0.2, p_lighting=0.75),
)}


def get_policy(name: str) -> Policy:
    """The policy of a name (`POLICIES`); HerlevError naming the choices for an unknown one."""
    if name not in POLICIES:
        raise HerlevError(f"unknown augmentation policy '{name}': choose one of {', '.join(POLICIES)}")
    return POLICIES[name]


def batch_augment(policy: Policy = POLICIES["poster"]) -> list:
    """The random training policy as fastai batch transforms (on the batch's device, per image).

    Draws come from torch's generator, which the run's seed sets; fastai merges the geometric
    transforms into one affine resampling and the colour ones into one lighting step. No hue
    rotation: through HSV it costs five times the rest of the policy on a CPU, and the
    albumentations policy's shift (5 of 180) is within what brightness, contrast and saturation
    already vary.
    """
    return setup_aug_tfms([
        Dihedral(p=1.0, pad_mode="border"),
        Rotate(max_deg=policy.max_deg, p=policy.p_affine, pad_mode="border"),
        Zoom(min_zoom=policy.zoom[0], max_zoom=policy.zoom[1], p=policy.p_affine, pad_mode="border"),
        Brightness(max_lighting=policy.lighting, p=policy.p_lighting),
        Contrast(max_lighting=policy.lighting, p=policy.p_lighting),
        Saturation(max_lighting=policy.lighting, p=policy.p_lighting),
    ])


def train_augment(seed: int | None = None, policy: Policy = POLICIES["poster"]) -> A.Compose:
    """The random training policy as an albumentations pipeline, for one uint8 [H, W, 3] image."""
    return A.Compose([
        A.D4(p=1.0),
        A.Affine(scale=policy.zoom, translate_percent=(-policy.shift, policy.shift),
                 rotate=(-policy.max_deg, policy.max_deg), border_mode=cv2.BORDER_REPLICATE, p=policy.p_affine),
        A.RandomBrightnessContrast(brightness_limit=policy.lighting, contrast_limit=policy.lighting,
                                   p=policy.p_lighting),
        A.HueSaturationValue(hue_shift_limit=5, sat_shift_limit=round(100 * policy.lighting), val_shift_limit=0,
                             p=policy.p_lighting),
    ], seed=seed)


class AlbumentationsTransform(RandTransform):
    """An albumentations pipeline as a fastai item transform, on the training split only: PILImage -> PILImage.

    fastai's pattern for albumentations (its "Custom transforms" tutorial): `split_idx = 0` runs it on
    training items only, `order = 2` before `ToTensor`. Albumentations draws from its own generator,
    which global seeds do not reach, so it is reseeded from torch's generator for every image. torch's
    generator is the run's (seeded, and saved in checkpoints) in the main process, and fastai seeds it
    in each DataLoader worker from the main one: a seeded or resumed run repeats every draw, with any
    number of workers.
    """

    split_idx, order = 0, 2

    def __init__(self, aug: A.Compose):
        super().__init__(p=1.0)
        self.aug = aug

    def encodes(self, img: PILImage) -> PILImage:
        self.aug.set_random_seed(int(torch.randint(2**31 - 1, ())))
        return PILImage.create(self.aug(image=np.asarray(img))["image"])  # [S, S, 3] uint8
