"""`herlev predict` and `herlev_fa.prediction`: the dihedral TTA on toy models, the CSV, image formats, bad input."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import herlev_cli.predict  # noqa: F401  (registers the command on the app)
from helpers import write_image
from herlev_cli.main import app
from herlev_fa.config import EvalSettings, PredictSettings
from herlev_fa.evaluation import evaluate
from herlev_fa.model.heads import SeverityModel, get_head
from herlev_fa.prediction import dihedral, dihedral_tta, find_images, predict
from herlev_fa.runs import load_run

runner = CliRunner()
CLASSES = ["normal", "light_dysplastic", "moderate_dysplastic", "severe_dysplastic", "carcinoma_in_situ"]


# --- the dihedral group and TTA, exactly, on toy models -------------------------------------------------------


def _views(x):
    return [dihedral(x, k) for k in range(8)]


def _index(views, y):
    return [i for i, v in enumerate(views) if torch.equal(v, y)]


def test_dihedral_elements_form_the_group_d4():
    x = torch.arange(16.0).view(1, 1, 4, 4)  # no symmetry: every group element gives another image
    views = _views(x)
    assert torch.equal(views[0], x)
    assert all(len(_index(views, v)) == 1 for v in views), "the 8 views are not distinct"
    for a in views:  # closed under composition, and every element has an inverse
        composed = [dihedral(a, k) for k in range(8)]
        assert sorted(i for c in composed for i in _index(views, c)) == list(range(8))
    # every corner comes to the top left exactly twice (a rotation, and a rotation after the transpose)
    assert sorted(v[0, 0, 0, 0].item() for v in views) == [0, 0, 3, 3, 12, 12, 15, 15]
    assert torch.equal(dihedral(x, 1), torch.rot90(x, 1, (2, 3))) and torch.equal(dihedral(x, 4), x.transpose(2, 3))
    with pytest.raises(ValueError):
        dihedral(x, 8)


class CornerModel(nn.Module):
    """Not invariant: logits [B, 2] = (top-left pixel of channel 0, 0); as `reg`, the score [B, 1] is that pixel."""

    def __init__(self, reg: bool = False):
        super().__init__()
        self.reg = reg

    def forward(self, x):
        corner = x[:, 0, 0, 0]  # [B]
        return corner[:, None] if self.reg else torch.stack([corner, torch.zeros_like(corner)], dim=1)


def _corner_images():
    x = torch.zeros(2, 3, 5, 5)
    x[0, 0, 0, 0], x[0, 0, 0, -1], x[0, 0, -1, 0], x[0, 0, -1, -1] = 4.0, -2.0, 0.5, 1.0
    x[1, 0, 0, 0], x[1, 0, 0, -1], x[1, 0, -1, 0], x[1, 0, -1, -1] = -3.0, -3.0, 6.0, 0.0
    corners = torch.tensor([[4.0, -2.0, 0.5, 1.0], [-3.0, -3.0, 6.0, 0.0]])  # [B, 4]
    return x, corners


def test_tta_averages_the_probabilities_of_the_eight_views():
    x, corners = _corner_images()
    p_class0 = torch.sigmoid(corners)  # softmax((c, 0))[0] per corner, [B, 4]
    expected = torch.stack([p_class0.mean(1), 1 - p_class0.mean(1)], dim=1)  # [B, 2]: each corner seen twice
    out = dihedral_tta(CornerModel(), x, get_head("cls"), (0.0, 1.0))
    assert torch.allclose(out.softmax(1), expected, atol=1e-6)
    # probabilities are averaged, not logits: the softmax of the mean logit is another number
    assert not torch.allclose(torch.sigmoid(corners.mean(1)), expected[:, 0], atol=1e-2)

    out = dihedral_tta(SeverityModel(CornerModel(), get_head("cls_reg"), (0.0, 3.0)), x, get_head("cls_reg"),
                       (0.0, 3.0))
    assert out.shape == (2, 3)
    assert torch.allclose(out[:, :2].softmax(1), expected, atol=1e-6)
    # the score is the expected severity of the averaged probabilities = the mean of the 8 scores
    assert torch.allclose(out[:, 2], 3.0 * expected[:, 1], atol=1e-6)
    assert torch.allclose(out[:, 2], 3.0 * (1 - p_class0).mean(1), atol=1e-6)

    out = dihedral_tta(CornerModel(reg=True), x, get_head("reg"), (0.0, 1.0))
    assert torch.allclose(out[:, 0], corners.mean(1), atol=1e-6)


def test_tta_of_an_invariant_model_is_the_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))  # pointwise + pool
    model = SeverityModel(net, get_head("cls_reg"), (0.0, 1.0, 2.0, 3.0, 4.0)).eval()
    x = torch.randn(3, 3, 8, 8)
    plain = model(x)
    out = dihedral_tta(model, x, get_head("cls_reg"), (0.0, 1.0, 2.0, 3.0, 4.0))
    assert torch.allclose(out[:, :5].softmax(1), plain[:, :5].softmax(1), atol=1e-6)
    assert torch.allclose(out[:, 5], plain[:, 5], atol=1e-5)


def test_average_views_keeps_tiny_probabilities():
    outs = torch.tensor([[[0.0, -200.0]], [[0.0, -210.0]]])  # [V=2, B=1, K=2]: P(class 1) underflows in float32
    out = get_head("cls").average_views(outs, (0.0, 1.0))
    assert torch.isfinite(out).all()
    assert out[0, 1].item() == pytest.approx(np.log((np.exp(-200.0) + np.exp(-210.0)) / 2), rel=1e-5)


# --- predictions of a trained run -----------------------------------------------------------------------------


def assert_one_line_error(result, pattern):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert re.search(pattern, lines[0]), lines[0]


@pytest.fixture(scope="module")
def folder_preds(trained_run, synth_data, tmp_path_factory):
    """`herlev predict DATA` over the whole synthetic folder (168 images, each with a -d.bmp mask beside it)."""
    out = tmp_path_factory.mktemp("pred") / "preds.csv"
    result = runner.invoke(app, ["predict", str(synth_data), "--run", str(trained_run), "--out", str(out),
                                 "--bs", "32", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return pd.read_csv(out), result.output


def test_csv_has_one_row_per_image_and_every_column(folder_preds, synth_data):
    preds, output = folder_preds
    assert list(preds.columns) == ["path", "pred", *(f"p_{c}" for c in CLASSES), "score", "abnormal", "abnormal_prob",
                                   "pred_abnormal"]
    assert len(preds) == 168 and preds["path"].is_unique  # masks skipped
    assert not preds["path"].str.endswith("-d.bmp").any()
    probs = preds[[f"p_{c}" for c in CLASSES]].to_numpy()
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (preds["pred"] == [CLASSES[i] for i in probs.argmax(1)]).all()
    assert np.allclose(preds["score"], probs @ np.arange(5.0), atol=1e-4)  # cls_reg: expected severity
    assert np.allclose(preds["abnormal_prob"], probs[:, 1:].sum(1), atol=1e-5)
    assert (preds["abnormal"] == (preds["abnormal_prob"] >= 0.5)).all()  # the screening call follows P(abnormal)
    assert (preds["pred_abnormal"] == (preds["pred"] != "normal")).all()  # the poster's: the predicted class
    assert "168 image(s)" in output and "┃ image" not in output  # no table for many images


def test_predictions_agree_with_evaluate_on_the_held_out_fold(folder_preds, trained_run, synth_data, tmp_path):
    preds, _ = folder_preds
    folds = pd.read_csv(trained_run / "folds.csv")
    held = folds[folds["fold"] == 0]
    preds["rel"] = [Path(p).relative_to(synth_data).as_posix() for p in preds["path"]]
    merged = held.merge(preds, on="rel", validate="one_to_one")
    assert len(merged) == len(held) == 42
    metrics = evaluate(trained_run, EvalSettings(out=tmp_path, device="cpu", progress=False))
    assert (merged["pred"] == merged["label"]).mean() == pytest.approx(metrics["accuracy"])
    y = merged["label"].map(CLASSES.index)
    pred = merged["pred"].map(CLASSES.index)
    cm = np.zeros((5, 5), int)
    np.add.at(cm, (y, pred), 1)
    assert cm.tolist() == metrics["confusion_matrix"]


def test_tta_and_json_and_table_for_a_few_images(trained_run, synth_data, tmp_path):
    images = sorted((synth_data / "carcinoma_in_situ").glob("*.BMP"))[:3]
    args = ["predict", *map(str, images), "--run", str(trained_run), "--device", "cpu"]
    plain = runner.invoke(app, args + ["--out", str(tmp_path / "plain.csv")])
    assert plain.exit_code == 0, plain.output
    assert "┃ image" in plain.output and images[0].stem in plain.output and "3 image(s)" in plain.output
    result = runner.invoke(app, args + ["--tta", "--json", "--out", str(tmp_path / "tta.csv")])
    assert result.exit_code == 0, result.output
    records = json.loads(result.output)
    tta = pd.read_csv(tmp_path / "tta.csv")
    assert [r["path"] for r in records] == list(tta["path"]) == list(map(str, images))
    assert np.allclose([r["score"] for r in records], tta["score"])
    probs = tta[[f"p_{c}" for c in CLASSES]].to_numpy()
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert np.allclose(tta["score"], probs @ np.arange(5.0), atol=1e-4)
    # the trained network is not rotation invariant, so TTA moves the probabilities
    assert not np.allclose(probs, pd.read_csv(tmp_path / "plain.csv")[[f"p_{c}" for c in CLASSES]], atol=1e-4)


def test_image_modes_sizes_and_formats(trained_run, tmp_path):
    run = load_run(trained_run)
    names = {"rgb.bmp": "RGB", "rgba.png": "RGBA", "gray.tif": "L", "gray16.png": "I;16", "palette.png": "P"}
    paths = [write_image(tmp_path / name, h=37, w=91, mode=mode, value=60) for name, mode in names.items()]
    paths.append(write_image(tmp_path / "big.jpg", h=700, w=500, mode="RGB"))
    paths.append(write_image(tmp_path / "tiny.tiff", h=3, w=2, mode="RGB"))
    preds = predict(run, paths, PredictSettings(device="cpu", progress=False))
    assert list(preds["path"]) == list(map(str, paths))
    probs = preds.filter(regex="^p_").to_numpy()
    assert np.isfinite(probs).all() and np.allclose(probs.sum(1), 1, atol=1e-5)
    # the same gray picture as RGB, RGBA (alpha dropped), 8-bit gray and 16-bit gray: the same pixels, the same output
    assert np.allclose(probs[1:4], probs[0], atol=1e-6)


def test_chunks_batches_and_skipped_files_keep_the_order(trained_run, tmp_path, monkeypatch):
    from herlev_fa.prediction import predict_outputs

    paths = [write_image(tmp_path / f"{i}.png", h=30 + i, w=40, value=12 * i) for i in range(7)]
    whole = predict(trained_run, paths, PredictSettings(device="cpu", progress=False))
    (tmp_path / "3.png").write_bytes(b"broken")
    monkeypatch.setitem(predict_outputs.__globals__, "CHUNK", 3)  # decode 3 images at a time
    with pytest.warns(UserWarning, match="3.png"):
        parts = predict(trained_run, paths, PredictSettings(bs=2, device="cpu", skip_bad=True, progress=False))
    assert list(parts["path"]) == [str(p) for i, p in enumerate(paths) if i != 3]
    expected = whole.drop(index=3).reset_index(drop=True)
    assert np.allclose(parts.filter(regex="^p_"), expected.filter(regex="^p_"), atol=1e-6)


def test_a_reg_run_has_no_probability_columns(synth_data, tmp_path):
    from herlev_fa import DataConfig, ModelConfig, TrainConfig, train

    cfg = TrainConfig(DataConfig(synth_data, size=32, bs=32, folds=2),
                      ModelConfig("test_resnet", head="reg", pretrained=False),
                      epochs=1, device="cpu", out=tmp_path, name="reg", quiet=True)
    run_dir = train(cfg).runs[0]
    preds = predict(run_dir, synth_data / "light_dysplastic",  # one path
                    PredictSettings(tta=True, device="cpu", progress=False))
    assert list(preds.columns) == ["path", "pred", "score", "abnormal", "pred_abnormal"]
    assert len(preds) == 24
    assert (preds["abnormal"] == (preds["score"] >= 0.5)).all()  # reg: the screening call reads the score
    nearest = np.clip(np.rint(preds["score"]), 0, 4).astype(int)  # severities 0..4: nearest = rounded and clipped
    assert (preds["pred"] == [CLASSES[i] for i in nearest]).all()


def test_find_images_recurses_and_skips_masks_and_hidden_files(tmp_path):
    write_image(tmp_path / "a" / "x.BMP")
    write_image(tmp_path / "a" / "x-d.bmp")
    write_image(tmp_path / "a" / "b" / "y.png")
    write_image(tmp_path / "a" / "b" / "y-D.PNG")
    write_image(tmp_path / "a" / ".hidden" / "z.png")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    found = find_images([tmp_path / "a", tmp_path / "a" / "x.BMP"])
    assert found == [tmp_path / "a" / "b" / "y.png", tmp_path / "a" / "x.BMP"]
    with pytest.warns(UserWarning, match="segmentation mask"):
        assert find_images([tmp_path / "a" / "x-d.bmp", tmp_path / "a" / "x.BMP"]) == [tmp_path / "a" / "x.BMP"]


# --- bad input: one line, exit 2, no CSV ----------------------------------------------------------------------


def _bad_image(tmp_path):
    write_image(tmp_path / "in" / "good.png")
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return [str(tmp_path / "in")]


def _empty_dir(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "only-d.png").write_bytes(b"")  # a mask name: skipped, so nothing is left
    return [str(tmp_path / "in")]


def _text_file(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    return [str(tmp_path / "notes.txt")]


BAD = {
    "missing image": (lambda tmp_path: [str(tmp_path / "nope.png")], "nope.png' does not exist"),
    "unreadable image": (_bad_image, "cannot read image '.*broken.png'.*--skip-bad"),
    "empty folder": (_empty_dir, "folder '.*in' holds no image"),
    "not an image": (_text_file, "notes.txt' is not an image file"),
    "batch size 0": (lambda tmp_path: [str(write_image(tmp_path / "a.png")), "--bs", "0"], "--bs 0 is out of range"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line(trained_run, tmp_path, case):
    build, pattern = BAD[case]
    out = tmp_path / "preds.csv"
    result = runner.invoke(app, ["predict", *build(tmp_path), "--run", str(trained_run), "--out", str(out)])
    assert_one_line_error(result, pattern)
    assert not out.exists()


def test_missing_run_is_one_line(tmp_path):
    write_image(tmp_path / "a.png")
    result = runner.invoke(app, ["predict", str(tmp_path / "a.png"), "--run", str(tmp_path / "norun")])
    assert_one_line_error(result, "run folder '.*norun' does not exist")


def test_skip_bad_predicts_the_rest(trained_run, tmp_path):
    args = _bad_image(tmp_path)
    result = runner.invoke(app, ["predict", *args, "--run", str(trained_run), "--out", str(tmp_path / "p.csv"),
                                 "--skip-bad", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "broken.png" in result.output  # the warning names it
    assert [p.rsplit("/", 1)[-1] for p in pd.read_csv(tmp_path / "p.csv")["path"]] == ["good.png"]


def test_out_that_is_a_folder(trained_run, tmp_path):
    result = runner.invoke(app, ["predict", str(write_image(tmp_path / "a.png")), "--run", str(trained_run),
                                 "--out", str(tmp_path)])
    assert_one_line_error(result, "is a folder")


def test_threshold_option_moves_the_screening_call_and_reads_the_runs_operating_point(trained_run, synth_data,
                                                                                      tmp_path):
    recorded = json.loads((trained_run / "metrics.json").read_text())
    sens95 = recorded["operating_thresholds"]["sens95"]
    assert recorded["threshold"] == 0.5 and 0 < sens95 < 1
    out = tmp_path / "preds.csv"
    result = runner.invoke(app, ["predict", str(synth_data / "light_dysplastic"), "--run", str(trained_run),
                                 "--out", str(out), "--device", "cpu", "--threshold", "sens95"])
    assert result.exit_code == 0, result.output
    preds = pd.read_csv(out)
    at = np.isclose(preds["abnormal_prob"], sens95, rtol=0, atol=1e-6)  # the cell that set sens95: the CSV rounds it
    assert ((preds["abnormal"] == (preds["abnormal_prob"] >= sens95)) | at).all()
    assert f"called abnormal (P(abnormal) ≥ {sens95:.3g} (sens95))" in result.output
    never = predict(trained_run, synth_data / "light_dysplastic",
                    PredictSettings(device="cpu", progress=False, threshold=1.01))
    assert not never["abnormal"].any() and (never["pred_abnormal"] == (never["pred"] != "normal")).all()
    bad = runner.invoke(app, ["predict", str(synth_data), "--run", str(trained_run), "--out", str(out),
                              "--threshold", "high"])
    assert bad.exit_code == 2 and "not a number nor one of spec95, sens95" in bad.output


def test_evaluate_threshold_scores_the_screening_call_and_keeps_the_posters_binary_accuracy(trained_run, tmp_path):
    base = evaluate(trained_run, EvalSettings(out=tmp_path / "a", device="cpu", progress=False, n_boot=0))
    never = evaluate(trained_run, EvalSettings(out=tmp_path / "b", device="cpu", progress=False, n_boot=0,
                                               threshold=1.01))
    assert never["sensitivity"] == 0.0 and never["specificity"] == 1.0 and never["threshold"] == 1.01
    assert never["binary_accuracy"] == base["binary_accuracy"]  # the predicted class does not move
    normal_share = 1 - np.mean(np.array(base["confusion_matrix"]).sum(1)[1:].sum() / base["n"])
    assert never["screening_accuracy"] == pytest.approx(normal_share)  # everything called normal


def test_plain_timm_with_preprocess_equals_predict_on_real_cells(trained_run, shared_herlev):
    import timm

    from herlev_fa import preprocess

    cells = sorted(p for p in (shared_herlev / "letterbox200").rglob("*.jpg"))[::37][:20]  # every class, both sizes
    assert len(cells) == 20 and len({Image.open(c).size for c in cells}) == 2
    model = timm.create_model(f"local-dir:{trained_run}", pretrained=True).eval()  # the five lines of predict.md
    with torch.no_grad():
        probs = model(preprocess(cells, model.pretrained_cfg)).softmax(1).numpy()  # [20, 5]
    ours = predict(trained_run, cells, PredictSettings(device="cpu", progress=False))
    np.testing.assert_allclose(probs, ours[[f"p_{c}" for c in CLASSES]].to_numpy(), atol=2e-5)
    assert list(probs.argmax(1)) == [CLASSES.index(c) for c in ours["pred"]]
    # the run folder and its config.json give the same input; an array is taken as it is
    assert torch.equal(preprocess(cells[:2], trained_run), preprocess(cells[:2], trained_run / "config.json"))
    from herlev_fa.data.images import load_image

    assert torch.equal(preprocess(load_image(cells[0]), trained_run), preprocess(cells[0], trained_run))
    with pytest.raises(Exception, match="no input_size, mean and std"):
        preprocess(cells[0], {"architecture": "x"})
