"""Attribution methods beside IG, localisation metrics against Quantus, the randomisation test and faithfulness.

Exact values on toy models (a linear model's saliency, GradientShap and occlusion are known in
closed form; Grad-CAM by hand from hooks), the pure functions of ``explanation.sanity`` and
``explanation.faithfulness`` by hand, and every method through the commands on real cells
(``../shared``) with the tiny synthetic run of `conftest.trained_run`.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from herlev_cli.main import app
from herlev_fa.config import ATTRIBUTION_METHODS, IGSettings
from herlev_fa.data.images import normalise
from herlev_fa.explanation.attribution import Explainer, make_baseline
from herlev_fa.explanation.faithfulness import area, impute, orders, removal_masks
from herlev_fa.explanation.methods import last_conv_stage
from herlev_fa.explanation.overlap import localisation_batch
from herlev_fa.explanation.sanity import cascade, randomised, scaled_abs, spearman, ssim_batch
from herlev_fa.labels import get_task
from herlev_fa.model.heads import SeverityModel, get_head

TASK = get_task("severity")
S = 12
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _linear(seed: int = 0) -> SeverityModel:
    torch.manual_seed(seed)
    return SeverityModel(nn.Sequential(nn.Flatten(), nn.Linear(3 * S * S, TASK.n_classes)), get_head("cls"),
                         TASK.severities).eval()


def _images(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, S, S, 3), dtype=np.uint8)


def _explainer(model: nn.Module, method: str, size: int = S, **kw) -> Explainer:
    return Explainer(model, get_head("cls"), TASK.classes, TASK.severities, MEAN, STD, size, device="cpu",
                     precision="fp32", method=method, **kw)


# ---------------------------------------------------------------------------------------------
# Methods on toy models: known values


def test_linear_model_saliency_gradientshap_and_occlusion_are_exact():
    model = _linear()
    images = _images()
    x = normalise(images, MEAN, STD)  # [B, 3, S, S]
    w = model.net[1].weight.detach().view(TASK.n_classes, 3, S, S)  # [K, 3, S, S]
    t = 2
    saliency = _explainer(model, "saliency")(images, t)
    np.testing.assert_allclose(saliency.attribution, w[t].abs().sum(0).expand(3, S, S).numpy(), rtol=1e-5)
    assert np.isnan(saliency.delta).all()  # only IG has a completeness delta
    for baseline in ("mean", "black"):
        base = make_baseline(x, baseline, MEAN, STD)
        exact = ((x - base) * w[t]).sum(1).numpy()  # [B, S, S]: IG of a linear model
        shap = _explainer(model, "gradientshap", baseline=baseline, noise=0.0, samples=3)(images, t)
        np.testing.assert_allclose(shap.attribution, exact, rtol=1e-4, atol=1e-5)  # expected gradients: W
        occlusion = _explainer(model, "occlusion", baseline=baseline, window=1)(images, t)
        np.testing.assert_allclose(occlusion.attribution, exact, rtol=1e-4, atol=1e-5)  # each pixel's own drop


def test_occlusion_window_averages_the_drops_of_the_squares_over_a_pixel():
    model = _linear(1)
    images = _images(1)
    x = normalise(images, MEAN, STD)
    drop = (x * model.net[1].weight.detach().view(TASK.n_classes, 3, S, S)[0]).sum(1)[0]  # [S, S], mean baseline
    got = _explainer(model, "occlusion", window=4)(images, 0).attribution[0]
    want, count = torch.zeros(S, S, dtype=torch.float64), torch.zeros(S, S, dtype=torch.float64)
    for r in range(0, S - 4 + 1, 2):  # stride = window / 2
        for c in range(0, S - 4 + 1, 2):
            want[r:r + 4, c:c + 4] += float(drop[r:r + 4, c:c + 4].sum())
            count[r:r + 4, c:c + 4] += 1
    np.testing.assert_allclose(got, (want / count).numpy(), rtol=1e-4, atol=1e-5)


def test_smoothgrad_of_a_linear_model_is_ig_of_the_mean_noisy_input_and_reproducible():
    model = _linear(2)
    images = _images(2)
    clean = _explainer(model, "smoothgrad", noise=0.0, samples=3, steps=4)(images, 1).attribution
    ig = _explainer(model, "ig", steps=4)(images, 1).attribution
    np.testing.assert_allclose(clean, ig, rtol=1e-4, atol=1e-6)  # no noise: the mean of identical IG maps
    noisy = [_explainer(model, "smoothgrad", noise=0.2, samples=3, steps=4)(images, 1).attribution for _ in range(2)]
    np.testing.assert_array_equal(noisy[0], noisy[1])  # seeded noise
    assert np.abs(noisy[0] - ig).max() > 1e-3


def test_gradientshap_is_reproducible_whatever_the_global_random_state():
    """captum draws GradientShap's path points from NumPy's global generator: seeded per call, then restored."""
    model, images = _linear(2), _images(2)
    maps = []
    for seed in (1, 2):
        np.random.seed(seed)
        torch.manual_seed(seed)
        maps.append(_explainer(model, "gradientshap", samples=3)(images, 1).attribution)
    np.testing.assert_array_equal(maps[0], maps[1])
    np.random.seed(5)
    expected = np.random.random(2)
    np.random.seed(5)
    first = np.random.random()
    _explainer(model, "gradientshap", samples=3)(images, 1)
    assert [first, np.random.random()] == list(expected)  # the caller's NumPy state is left as it was


def test_gradcam_is_the_relu_of_the_gradient_weighted_last_stage_upsampled():
    import timm

    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=TASK.n_classes)
    model = SeverityModel(net, get_head("cls"), TASK.severities).eval()
    name, layer = last_conv_stage(net)
    assert name == "layer4"
    size = 64
    images = np.random.default_rng(1).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    got = _explainer(model, "gradcam", size=size)(images, 3).attribution  # [B, S, S]
    x = normalise(images, MEAN, STD)
    saved = {}
    hook = layer.register_forward_hook(lambda m, i, o: saved.update(a=o))
    out = model(x)[:, 3].sum()
    hook.remove()
    grads = torch.autograd.grad(out, saved["a"])[0]  # [B, C, h, w]
    cam = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * saved["a"]).sum(1, keepdim=True))  # [B, 1, h, w]
    want = nn.functional.interpolate(cam, size=(size, size), mode="bilinear")[:, 0].detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert (got >= 0).all() and got.max() > 0


# ---------------------------------------------------------------------------------------------
# Sanity: the pure parts


def test_ssim_equals_scikit_image():
    structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity
    rng = np.random.default_rng(0)
    a = rng.random((3, 20, 17))
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    b[2] = 0.5  # a constant map
    got = ssim_batch(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    want = [structural_similarity(a[i], b[i], data_range=1.0) for i in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_ssim_and_spearman_by_hand():
    rng = np.random.default_rng(1)
    a = torch.from_numpy(rng.random((2, 9, 9)))
    np.testing.assert_allclose(ssim_batch(a, a).numpy(), 1.0)
    assert float(ssim_batch(a[:1], 1 - a[:1])) < 0  # inverted structure
    with pytest.raises(ValueError, match="at least 7"):
        ssim_batch(torch.zeros(1, 5, 9), torch.zeros(1, 5, 9))
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([10.0, 20, 30, 40])) == pytest.approx(1.0)
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([4.0, 3, 2, 1])) == pytest.approx(-1.0)
    assert spearman(np.array([1.0, 2, 2, 3]), np.array([1.0, 2, 3, 4])) == pytest.approx(0.9486832980505138)  # ties
    assert math.isnan(spearman(np.ones(4), np.arange(4.0)))
    scaled = scaled_abs(torch.tensor([[[-2.0, 1.0]], [[0.0, 0.0]]]))
    np.testing.assert_allclose(scaled.numpy(), [[[1.0, 0.5]], [[0.0, 0.0]]])


def test_cascade_randomises_from_the_top_and_leaves_the_rest_and_the_original_alone():
    import timm

    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=TASK.n_classes)
    model = SeverityModel(net, get_head("cls"), TASK.severities).eval()
    names = cascade(net)
    assert names[:3] == ["fc", "layer4", "layer3"] and names[-1] == "conv1"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    top = randomised(model, names[:2])
    for key, value in top.state_dict().items():
        changed = not torch.equal(value, before[key])
        if key.startswith(("net.fc.weight", "net.layer4.0.conv1.weight")):
            assert changed, key
        if key.startswith(("net.layer3.", "net.conv1.", "net.layer1.")):
            assert not changed, key
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the trained model is untouched
    again = randomised(model, names[:2])
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in top.state_dict().items())  # seeded


# ---------------------------------------------------------------------------------------------
# Faithfulness: the pure parts


def test_impute_keeps_known_pixels_and_fills_holes_from_neighbours():
    ramp = torch.arange(10.0)[None, None, None, :].expand(1, 2, 10, 10).clone()  # [1, 2, 10, 10], linear in x
    removed = torch.zeros(1, 10, 10, dtype=torch.bool)
    removed[0, 4, 5] = True
    out = impute(ramp, removed)
    torch.testing.assert_close(out, ramp)  # a linear image is its own neighbour mean: the hole is filled exactly
    removed[0, 2:8, 2:8] = True  # a big hole: known pixels unchanged, the hole between its borders' values
    out = impute(ramp + 5 * (torch.rand(1, 2, 10, 10) > 2), removed)
    assert torch.equal(out[:, :, ~removed[0]], ramp[:, :, ~removed[0]])
    hole = out[0, 0][removed[0]]
    assert float(hole.min()) >= 1.0 and float(hole.max()) <= 8.0
    constant = torch.full((2, 3, 6, 6), 0.7)
    gone = torch.rand(2, 6, 6, generator=torch.Generator().manual_seed(0)) < 0.6
    torch.testing.assert_close(impute(constant, gone), constant)
    everything = torch.ones(1, 6, 6, dtype=torch.bool)
    assert torch.equal(impute(constant[:1], everything), torch.zeros(1, 3, 6, 6))  # nothing to impute from: the mean


def test_orders_and_removal_masks_by_hand():
    attr = np.array([[0.5, -1.0], [2.0, 0.0]])
    nucleus = np.array([[False, True], [False, True]])
    keep = np.ones((2, 2), bool)
    got = orders(attr, nucleus, keep, seed=0)
    assert list(got["most relevant first"]) == [2, 0, 3, 1] and list(got["least relevant first"]) == [1, 3, 0, 2]
    assert sorted(got["random"]) == [0, 1, 2, 3] and set(got["nucleus first"][:2]) == {1, 3}
    deletion = removal_masks(got["most relevant first"], (2, 2), (0.0, 0.5, 1.0), "deletion")
    np.testing.assert_array_equal(deletion[1].ravel(), [True, False, True, False])
    insertion = removal_masks(got["most relevant first"], (2, 2), (0.0, 0.5, 1.0), "insertion")
    np.testing.assert_array_equal(insertion[1], ~deletion[1])
    assert deletion[0].sum() == 0 and deletion[2].all() and insertion[0].all() and insertion[2].sum() == 0
    partial = orders(attr, nucleus, np.array([[True, True], [False, True]]), seed=0)  # pixel 2 is padding
    assert list(partial["most relevant first"]) == [0, 3, 1]
    assert area([0, 0.5, 1], np.array([[1.0, 0.5, 0.0], [1.0, 1.0, 1.0]])).tolist() == [0.5, 1.0]


# ---------------------------------------------------------------------------------------------
# On real cells (../shared): the commands, every method, and Quantus' localisation metrics


@pytest.fixture(scope="module")
def real_cells(shared_herlev, tmp_path_factory) -> Path:
    """Two real cells (image and mask) per Herlev folder, linked into a small data root."""
    root = tmp_path_factory.mktemp("real") / "data"
    for folder in sorted(p for p in (shared_herlev / "letterbox200").iterdir() if p.is_dir()):
        (root / folder.name).mkdir(parents=True)
        for image in sorted(folder.glob("*.jpg"))[:2]:
            for f in (image, image.with_name(f"{image.stem}-d.png")):
                (root / folder.name / f.name).symlink_to(f)
    return root


def test_every_method_through_explain_and_quantify_on_real_cells(trained_run, real_cells, tmp_path):
    runner = CliRunner()
    images = sorted(real_cells.glob("carcinoma_in_situ/*.jpg"))[:1]
    tables = {}
    for method in ATTRIBUTION_METHODS:
        fast = ["--steps", "8", "--samples", "2"]
        result = runner.invoke(app, ["explain", *map(str, images), "--run", str(trained_run), "--method", method,
                                     "--out", str(tmp_path / method), "--device", "cpu", *fast])
        assert result.exit_code == 0, result.output
        assert (tmp_path / method / f"{images[0].stem}_{method}.npy").is_file()
        assert pd.read_csv(tmp_path / method / "explanations.csv")["method"].tolist() == [method]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            result = runner.invoke(app, ["quantify", "--run", str(trained_run), "--data", str(real_cells), "--split",
                                         "all", "--method", method, "--out", str(tmp_path / f"q_{method}"),
                                         "--device", "cpu", "--quiet", *fast])
        assert result.exit_code == 0, result.output
        tables[method] = table = pd.read_csv(tmp_path / f"q_{method}" / "quantify.csv")
        assert len(table) == 14 and (table["method"] == method).all()
        assert table["delta"].notna().all() == (method == "ig")
        np.testing.assert_allclose(table["relevance_mass_accuracy"], table["nucleus_pos_share"], equal_nan=True)
        assert table["pointing_game"].isin([0.0, 1.0]).all()
        assert table[["energy_pointing_game", "relevance_rank_accuracy"]].apply(lambda c: c.between(0, 1)).all().all()
        assert table["nucleus_enrichment_other"].notna().sum() >= 12  # a partner for every cell with one of its size
        assert (table["other_cell"].fillna("") != table["name"]).all()
    assert tables["gradcam"]["nucleus_pos_share"].ne(tables["ig"]["nucleus_pos_share"]).any()


def test_localisation_agrees_with_quantus_on_real_cells(trained_run, real_cells):
    quantus = pytest.importorskip("quantus")
    from herlev_fa.explanation.masks import NUCLEUS
    from herlev_fa.explanation.report import masked_batch, quantify_items
    from herlev_fa.runs import load_run

    run = load_run(trained_run)
    items, _ = quantify_items(run, real_cells, "all")
    images, regions, keep = masked_batch(items, run.size)
    assert keep.all()  # square cells: no padding, quantus sees the same pixels
    maps = np.array(_explainer_for_run(run, "ig")(images).attribution)  # [N, S, S]
    nucleus = regions == NUCLEUS
    # every other map gets a peak on its nucleus, so that the pointing game has hits and misses whatever the model
    rng = np.random.default_rng(0)
    peak = np.abs(maps).max() * (1 + rng.random(nucleus.shape)) * nucleus  # [N, S, S], no tied maxima
    maps[::2] += peak[::2]
    ours = {k: v.numpy() for k, v in localisation_batch(torch.from_numpy(maps), torch.from_numpy(nucleus),
                                                        torch.from_numpy(keep)).items()}
    a, s = maps[:, None], nucleus[:, None].astype(float)  # quantus' layout [N, 1, H, W]
    pointing = quantus.PointingGame(abs=False, normalise=False, disable_warnings=True).evaluate_batch(a_batch=a,
                                                                                                     s_batch=s)
    rank = quantus.RelevanceRankAccuracy(abs=False, normalise=False, disable_warnings=True).evaluate_batch(
        a_batch=a, s_batch=s)
    mass = quantus.RelevanceMassAccuracy(abs=False, normalise=False, disable_warnings=True).evaluate_batch(
        a_batch=np.clip(a, 0, None), s_batch=s)
    low, high = a.min(axis=(1, 2, 3), keepdims=True), a.max(axis=(1, 2, 3), keepdims=True)
    energy = quantus.RelevanceMassAccuracy(abs=False, normalise=False, disable_warnings=True).evaluate_batch(
        a_batch=(a - low) / (high - low), s_batch=s)
    np.testing.assert_array_equal(ours["pointing_game"], np.asarray(pointing, float))  # no tied maxima on real maps
    np.testing.assert_allclose(ours["relevance_rank_accuracy"], rank, rtol=1e-9)
    np.testing.assert_allclose(ours["relevance_mass_accuracy"], mass, rtol=1e-6)
    np.testing.assert_allclose(ours["energy_pointing_game"], energy, rtol=1e-6)
    assert 0 < np.mean(ours["pointing_game"]) < 1  # hits and misses: the comparison can fail


def _explainer_for_run(run, method: str) -> Explainer:
    from herlev_fa.explanation.attribution import explainer_for

    return explainer_for(run, IGSettings(method=method, device="cpu", precision="fp32", steps=16))


def test_sanity_and_faithfulness_commands_on_real_cells(trained_run, real_cells, tmp_path):
    runner = CliRunner()
    common = ["--run", str(trained_run), "--data", str(real_cells), "--device", "cpu", "--limit", "3",
              "--steps", "8", "--quiet", "--split", "all"]
    result = runner.invoke(app, ["sanity", *common, "--method", "saliency", "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "s" / "sanity.csv")
    first = table[table["step"] == 0]
    assert (first["spearman"] == 1).all() and np.allclose(first["ssim"], 1)
    assert table.groupby("step")["cell"].size().eq(3).all() and table["randomised"].iloc[-1] == "conv1"
    assert table[table["step"] == table["step"].max()]["ssim"].mean() < 0.99
    assert (tmp_path / "s" / "sanity.png").is_file() and "## saliency" in (tmp_path / "s" / "sanity.md").read_text()
    result = runner.invoke(app, ["faithfulness", *common, "--method", "ig", "--out", str(tmp_path / "f")])
    assert result.exit_code == 0, result.output
    areas = pd.read_csv(tmp_path / "f" / "faithfulness.csv")
    assert len(areas) == 3 * 2 * 4 and set(areas["order"]) == {"most relevant first", "least relevant first",
                                                               "random", "nucleus first"}
    curves = pd.read_csv(tmp_path / "f" / "curves.csv").dropna()
    ends = curves.groupby(["curve", "fraction"])["output"].mean()
    assert ends[("deletion", 0.0)] == pytest.approx(1.0) and ends[("deletion", 1.0)] == pytest.approx(0.0, abs=1e-6)
    assert ends[("insertion", 1.0)] == pytest.approx(1.0) and ends[("insertion", 0.0)] == pytest.approx(0.0, abs=1e-6)
    assert (tmp_path / "f" / "faithfulness.png").is_file()
