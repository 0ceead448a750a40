"""Integrated Gradients: exact on toy linear models, complete on a trained one, and the explain / quantify commands.

A linear model's IG is known in closed form, IG = (x - baseline) * w, whatever the number of
steps; the toy tests check the maps, the geometry back to the input grid and the region shares
against it. The end-to-end tests use the session's trained synthetic run (``conftest.trained_run``).
"""

from __future__ import annotations

import inspect
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import herlev_cli.explain  # noqa: F401  (registers explain and quantify on the app)
from helpers import drawn_png, write_image
from herlev_cli.main import app
from herlev_fa.data.images import letterbox
from herlev_fa.data.images import load_image
from herlev_fa.config import IGSettings, help_of
from herlev_fa.errors import HerlevError
from herlev_fa.explanation.attribution import (
    BASELINES,
    ExplainedOutputs,
    Explainer,
    explain,
    make_baseline,
    normalise,
    target_column,
    unletterbox,
)
from herlev_fa.explanation.masks import BACKGROUND, CYTOPLASM, NUCLEUS
from herlev_fa.explanation.report import quantify
from herlev_fa.labels import BACKGROUND_RGB, CYTOPLASM_RGB, NUCLEUS_RGB, get_task
from herlev_fa.model.heads import SeverityModel, get_head
from herlev_fa.model.inference import fold_batchnorm
from herlev_fa.runs import FORMAT, Run, RunRecord, load_run

runner = CliRunner()
TASK = get_task("severity")
S = 16
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.5, 0.2)


def _linear(head: str, weight: np.ndarray | None = None, seed: int = 0) -> SeverityModel:
    """Flatten + Linear on [B, 3, S, S] (K outputs, 1 for reg): IG of output t is (x - b) * W[t]."""
    n_out = 1 if head == "reg" else TASK.n_classes
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * S * S, n_out))
    if weight is not None:
        with torch.no_grad():
            net[1].weight.copy_(torch.as_tensor(weight, dtype=torch.float32).reshape(n_out, -1))
            net[1].bias.zero_()
    return SeverityModel(net, get_head(head), TASK.severities).eval()


def _expected(model: SeverityModel, x: torch.Tensor, base: torch.Tensor, t: np.ndarray) -> np.ndarray:
    """Closed-form IG of a linear net, summed over channels: [B, S, S]."""
    w = model.net[1].weight.detach().reshape(-1, 3, S, S)  # [K, 3, S, S]
    return ((x - base) * w[torch.as_tensor(t)]).sum(dim=1).numpy()


def _images(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, S, S, 3), dtype=np.uint8)  # [B, S, S, 3]


def _explainer(model: SeverityModel, head: str, device: str, **kw) -> Explainer:
    kw.setdefault("precision", "fp32")  # the exact-value tests; auto has tests of its own
    return Explainer(model, get_head(head), TASK.classes, TASK.severities, MEAN, STD, S, device=device, **kw)


