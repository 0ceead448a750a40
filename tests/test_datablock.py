"""The fastai DataBlock (`herlev_fa.data.datablock`): the device feed's batches without augmentation, seeded with it."""

import numpy as np
import pandas as pd
import pytest
import torch
from fastai.torch_core import set_seed

from herlev_fa.data.augment import POLICIES
from herlev_fa.data.datablock import FoldSplitter, datablock, training_dataloaders
from herlev_fa.data.feed import build_dataloaders
from herlev_fa.data.images import decode_all
from herlev_fa.data.items import assign_folds, inner_split, scan
from herlev_fa.errors import HerlevError
from herlev_fa.labels import get_task

TASK = get_task("severity")
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.1)
S = 16


def _batches(dl) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*list(dl))
    return torch.cat(xs).cpu(), torch.cat(ys).cpu()


@pytest.fixture(scope="module")
def real_cells(shared_herlev):
    """Three real cells of each of the seven Herlev folders (21), letterboxed to 40 px, in 3 folds."""
    items = scan(shared_herlev / "letterbox200", TASK)
    items = items.groupby("folder", sort=False).head(3).reset_index(drop=True)
    items["fold"] = assign_folds(items, 3, seed=0)
    return items


@pytest.mark.parametrize("val_split", [None, 0.3])
def test_unaugmented_batches_equal_the_device_feed_on_real_cells(real_cells, val_split, device):
    """Same images (the DataBlock decodes the files itself), labels in severity order, same order; with an inner
    split, the held-out fold is the third loader of both."""
    items, size, fold = real_cells, 40, 1
    cache, _ = decode_all(items["path"], size, progress=False)
    held = (items["fold"] == fold).to_numpy()
    inner = None if val_split is None else inner_split(items, fold, val_split, seed=3)
    feed = build_dataloaders(items, cache, TASK, valid=held if inner is None else inner, bs=4, mean=MEAN, std=STD,
                             device=device, augment="none", held_out=None if inner is None else held)
    block = datablock(TASK, size, MEAN, STD, fold=fold, val_split=val_split, seed=3)  # no cache: reads the files
    dls = training_dataloaders(block, items, bs=4, device=device)
    assert len(dls.loaders) == len(feed.loaders) == (2 if val_split is None else 3)
    assert list(dls.vocab) == list(TASK.classes)  # severity order, not alphabetical
    for i, rows in enumerate([held] if inner is None else [inner, held], start=1):
        x, y = _batches(dls[i])
        x_feed, y_feed = _batches(feed[i])
        assert x.shape == (int(rows.sum()), 3, size, size) and x.dtype == torch.float32
        assert y.tolist() == y_feed.tolist() == [TASK.classes.index(c) for c in items["label"][rows]]
        torch.testing.assert_close(x.as_subclass(torch.Tensor), x_feed.as_subclass(torch.Tensor), rtol=0, atol=1e-6)
    assert float(x.std()) > 0.3  # real cells, not blanks


def _textured(n: int = 24) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """n items, class i % 5, 2 folds; every image the same texture, so differences come from augmentation."""
    items = pd.DataFrame({"path": [f"cell{i}.bmp" for i in range(n)], "label": [TASK.classes[i % 5] for i in range(n)],
                          "fold": np.arange(n) % 2})
    texture = np.random.default_rng(0).integers(0, 256, (S, S, 3), dtype=np.uint8)
    return items, {p: texture for p in items["path"]}


@pytest.mark.parametrize("workers", [0, 2])
def test_training_batches_are_augmented_per_image_and_repeat_with_the_seed(workers):
    items, cache = _textured()

    def first_batch(seed, policy=POLICIES["cells"]):
        set_seed(seed)
        block = datablock(TASK, S, MEAN, STD, fold=0, policy=policy, cache=cache)
        return next(iter(training_dataloaders(block, items, bs=8, workers=workers).train))[0].cpu()

    a, b, c, plain = first_batch(0), first_batch(0), first_batch(1), first_batch(0, policy=None)
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    texture = (torch.from_numpy(cache["cell0.bmp"]).permute(2, 0, 1).float() / 255 - mean) / std  # [3, S, S] normalised
    assert all(torch.allclose(x, texture, atol=1e-6) for x in plain)  # policy None: the image itself
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # same seed, same batch (in worker processes too)
    assert not torch.equal(a, c)  # another seed, other draws
    distinct = {tuple(x.flatten()[::7].round(decimals=3).tolist()) for x in a}
    assert len(distinct) == 8  # each image drew its own transform
    assert all(not torch.allclose(x, texture, atol=1e-3) for x in a)  # `cells` rotates and zooms every image


def test_validation_split_is_never_augmented():
    items, cache = _textured()
    block = datablock(TASK, S, MEAN, STD, fold=0, policy=POLICIES["cells"], cache=cache)
    x, y = _batches(training_dataloaders(block, items, bs=8).valid)
    assert len(x) == 12 and y.tolist() == [i % 5 for i in range(0, 24, 2)]
    assert torch.equal(x[0], x[-1])  # every validation image is the (same) original


def test_balanced_training_draws_every_class_equally_often():
    # 60 items: class 0 holds 40, classes 1-4 five each; fold 1 (every tenth item) validates
    items = pd.DataFrame({"path": [f"c{i}.bmp" for i in range(60)],
                          "label": [TASK.classes[0]] * 40 + [TASK.classes[1 + i % 4] for i in range(20)],
                          "fold": (np.arange(60) % 10 == 0).astype(int)})
    cache = {p: np.full((S, S, 3), i, np.uint8) for i, p in enumerate(items["path"])}
    set_seed(0)
    dls = training_dataloaders(datablock(TASK, S, MEAN, STD, fold=1, cache=cache), items, bs=9, balance=True)
    counts = np.zeros(5)
    for _ in range(20):  # epochs of 54 draws
        for _, y in dls.train:
            counts += np.bincount(y.numpy(), minlength=5)
    assert counts.sum() == 20 * 54
    assert np.allclose(counts / counts.sum(), 0.2, atol=0.04)  # plain shuffling: class 0 would be 2/3
    assert _batches(dls.valid)[1].tolist() == [0] * 4 + [1 + i % 4 for i in range(0, 20, 10)]  # in order, untouched


def test_splitter_refuses_tables_it_cannot_split():
    items, _ = _textured(6)
    with pytest.raises(HerlevError, match="no 'fold' column"):
        FoldSplitter(0)(items.drop(columns="fold"))
    with pytest.raises(HerlevError, match="no item is in fold 4"):
        FoldSplitter(4)(items)
    with pytest.raises(HerlevError, match="only 1 training image"):
        FoldSplitter(0)(items.assign(fold=[0, 0, 0, 0, 0, 1]))
    assert FoldSplitter(1)(items) == [[0, 2, 4], [1, 3, 5]]
