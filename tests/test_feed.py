"""The training feed (`herlev_fa.data.feed`): batches from the cache, augmented per image on the device."""

import numpy as np
import pandas as pd
import pytest
import torch
from fastai.torch_core import set_seed

from herlev_fa.data.feed import build_dataloaders, cache_device, stack_cache
from herlev_fa.errors import HerlevError
from herlev_fa.labels import get_task

TASK = get_task("severity")
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.1)
S = 16


def _data(n: int = 40, seed: int = 0):
    """n items whose image i is filled with value i (so a batch tells which items it holds) and class i % 5."""
    items = pd.DataFrame({"path": [f"cell{i}.bmp" for i in range(n)], "label": [TASK.classes[i % 5] for i in range(n)]})
    rng = np.random.default_rng(seed)
    cache = {p: np.full((S, S, 3), i, np.uint8) for i, p in enumerate(items["path"])}
    cache["cell0.bmp"] = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)  # one textured image
    valid = np.arange(n) % 4 == 0
    return items, cache, valid


def _dls(device, augment="batch", **kwargs):
    items, cache, valid = _data()
    return build_dataloaders(items, cache, TASK, valid, bs=8, mean=MEAN, std=STD, device=device, augment=augment,
                             **kwargs)


def _denormalise(x: torch.Tensor) -> torch.Tensor:
    """Normalised float [B, 3, S, S] back to 0..255."""
    mean, std = torch.tensor(MEAN, device=x.device)[:, None, None], torch.tensor(STD, device=x.device)[:, None, None]
    return (x * std + mean) * 255


def test_stack_cache_keeps_order_labels_and_layout():
    items, cache, _ = _data(10)
    images, labels = stack_cache(items, cache, TASK)
    assert images.shape == (10, 3, S, S) and images.dtype == torch.uint8
    assert labels.tolist() == [i % 5 for i in range(10)]  # class index in the task's severity order
    assert torch.equal(images[3], torch.full((3, S, S), 3, dtype=torch.uint8))
    assert torch.equal(images[0].permute(1, 2, 0), torch.from_numpy(cache["cell0.bmp"]))  # HWC -> CHW


def test_cache_goes_to_the_cpu_without_a_gpu():
    assert cache_device(10**6, "cpu") == "cpu"


def test_validation_batches_are_the_items_in_order_normalised(device):
    dls = _dls(device)
    xs, ys = zip(*list(dls.valid))
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.shape == (10, 3, S, S) and x.dtype == torch.float32 and x.device.type == torch.device(device).type
    expected = [i for i in range(40) if i % 4 == 0]
    assert y.tolist() == [i % 5 for i in expected]
    values = _denormalise(x)[1:].mean(dim=(1, 2, 3))  # flat images: their value, unaugmented
    torch.testing.assert_close(values.cpu(), torch.tensor(expected[1:], dtype=torch.float32), atol=1e-3, rtol=0)


def test_training_batches_shuffle_every_item_once_and_match_labels(device):
    dls = _dls(device, augment="none")
    seen, labels = [], []
    for x, y in dls.train:
        assert x.shape == (8, 3, S, S) and y.shape == (8,) and y.dtype == torch.long
        ids = _denormalise(x)[:, 0, S // 2, S // 2].round().long()
        seen += ids.tolist()
        labels += y.tolist()
    assert len(seen) == 24 and len(set(seen)) == 24  # 30 training items, drop_last: 3 batches of 8, no repeats
    assert seen != sorted(seen)  # shuffled
    flat = [(s, lab) for s, lab in zip(seen, labels) if s != 0]
    assert all(lab == s % 5 for s, lab in flat)  # each image travels with its own label
    assert set(seen) <= {i for i in range(40) if i % 4}  # no validation item in training


def test_batch_augmentation_is_per_image_and_seeded(device):
    items, _, valid = _data()
    texture = np.random.default_rng(0).integers(0, 256, (S, S, 3), dtype=np.uint8)
    same = {p: texture for p in items["path"]}  # every item the same picture: differences come from augmentation

    def first_batch(seed):
        set_seed(seed)
        dls = build_dataloaders(items, same, TASK, valid, bs=8, mean=MEAN, std=STD, device=device)
        return next(iter(dls.train))[0].cpu()

    a, b, c = first_batch(0), first_batch(0), first_batch(1)
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # same seed, same batch
    assert not torch.equal(a, c)  # another seed, another batch
    distinct = {tuple(x.flatten()[::7].round(decimals=3).tolist()) for x in a}
    assert len(distinct) >= 6  # each image drew its own transform (identical draws are rare)
    x = _denormalise(a)
    assert float(x.min()) > -1 and float(x.max()) < 256  # still an image in 0..255
    original = torch.from_numpy(texture).permute(2, 0, 1).float()
    assert abs(float(x.mean()) - float(original.mean())) < 25  # mild colour changes, no new content


def test_inference_puts_every_item_in_validation_in_order(device):
    items, cache, _ = _data(12)
    dls = build_dataloaders(items, cache, TASK, np.zeros(12, bool), bs=5, mean=MEAN, std=STD, device=device,
                            inference=True)
    y = torch.cat([yb for _, yb in dls.valid])
    assert y.tolist() == [i % 5 for i in range(12)]


def test_too_few_training_images_and_unknown_policy_are_refused():
    items, cache, _ = _data(5)
    with pytest.raises(HerlevError, match="only 1 training image"):
        build_dataloaders(items, cache, TASK, np.arange(5) > 0, bs=4, mean=MEAN, std=STD)
    with pytest.raises(HerlevError, match="unknown augmentation 'mixup'"):
        build_dataloaders(items, cache, TASK, np.arange(5) < 2, bs=4, mean=MEAN, std=STD, augment="mixup")
    with pytest.raises(HerlevError, match="albumentations: data.datablock"):  # the DataBlock's, not the feed's
        build_dataloaders(items, cache, TASK, np.arange(5) < 2, bs=4, mean=MEAN, std=STD, augment="albumentations")


def test_balanced_training_batches_draw_every_class_equally_often(device):
    # 60 items: class 0 holds 40 of them, classes 1-4 five each; the validation rows are left alone
    items = pd.DataFrame({"path": [f"c{i}.bmp" for i in range(60)],
                          "label": [TASK.classes[0]] * 40 + [TASK.classes[1 + i % 4] for i in range(20)]})
    cache = {p: np.full((S, S, 3), i, np.uint8) for i, p in enumerate(items["path"])}
    valid = np.zeros(60, bool)
    valid[::10] = True
    set_seed(0)
    kwargs = dict(bs=8, mean=MEAN, std=STD, device=device, augment="none")
    plain = build_dataloaders(items, cache, TASK, valid, **kwargs)
    balanced = build_dataloaders(items, cache, TASK, valid, balance=True, **kwargs)
    counts = {name: np.zeros(5) for name in ("plain", "balanced")}
    for _ in range(30):  # epochs
        for name, dls in (("plain", plain), ("balanced", balanced)):
            for _, y in dls.train:
                counts[name] += np.bincount(y.cpu().numpy(), minlength=5)
    share = {k: v / v.sum() for k, v in counts.items()}
    assert share["plain"][0] == pytest.approx(36 / 54, abs=0.02)  # a permutation: every item once an epoch
    assert np.allclose(share["balanced"], 0.2, atol=0.03)  # each class a fifth of the draws
    assert len(balanced.train) == len(plain.train)  # the epoch keeps its length
    _, ys = zip(*list(balanced.valid))  # the validation rows, each once and in order: never reweighted
    assert torch.cat(ys).tolist() == items["label"][valid].map(TASK.classes.index).tolist()