@pytest.mark.parametrize("baseline", BASELINES)
def test_linear_cls_ig_is_exact_and_complete(baseline, device):
    model = _linear("cls")
    images = _images()
    batch = _explainer(model, "cls", device, steps=3, baseline=baseline)(images)
    x = normalise(images, MEAN, STD)
    base = make_baseline(x, baseline, MEAN, STD)
    with torch.no_grad():
        logits = model(x).numpy()
    np.testing.assert_array_equal(batch.target, logits.argmax(1))  # predicted class by default
    want = _expected(model, x, base, batch.target)
    np.testing.assert_allclose(batch.attribution, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(batch.gap, want.sum(axis=(1, 2)), rtol=1e-4, atol=1e-3)  # completeness
    assert np.abs(batch.delta).max() < 1e-3 * max(1.0, np.abs(batch.gap).max())
    np.testing.assert_allclose(batch.probs, torch.softmax(torch.tensor(logits), 1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(batch.change, (x - base).abs().sum(1).numpy(), rtol=1e-5, atol=1e-5)


def test_a_named_class_is_explained_for_every_image(device):
    model = _linear("cls")
    images = _images()
    column = target_column("moderate_dysplastic", get_head("cls"), TASK.classes)
    batch = _explainer(model, "cls", device, steps=2)(images, column)
    assert column == 2 and list(batch.target) == [2, 2, 2]
    x = normalise(images, MEAN, STD)
    np.testing.assert_allclose(batch.attribution, _expected(model, x, torch.zeros_like(x), batch.target),
                               rtol=1e-4, atol=1e-4)


def test_reg_explains_the_score_and_refuses_a_class(device):
    model = _linear("reg")
    images = _images()
    assert target_column("predicted", get_head("reg"), TASK.classes) == 0
    batch = _explainer(model, "reg", device, steps=2, baseline="white")(images, 0)
    x = normalise(images, MEAN, STD)
    want = _expected(model, x, make_baseline(x, "white", MEAN, STD), np.zeros(3, int))
    np.testing.assert_allclose(batch.attribution, want, rtol=1e-4, atol=1e-4)
    assert batch.probs is None
    with torch.no_grad():
        np.testing.assert_allclose(batch.score, model(x)[:, 0].numpy(), rtol=1e-5)
    with pytest.raises(HerlevError, match="reg run has no class outputs"):
        target_column("normal", get_head("reg"), TASK.classes)
    with pytest.raises(HerlevError, match="unknown target 'nope'"):
        target_column("nope", get_head("cls"), TASK.classes)


def test_score_of_cls_reg_is_complete_with_enough_steps(device):
    # the softmax makes the score nonlinear: no closed form, but completeness must hold
    batch = _explainer(_linear("cls_reg", seed=1), "cls_reg", device, steps=64)(_images(seed=2), len(TASK.classes))
    assert list(batch.target) == [5, 5, 5]
    np.testing.assert_allclose(batch.attribution.sum(axis=(1, 2)) - batch.gap, batch.delta, atol=1e-4)
    assert batch.relative_delta.max() < 0.01


def test_bf16_gradients_are_checked_against_the_fp32_model(device):
    model = _linear("cls")
    images = _images()
    batch = _explainer(model, "cls", device, steps=2, precision="bf16")(images)
    x = normalise(images, MEAN, STD)
    want = _expected(model, x, torch.zeros_like(x), batch.target)
    np.testing.assert_allclose(batch.attribution, want, rtol=0.05, atol=0.05 * np.abs(want).max())
    t = torch.as_tensor(batch.target)[:, None]  # [B, 1]
    with torch.no_grad():
        gap = (model(x).gather(1, t) - model(torch.zeros_like(x)).gather(1, t))[:, 0]  # [B]
    np.testing.assert_allclose(batch.gap, gap.numpy(), rtol=1e-5, atol=1e-5)  # fp32 endpoints
    np.testing.assert_allclose(batch.delta, batch.attribution.sum(axis=(1, 2)) - batch.gap, rtol=1e-4, atol=1e-3)


def test_auto_precision_is_fp32_without_trying_bf16_where_bf16_is_not_tried(device):
    model, images = _linear("cls_reg", seed=1), _images(seed=2)
    auto = Explainer(model, get_head("cls_reg"), TASK.classes, TASK.severities, MEAN, STD, S, device="cpu", steps=4)
    # auto is the default; decided up front: the CPU is not in AUTO_TRIES_BF16
    assert auto.precision == "auto" and auto.used == "fp32"
    got, want = auto(images, 5), _explainer(model, "cls_reg", "cpu", steps=4, precision="fp32")(images, 5)
    assert auto.auto_deltas is None and got.precision == "fp32"
    np.testing.assert_array_equal(got.attribution, want.attribution)
    np.testing.assert_array_equal(got.delta, want.delta)


def test_auto_precision_keeps_the_precision_whose_first_batch_delta_is_smaller(monkeypatch, device):
    import herlev_fa.explanation.attribution as attribution

    monkeypatch.setattr(attribution, "AUTO_TRIES_BF16", {"cpu", "cuda"})  # let this device try bf16
    model, first, second = _linear("cls_reg", seed=1), _images(seed=2), _images(seed=3)
    auto = _explainer(model, "cls_reg", device, steps=4, precision="auto")
    assert auto.used is None  # decided by the first batch
    got = auto(first, 5)  # the score: through the softmax, so both deltas are non-zero
    fixed = {p: _explainer(model, "cls_reg", device, steps=4, precision=p) for p in ("fp32", "bf16")}
    want = {p: e(first, 5) for p, e in fixed.items()}
    assert set(auto.auto_deltas) == {"fp32", "bf16"}
    for p in ("fp32", "bf16"):  # the deltas it compared are those of each precision on that batch
        assert auto.auto_deltas[p] == pytest.approx(float(np.abs(want[p].delta).mean()), rel=1e-5, abs=1e-9)
    chosen = "bf16" if auto.auto_deltas["bf16"] <= auto.auto_deltas["fp32"] else "fp32"
    assert auto.used == chosen and got.precision == chosen
    np.testing.assert_allclose(got.attribution, want[chosen].attribution, rtol=1e-5, atol=1e-6)
    later = auto(second, 5)  # every later batch in the chosen precision, without trying the other again
    assert later.precision == chosen
    np.testing.assert_allclose(later.attribution, fixed[chosen](second, 5).attribution, rtol=1e-5, atol=1e-6)


def test_baselines_by_value():
    x = normalise(_images(1), MEAN, STD)  # [1, 3, S, S]
    m, s = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    assert torch.equal(make_baseline(x, "mean", MEAN, STD), torch.zeros_like(x))
    torch.testing.assert_close(make_baseline(x, "black", MEAN, STD)[0], ((0 - m) / s).expand(3, S, S))
    torch.testing.assert_close(make_baseline(x, "white", MEAN, STD)[0], ((1 - m) / s).expand(3, S, S))
    flat = normalise(np.full((1, S, S, 3), 77, np.uint8), MEAN, STD)
    torch.testing.assert_close(make_baseline(flat, "blur", MEAN, STD), flat)  # nothing to blur away
    with pytest.raises(HerlevError, match="unknown baseline"):
        make_baseline(x, "grey", MEAN, STD)


def test_bad_settings_are_user_errors():  # the Explainer checks what it is given, settings object or not
    for kw, pattern in (({"steps": 0}, "^steps 0"), ({"baseline": "x"}, "unknown baseline"),
                        ({"precision": "fp8"}, "unknown precision"), ({"rule": "simpson"}, "unknown rule"),
                        ({"method": "lime"}, "unknown method")):
        with pytest.raises(HerlevError, match=pattern):
            _explainer(_linear("cls"), "cls", "cpu", **kw)


def _bn_resnet(head: str = "cls_reg") -> SeverityModel:
    """timm's test_resnet (conv -> BatchNorm pairs) with running statistics far from the identity."""
    import timm

    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=TASK.n_classes)
    net.train()
    with torch.no_grad():
        for _ in range(3):  # BatchNorm running mean/var move away from 0/1
            net(torch.randn(8, 3, S, S) * 2 + 0.7)
    return SeverityModel(net, get_head(head), TASK.severities).eval()


def test_batchnorm_folding_gives_the_same_outputs_and_ig(device):
    model = _bn_resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded = fold_batchnorm(model, S)
    assert n_bn > 0 and folded is not model
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == 0  # every conv -> bn pair folded
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == n_bn  # the run's model is untouched
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    x = normalise(_images(4), MEAN, STD)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)
    kept = _explainer(model, "cls_reg", device, steps=16, fold_bn=False)(_images(4))
    fast = _explainer(model, "cls_reg", device, steps=16)(_images(4))
    np.testing.assert_array_equal(fast.target, kept.target)
    scale = np.abs(kept.attribution).max()
    np.testing.assert_allclose(fast.attribution, kept.attribution, rtol=1e-3, atol=1e-4 * scale)
    np.testing.assert_allclose(fast.delta, kept.delta, atol=1e-4 * max(1.0, np.abs(kept.gap).max()))


def test_midpoint_method_is_the_midpoint_riemann_sum_by_hand(device):
    model = _bn_resnet()
    images, steps, t = _images(2), 4, len(TASK.classes)  # explain the severity score
    x = normalise(images, MEAN, STD)
    outputs = ExplainedOutputs(model, get_head("cls_reg"), TASK.severities).eval()
    grads = []
    for k in range(steps):  # gradient of the score at the midpoints of the straight path from 0 to x
        point = ((k + 0.5) / steps * x).requires_grad_(True)
        grads.append(torch.autograd.grad(outputs(point)[:, t].sum(), point)[0])
    want = (x * torch.stack(grads).mean(dim=0)).sum(dim=1).numpy()  # [B, S, S]
    mid = _explainer(model, "cls_reg", device, steps=steps, rule="riemann_middle")(images, t)
    gl = _explainer(model, "cls_reg", device, steps=steps)(images, t)
    scale = np.abs(want).max()
    np.testing.assert_allclose(mid.attribution, want, rtol=1e-3, atol=1e-4 * scale)
    assert np.abs(gl.attribution - want).max() > 1e-3 * scale  # Gauss-Legendre samples other points


class _Branchy(nn.Module):
    """conv -> bn, then Python control flow on the data: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * S * S, TASK.n_classes)

    def forward(self, x):
        y = self.bn(self.conv(x))
        if y.mean() > 0:
            y = 2 * y
        return self.fc(y.flatten(1))


def test_batchnorm_folding_leaves_untraceable_or_changed_models_as_they_are(monkeypatch, device):
    model = SeverityModel(_Branchy(), get_head("cls"), TASK.severities).eval()
    assert fold_batchnorm(model, S) is model  # untraceable: attributed as it is
    batch = _explainer(model, "cls", device, steps=4)(_images(2))
    assert batch.attribution.shape == (2, S, S) and np.isfinite(batch.attribution).all()
    resnet = _bn_resnet("cls")
    # a fold whose outputs differ from the model's (here: a wrong one) is refused by the probe
    def wrong(net):
        return nn.Sequential(net, nn.Hardtanh(-0.01, 0.01))

    monkeypatch.setattr("torch.fx.experimental.optimization.fuse", wrong)
    assert fold_batchnorm(resnet, S) is resnet


def _toy_run(tmp_path: Path, model: SeverityModel, head: str = "cls", mean=MEAN, std=STD) -> Run:
    record = RunRecord(format=FORMAT, arch="linear", head=head, task=TASK.to_json(), image_size=S, mean=list(mean),
                       std=list(std), fold=0, n_folds=4, data_root=str(tmp_path))
    return Run(tmp_path, record, TASK, get_head(head), model)


@pytest.mark.parametrize("name, h, w, mode", [("a.bmp", 20, 24, "RGB"), ("b.jpg", 16, 16, "RGB"),
                                              ("c.png", 9, 30, "RGBA"), ("d.tif", 40, 12, "L")])
def test_explain_maps_back_to_the_input_grid(tmp_path, device, name, h, w, mode):
    model = _linear("cls")
    path = write_image(tmp_path / name, h=h, w=w, mode=mode)
    (result,) = explain(_toy_run(tmp_path, model), [path], IGSettings(steps=2, baseline="black", device=device))
    image = load_image(path)
    boxed = letterbox(S)(image=image)["image"][None]  # [1, S, S, 3]
    x = normalise(boxed, MEAN, STD)
    grid = _expected(model, x, make_baseline(x, "black", MEAN, STD), np.array([TASK.classes.index(result.target)]))[0]
    np.testing.assert_allclose(result.grid_attribution, grid, rtol=1e-4, atol=1e-4)
    assert result.attribution.shape == (h, w) and result.attribution.dtype == np.float32
    np.testing.assert_allclose(result.attribution, unletterbox(grid, h, w), rtol=1e-4, atol=1e-4)
    content = result.grid_attribution[result.box.slices()].sum()
    assert result.attribution.sum() == pytest.approx(content, rel=0.05, abs=0.05 * float(np.abs(grid).sum()))
    assert result.name == Path(name).stem and result.predicted == result.target and result.converged


def test_explain_reads_every_image_kind_and_refuses_broken_files(tmp_path, device):
    run = _toy_run(tmp_path, _linear("cls"))
    paths = [write_image(tmp_path / "p16.png", h=12, w=20, mode="I;16"), write_image(tmp_path / "pal.bmp", mode="P"),
             write_image(tmp_path / "one.png", h=1, w=1), write_image(tmp_path / "big.jpg", h=600, w=900)]
    results = explain(run, paths, IGSettings(steps=2, device=device, bs=3))  # two batches: 3 + 1
    assert [r.attribution.shape for r in results] == [(12, 20), (20, 24), (1, 1), (600, 900)]
    assert [r.name for r in results] == ["p16", "pal", "one", "big"]
    assert all(np.isfinite(r.attribution).all() for r in results)
    empty = tmp_path / "empty.bmp"
    empty.write_bytes(b"")
    with pytest.raises(HerlevError, match="cannot read image .*empty.bmp.*empty file"):
        explain(run, [paths[0], empty], IGSettings(steps=2, device=device))


def _toy_cell(root: Path, mask_size: tuple[int, int] | None = None) -> Path:
    """data/carcinoma_in_situ/cell.png: an 8 x 16 white image whose mask has a 4 x 4 nucleus at rows 2-6, cols 4-8."""
    folder = root / "carcinoma_in_situ"
    folder.mkdir(parents=True)
    Image.fromarray(np.full((8, 16, 3), 255, np.uint8)).save(folder / "cell.png")
    mh, mw = mask_size or (8, 16)
    rgb = np.zeros((mh, mw, 3), np.uint8)
    rgb[:] = BACKGROUND_RGB
    rgb[1:7, 1:15] = CYTOPLASM_RGB
    rgb[2:6, 4:8] = NUCLEUS_RGB
    Image.fromarray(rgb).save(folder / "cell-d.png")
    return root


def test_quantify_shares_match_hand_values_on_a_linear_model(tmp_path, device):
    # Letterboxed to 16 x 16, the 8 x 16 cell sits in rows 4..12, so its nucleus is rows 6..10, cols 4..8.
    # The CIS weights are 1 on those 16 pixels and on the 16 padding pixels of row 0, 0 elsewhere;
    # a white image with mean 0.5 / std 0.5 normalises to 1, so IG = 3 per weighted pixel (3 channels).
    weight = np.zeros((TASK.n_classes, 3, S, S), np.float32)
    weight[-1, :, 6:10, 4:8] = 1.0
    weight[-1, :, 0, :] = 1.0
    run = _toy_run(tmp_path, _linear("cls", weight), mean=[0.5] * 3, std=[0.5] * 3)
    data = _toy_cell(tmp_path / "data")
    result = quantify(run, data=data, split="all", out=tmp_path / "q", settings=IGSettings(steps=2, device=device),
                      progress=False)
    row = result.table.iloc[0]
    assert (row["label"], row["predicted"], row["target"]) == ("carcinoma_in_situ",) * 3
    assert row["gap"] == pytest.approx(96.0) and abs(row["delta"]) < 1e-3
    assert row["nucleus_area_share"] == pytest.approx(16 / 128)  # padding left out: 8 x 16 content pixels
    assert row["cytoplasm_area_share"] == pytest.approx((6 * 14 - 16) / 128)
    assert row["nucleus_pos_share"] == pytest.approx(1.0)
    assert row["nucleus_enrichment"] == pytest.approx(8.0)
    assert row["nucleus_top5"] == 1.0 and row["nucleus_top10"] == 1.0  # 7 and 13 pixels, all nucleus
    assert row["padding_abs_share"] == pytest.approx(0.5)  # 48 of 96 on the padding row
    assert row["nucleus_change_enrichment"] == pytest.approx(1.0)  # |x - b| = 1 everywhere
    saved = pd.read_csv(tmp_path / "q" / "quantify.csv")
    assert saved.loc[0, "nucleus_enrichment"] == pytest.approx(8.0)
    assert "| carcinoma_in_situ | 1 | 8.000 | 8.000 | 8.000 - 8.000 |" in (tmp_path / "q" / "quantify.md").read_text()
    drawn_png(tmp_path / "q" / "quantify.png", (700, 1100), (400, 650))


def test_quantify_warns_about_and_skips_images_without_a_mask(tmp_path, device):
    run = _toy_run(tmp_path, _linear("cls"))
    data = _toy_cell(tmp_path / "data")
    write_image(data / "carcinoma_in_situ" / "lonely.png", h=8, w=16)
    with pytest.warns(UserWarning, match=r"1 of 2 image\(s\) have no mask .*lonely.png"):
        result = quantify(run, data=data, split="all", out=tmp_path / "q",
                          settings=IGSettings(steps=2, device=device), progress=False)
    assert result.skipped == 1 and list(result.table["name"]) == ["cell"]


def test_a_mask_of_another_size_is_refused_naming_both_files(tmp_path):
    run = _toy_run(tmp_path, _linear("cls"))
    data = _toy_cell(tmp_path / "data", mask_size=(10, 16))
    with pytest.raises(HerlevError, match=r"mask '.*cell-d\.png' is 16x10 px but its image '.*cell\.png' is 16x8"):
        quantify(run, data=data, split="all", out=tmp_path / "q", settings=IGSettings(steps=2, device="cpu"),
                 progress=False)


@pytest.mark.parametrize("size", [64, 224])
def test_real_masks_stay_on_their_nuclei_through_the_letterbox(shared_herlev, size):
    from herlev_fa.explanation.report import load_cell

    images = sorted((shared_herlev / "letterbox200").glob("*/*.jpg"))[::15]  # about 50 cells, every class
    darker = []
    for path in images:
        boxed, regions, _ = load_cell(path, path.with_name(path.stem + "-d.png"), size)
        brightness = boxed.astype(np.float32).mean(axis=2)  # [S, S]
        darker.append(brightness[regions == NUCLEUS].mean() < brightness[regions == CYTOPLASM].mean())
        assert (regions == BACKGROUND).any()
    assert np.mean(darker) > 0.9, np.mean(darker)  # nuclei are the dark, stained part of the cell


# ---------------------------------------------------------------------------------------------
# End to end on the session's trained synthetic run


@pytest.fixture(scope="module")
def run(trained_run) -> Run:
    return load_run(trained_run)


def test_inputs_are_the_validation_preprocessing(run, device):
    from herlev_fa.evaluation import held_out_items, predict_items

    items = held_out_items(run).iloc[:6]
    fastai_out, _, _ = predict_items(run, items, bs=6, device=device, progress=False)
    boxed = np.stack([letterbox(run.size)(image=load_image(p))["image"] for p in items["path"]])
    with torch.no_grad():
        ours = run.model.to(device)(normalise(boxed, run.mean, run.std).to(device)).cpu().numpy()
    np.testing.assert_allclose(ours, fastai_out, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        explained = ExplainedOutputs(run.model, run.head, run.task.severities)(
            normalise(boxed, run.mean, run.std).to(device)).cpu().numpy()
    np.testing.assert_allclose(explained, fastai_out, rtol=1e-4, atol=1e-4)  # cls_reg: logits then score


def test_quantify_finds_the_nucleus_on_synthetic_held_out_cells(run, tmp_path, device):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a few images may sit above the delta tolerance
        result = quantify(run, out=tmp_path / "q", settings=IGSettings(device=device), progress=False)
    table, summary = result.table, result.summary.set_index("class")
    assert result.skipped == 0 and len(table) == int((run.folds()["fold"] == run.fold).sum())
    enrichment = summary.loc["all", "nucleus_enrichment_mean"]
    control = summary.loc["all", "nucleus_change_enrichment_mean"]
    assert enrichment > 1.3, summary["nucleus_enrichment_mean"]  # more than the nucleus's share of the area
    assert enrichment > 2 * control  # the model, not the baseline, puts the mass there
    # severity lives in the nucleus: the high grades are explained by it, more than the normals
    by_class = summary["nucleus_enrichment_mean"]
    assert by_class["carcinoma_in_situ"] > max(2.0, by_class["normal"]), by_class
    assert table["relative_delta"].median() < 0.02
    for name in ("quantify.csv", "quantify.md"):
        assert (tmp_path / "q" / name).stat().st_size > 0
    used = table["precision"].unique()  # one precision for the whole run, named in the delta line
    assert len(used) == 1 and result.delta.endswith(f"; gradients in {used[0]}")
    assert used[0] == "fp32" or device != "cpu"
    drawn_png(tmp_path / "q" / "quantify.png", (800, 1400), (400, 650))


def _cell_files(run: Run, folder: Path) -> list[Path]:
    """One held-out synthetic cell as .bmp, .jpg, RGBA .png and grayscale .tif."""
    from herlev_fa.evaluation import held_out_items

    folder.mkdir(parents=True, exist_ok=True)
    bmp = Path(held_out_items(run)["path"].iloc[0])
    image = Image.open(bmp).convert("RGB")
    files = [folder / "cell.bmp", folder / "cell_j.jpg", folder / "cell_a.png", folder / "cell_g.tif"]
    shutil.copy(bmp, files[0])
    image.save(files[1], quality=95)
    image.convert("RGBA").save(files[2])
    image.convert("L").save(files[3])
    return files


def test_explain_command_writes_figure_and_map_per_image(run, tmp_path, device):
    files = _cell_files(run, tmp_path / "in")
    out = tmp_path / "out"
    result = runner.invoke(app, ["explain", *map(str, files), "--run", str(run.path), "--out", str(out),
                                 "--device", device, "--quiet"])
    assert result.exit_code == 0, result.output
    for f in files:
        shape = load_image(f).shape[:2]
        assert np.load(out / f"{f.stem}_ig.npy").shape == shape
        drawn_png(out / f"{f.stem}_ig.png", (900, 1300), (350, 600))
    table = pd.read_csv(out / "explanations.csv")
    assert list(table["name"]) == [f.stem for f in files]
    assert set(table["predicted"]) <= set(run.task.classes) and (table["target"] == table["predicted"]).all()
    used = {"cpu": {"fp32"}}.get(device, {"fp32", "bf16"})  # precision auto: fp32 on the CPU, tried on a GPU
    assert table["precision"].nunique() == 1 and table["precision"][0] in used
    assert f"gradients in {table['precision'][0]}" in result.output  # the summary line names it
    # completeness as written: delta = sum of the letterboxed map - (f(x) - f(baseline)), small at 50 steps
    (res,) = explain(run, [files[0]], IGSettings(device=device))
    assert res.grid_attribution.sum() - res.gap == pytest.approx(res.delta, abs=1e-3)
    assert res.relative_delta == pytest.approx(table.loc[0, "relative_delta"], rel=1e-3, abs=1e-6)
    assert res.converged == (res.relative_delta <= IGSettings().tol)  # flagged exactly when above the tolerance
    # with more steps the path integral converges: completeness within the tolerance (this cell's gap is small,
    # 0.3 logit, so at 50 steps its relative delta can exceed it)
    (finer,) = explain(run, [files[0]], IGSettings(device=device, steps=100))
    assert finer.relative_delta < IGSettings().tol


def test_explain_warns_in_one_line_when_the_delta_is_above_tolerance(run, tmp_path, device):
    good = _cell_files(run, tmp_path / "in")[0]
    result = runner.invoke(app, ["explain", str(good), "--run", str(run.path), "--out", str(tmp_path / "o"),
                                 "--steps", "2", "--tol", "1e-6", "--device", device])
    assert result.exit_code == 0, result.output
    warning = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "rerun with more steps, e.g. --steps 4" in warning[0], result.output


def _one_line_error(result, pattern: str) -> None:
    import re

    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert re.search(pattern, lines[0]), lines[0]


def test_explain_bad_inputs_are_one_line_errors(run, tmp_path):
    good = _cell_files(run, tmp_path / "in")[0]
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image")
    cases = [
        (["explain", str(good), "--run", str(tmp_path / "no_run")], "run folder .* does not exist"),
        (["explain", str(bad), "--run", str(run.path), "--out", str(tmp_path / "o")], "cannot read image .*broken.jpg"),
        (["explain", str(tmp_path / "gone.bmp"), "--run", str(run.path)], "image .*gone.bmp' does not exist"),
        (["explain", str(good), "--run", str(run.path), "--target", "huge"], "unknown --target 'huge'"),
        (["explain", str(good), "--run", str(run.path), "--baseline", "grey"], "unknown baseline 'grey'"),
        (["explain", str(good), "--run", str(run.path), "--method", "simpson"], "unknown method 'simpson'"),
        (["quantify", "--run", str(run.path), "--split", "test"], "unknown --split 'test'"),
        (["quantify", "--run", str(run.path), "--rule", "simpson"], "unknown rule 'simpson'"),
    ]
    for args, pattern in cases:
        _one_line_error(runner.invoke(app, args), pattern)


def test_quantify_refuses_a_mask_of_another_size(run, tmp_path):
    from herlev_fa.data.items import mask_for
    from herlev_fa.evaluation import held_out_items

    data = Path(shutil.copytree(run.record.data_root, tmp_path / "data"))
    first = data / held_out_items(run)["rel"].iloc[0]
    mask = mask_for(first)
    Image.open(mask).convert("RGB").resize((10, 7), Image.NEAREST).save(mask)
    result = runner.invoke(app, ["quantify", "--run", str(run.path), "--data", str(data), "--out", str(tmp_path / "q"),
                                 "--device", "cpu", "--quiet"])
    _one_line_error(result, rf"mask '.*{mask.name}' is 10x7 px but its image '.*{first.name}' is")
    assert not (tmp_path / "q" / "quantify.csv").exists()


def test_explain_and_quantify_json_for_scripts(trained_run, synth_data, tmp_path):
    import json

    images = sorted(synth_data.glob("severe_dysplastic/*.BMP"))[:2]
    result = CliRunner().invoke(app, ["explain", *map(str, images), "--run", str(trained_run), "--steps", "16",
                                      "--out", str(tmp_path / "e"), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["path"] for r in rows] == [str(p) for p in images]
    assert all(Path(r["map"]).is_file() and r["predicted"] for r in rows)
    result = CliRunner().invoke(app, ["quantify", "--run", str(trained_run), "--steps", "16",
                                      "--out", str(tmp_path / "q"), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 42 and {"nucleus_enrichment", "nucleus_pos_share", "label"} <= set(rows[0])


# ---------------------------------------------------------------------------------------------
# Settings, prefetching, and the poster's Fig. 7 (compare-explanations)


def test_ig_settings_validate_and_carry_the_cli_help():
    for kw, pattern in (({"steps": 0}, "^steps 0"), ({"baseline": "x"}, "unknown baseline 'x'"),
                        ({"precision": "fp8"}, "unknown precision"), ({"rule": "simpson"}, "unknown rule"),
                        ({"method": "lime"}, "unknown method 'lime'"), ({"samples": 0}, "^samples 0"),
                        ({"noise": -1}, "^noise -1"), ({"window": 0}, "^window 0"), ({"bs": 0}, "^bs 0"),
                        ({"tol": 0}, "^tol 0"), ({"device": "tpu"}, "unknown device")):
        with pytest.raises(HerlevError, match=pattern):
            IGSettings(**kw)
    assert IGSettings(steps=16, rule="riemann_middle", precision="fp32").describe() == \
        "target predicted, baseline mean, 16 midpoint steps"
    assert IGSettings().describe().endswith("Gauss-Legendre steps, auto precision")  # before auto has chosen
    assert IGSettings().describe("bf16").endswith("steps, bf16") and IGSettings().describe("fp32").endswith("steps")
    assert "quadrature rule" in help_of(IGSettings, "rule") and "gradcam" in help_of(IGSettings, "method")
    assert IGSettings(method="gradcam").describe("fp32") == "Grad-CAM (last conv stage), target predicted"
    assert IGSettings(method="smoothgrad", samples=4).describe("fp32") == \
        "SmoothGrad (IG, 4 samples, noise 0.15), target predicted, baseline mean, 50 Gauss-Legendre steps"
    for command in (herlev_cli.explain.explain, herlev_cli.explain.quantify, herlev_cli.explain.compare_quantify):
        options = inspect.signature(command).parameters  # the commands' defaults are the settings' defaults
        assert {n: options[n].default for n in herlev_cli.explain.SETTING_TYPES} == \
            {n: getattr(IGSettings(), n) for n in herlev_cli.explain.SETTING_TYPES}


def test_prefetched_keeps_order_and_raises_at_the_failing_chunk():
    from herlev_fa.explanation.attribution import prefetched

    assert list(prefetched(lambda i: i * 10, range(4))) == [(0, 0), (1, 10), (2, 20), (3, 30)]
    assert list(prefetched(lambda i: i, [])) == []

    def load(i: int) -> int:
        if i == 2:
            raise HerlevError("chunk 2 is broken")
        return i

    seen = []
    with pytest.raises(HerlevError, match="chunk 2"):
        for chunk, _ in prefetched(load, range(4)):
            seen.append(chunk)
    assert seen == [0, 1]


def test_pick_cells_is_reproducible_per_class_and_ignores_row_order():
    from herlev_fa.explanation.report import pick_cells

    items = pd.DataFrame({"path": [f"{c}/{i:02d}.bmp" for c in TASK.classes for i in range(5)],
                          "label": [c for c in TASK.classes for _ in range(5)]})
    items = items[~((items["label"] == TASK.classes[1]) & (items["path"] > f"{TASK.classes[1]}/00.bmp"))]  # 1 left
    picked = pick_cells(items, TASK.classes, per_class=2, seed=3)
    assert list(picked["label"]) == [c for c in TASK.classes for _ in range(1 if c == TASK.classes[1] else 2)]
    shuffled = pick_cells(items.sample(frac=1, random_state=1), TASK.classes, per_class=2, seed=3)
    assert list(shuffled["path"]) == list(picked["path"])
    assert list(pick_cells(items, TASK.classes, 2, seed=4)["path"]) != list(picked["path"])
    with pytest.raises(HerlevError, match="^per_class 0"):
        pick_cells(items, TASK.classes, 0)


def test_short_labels_go_up_only_as_far_as_needed():
    from herlev_fa.explanation.report import short_labels

    paths = [Path("/s/cls/cls/fold0"), Path("/s/cls_reg-1/cls_reg/fold0"), Path("/s/cls_reg-0.3/cls_reg/fold0")]
    assert short_labels(paths) == ["cls/cls/fold0", "cls_reg-1/cls_reg/fold0", "cls_reg-0.3/cls_reg/fold0"]
    assert short_labels([Path("/a/r1"), Path("/a/r2")]) == ["r1", "r2"]


def test_explanation_grid_has_one_overlay_per_cell_and_run():
    from matplotlib.text import Text

    from herlev_fa.figures import explanation_grid

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40 + 4 * i, 40, 3), dtype=np.uint8) for i in range(3)]
    nuclei = [np.zeros(im.shape[:2], bool) for im in images]
    for n in nuclei:
        n[5:10, 6:12] = True
    maps = [[rng.normal(size=im.shape[:2]).astype(np.float32) for _ in range(2)] for im in images]  # [cell][run]
    fig = explanation_grid(images, nuclei, maps, ["a", "b", "c"], ["run 1", "run 2"],
                           notes=[["x", "y"]] * 3, title="Integrated Gradients, a title as long as the figure is wide")
    assert len(fig.axes) == 3 * 3 + 1  # and the colour bar of the overlays
    axes = np.array(fig.axes[:9]).reshape(3, 3)
    for r in range(3):
        np.testing.assert_array_equal(axes[r, 0].images[0].get_array(), images[r])
        for c in range(2):
            overlay = axes[r, c + 1].images[-1].get_array()
            np.testing.assert_array_equal(overlay, maps[r][c])  # the run's own map, in the cell's grid
            assert len(axes[r, c + 1].collections) >= 1  # the nucleus outline
    assert [axes[0, c].get_title() for c in range(3)] == ["cell", "run 1", "run 2"]
    fig.canvas.draw()  # the title sits above the column titles, not over them
    renderer = fig.canvas.get_renderer()
    column_tops = [axes[0, c].title.get_window_extent(renderer).y1 for c in range(3)]
    title = next(t for t in fig.findobj(Text) if t.get_text().startswith("Integrated Gradients"))
    assert title.get_window_extent(renderer).y0 >= max(column_tops)


def test_compare_explanations_draws_the_same_held_out_cells_for_each_run(run, tmp_path, device):
    out = tmp_path / "fig7.png"
    result = runner.invoke(app, ["compare-explanations", str(run.path), str(run.path), "--label", "first",
                                 "--label", "second", "--out", str(out), "--per-class", "1", "--steps", "8",
                                 "--device", device])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out.with_suffix(".csv"))
    held = run.folds()[run.folds()["fold"] == run.fold]
    assert len(table) == 2 * len(run.task.classes) and set(table["run"]) == {"first", "second"}
    assert sorted(table["label"].unique()) == sorted(run.task.classes)
    assert {f"{c}.bmp".lower() for c in table["cell"]} <= {Path(r).name.lower() for r in held["rel"]}
    first, second = (table[table["run"] == k].reset_index(drop=True) for k in ("first", "second"))
    pd.testing.assert_series_equal(first["nucleus_pos_share"], second["nucleus_pos_share"])  # same run, same maps
    pixels = np.asarray(Image.open(out).convert("L"), np.float32)
    assert pixels.shape[0] > 5 * 100 and pixels.std() > 20  # five rows of panels, not blank
    assert "5 cells x 2 runs" in result.output
    _one_line_error(runner.invoke(app, ["compare-explanations", str(run.path), "--label", "a", "--label", "b",
                                        "--out", str(out)]), "2 label\\(s\\) for 1 run")
