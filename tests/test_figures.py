"""Every figure of `herlev_fa.figures`: decoded, sized, not blank; and no figure or evaluation changes the backend."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from helpers import drawn_png
from herlev_fa import figures

CLASSES = ("normal", "light_dysplastic", "moderate_dysplastic", "severe_dysplastic", "carcinoma_in_situ")
SEV = (0.0, 1.0, 2.0, 3.0, 4.0)
TAB_BLUE, TAB_ORANGE = (31, 119, 180), (255, 127, 14)
PALE_RED = (240, 179, 180)  # tab:red at alpha 0.35 on white: the boxes of the nucleus attribution share
DARK_BLUE = (8, 48, 107)  # the top of matplotlib's Blues: a row-normalised share of 1


def test_confusion_matrix_and_score_distribution(tmp_path):
    cm = np.diag([10, 8, 6, 4, 2])
    figures.confusion_matrix_png(cm, CLASSES, tmp_path / "cm.png", title="cm")
    drawn_png(tmp_path / "cm.png", (500, 1000), (450, 900), colours=[DARK_BLUE])
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(5), 20)
    figures.score_distribution_png(y + rng.normal(0, 0.3, 100), y, CLASSES, SEV, tmp_path / "sd.png")
    drawn_png(tmp_path / "sd.png", (600, 1100), (400, 600))


def test_training_curves_and_lr_find(tmp_path):
    log = pd.DataFrame({"epoch": [0, 1, 2], "train_loss": [2.0, 1.5, 1.2], "valid_loss": [2.1, 1.7, 1.6],
                        "accuracy": [0.3, 0.5, 0.6], "binary_accuracy": [0.6, 0.8, 0.85]})
    figures.training_curves_png(log, tmp_path / "tc.png")
    drawn_png(tmp_path / "tc.png", (900, 1200), (350, 500), colours=[TAB_BLUE, TAB_ORANGE])
    lrs = np.logspace(-6, 0, 50)
    figures.lr_find_png(lrs, 2 - np.exp(-((np.log10(lrs) + 3) ** 2)), 1e-3, tmp_path / "lr.png")
    drawn_png(tmp_path / "lr.png", (450, 700), (350, 500), colours=[TAB_BLUE])


def test_explanation_figure(tmp_path):
    yy, xx = np.mgrid[0:60, 0:80]
    image = np.stack([(xx * 3) % 256, (yy * 4) % 256, np.full_like(xx, 128)], axis=2).astype(np.uint8)  # [60, 80, 3]
    attribution = np.sin(xx / 9.0) * np.cos(yy / 7.0)  # [60, 80], both signs
    result = SimpleNamespace(name="cell", image=image, attribution=attribution, target="score", predicted="normal",
                             score=0.4, probs={c: 0.2 for c in CLASSES}, delta=0.01, relative_delta=0.02, method="ig")
    figures.explanation_png(result, tmp_path / "ig.png", settings="baseline mean, 16 midpoint steps")
    rgb = drawn_png(tmp_path / "ig.png", (900, 1300), (350, 600))
    red = (rgb[..., 0] > 150) & (rgb[..., 2] < 80)
    blue = (rgb[..., 2] > 150) & (rgb[..., 0] < 80)
    assert red.sum() > 500 and blue.sum() > 500  # RdBu_r: attribution for (red) and against (blue)


def test_a_large_cell_is_drawn_as_the_same_figure_from_fewer_pixels(tmp_path):
    """A 3000 x 4000 cell is drawn from its box-averaged copy (fast): the figure is that of the same cell at 60 x 80."""
    yy, xx = np.mgrid[0:60, 0:80]
    image = np.stack([(xx * 3) % 256, (yy * 4) % 256, np.full_like(xx, 128)], axis=2).astype(np.uint8)
    attribution = np.sin(xx / 9.0) * np.cos(yy / 7.0)
    figs = []
    for k in (1, 50):  # each pixel a k x k block
        result = SimpleNamespace(name="cell", image=image.repeat(k, 0).repeat(k, 1),
                                 attribution=attribution.repeat(k, 0).repeat(k, 1), target="score",
                                 predicted="normal", score=0.4, probs=None, delta=0.01, relative_delta=0.02,
                                 method="ig")
        figs.append(drawn_png(figures.explanation_png(result, tmp_path / f"ig{k}.png", settings="s"),
                              (900, 1300), (350, 600)).astype(int))
    small, large = figs
    assert small.shape == large.shape
    assert np.abs(small - large).mean() < 3  # the same drawing, up to the resampling of the edges
    shown, shown_attr = figures._for_display(image.repeat(50, 0).repeat(50, 1), attribution.repeat(50, 0).repeat(50, 1))
    assert shown.shape == (450, 600, 3) and shown_attr.shape == (450, 600)
    assert shown_attr.mean() == pytest.approx(attribution.mean(), abs=1e-3)  # box average: the map's mass is kept


def test_nucleus_attribution_figure(tmp_path):
    rng = np.random.default_rng(1)
    table = pd.DataFrame({"label": np.repeat(["normal", "severe_dysplastic"], 10),
                          "nucleus_pos_share": rng.uniform(0.2, 0.6, 20),
                          "nucleus_area_share": rng.uniform(0.05, 0.3, 20)})
    table["nucleus_enrichment"] = table["nucleus_pos_share"] / table["nucleus_area_share"]
    figures.nucleus_attribution_png(table, CLASSES, tmp_path / "q.png", title="quantify")
    drawn_png(tmp_path / "q.png", (800, 1100), (400, 650), colours=[PALE_RED])


def test_nucleus_study_has_a_box_per_run_and_class_spanning_its_quartiles(tmp_path):
    rng = np.random.default_rng(2)
    labels = np.repeat(["normal", "light_dysplastic", "carcinoma_in_situ"], 12)  # [36]

    def table(shift: float) -> pd.DataFrame:
        t = pd.DataFrame({"label": labels, "nucleus_pos_share": rng.uniform(0.1, 0.5, 36) + shift,
                          "nucleus_area_share": rng.uniform(0.05, 0.3, 36),
                          "nucleus_change_enrichment": rng.uniform(0.5, 1.5, 36)})
        t["nucleus_enrichment"] = t["nucleus_pos_share"] / t["nucleus_area_share"]
        return t

    tables = {"cls": table(0.0), "cls_reg": table(0.3)}
    fig = figures.nucleus_study(tables, CLASSES, title="study")
    left, right = fig.axes
    groups = ["normal", "light_dysplastic", "carcinoma_in_situ", "all"]  # classes present, in task order, then all
    series = [(t, "nucleus_pos_share") for t in tables.values()] + [(tables["cls"], "nucleus_area_share")]
    assert len(left.patches) == len(series) * len(groups)
    for k, (t, metric) in enumerate(series):
        for g, name in enumerate(groups):
            values = t[metric] if name == "all" else t.loc[t["label"] == name, metric]
            box = left.patches[k * len(groups) + g].get_path().vertices[:, 1]
            np.testing.assert_allclose([box.min(), box.max()], np.percentile(values, [25, 75]), rtol=1e-9)
    assert [x.get_text() for x in left.get_xticklabels()] == ["normal", "light", "CIS", "all"]
    assert [x.get_text() for x in left.get_legend().get_texts()] == ["cls", "cls_reg", "nucleus share of area"]
    assert right.get_yscale() == "log" and len(right.patches) == len(series) * len(groups)
    figures.nucleus_study_png(tables, CLASSES, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 10_000


def test_comparison_figure_has_one_panel_per_metric(tmp_path):
    mean = np.array([[0.7, 0.9, 0.5], [0.6, 0.88, 0.7]])  # [H=2, M=3]
    paper = np.array([[0.676, np.nan, np.nan], [0.582, 0.893, 0.71]])
    figures.comparison_png(["Cls", "Reg"], ["accuracy (%)", "AUC-ROC", "MSE"], mean, np.full_like(mean, 0.02), paper,
                           tmp_path / "c3.png", scales=[100, 1, 1], capped=[True, True, False])
    figures.comparison_png(["Cls", "Reg"], ["accuracy (%)"], mean[:, :1], mean[:, :1] * 0, paper[:, :1],
                           tmp_path / "c1.png", scales=[100])
    three = drawn_png(tmp_path / "c3.png", (1000, 1300), (380, 500), colours=[TAB_BLUE, TAB_ORANGE])
    one = drawn_png(tmp_path / "c1.png", (500, 750), (380, 500), colours=[TAB_BLUE, TAB_ORANGE])
    assert _bars(three) == 2 * 3 and _bars(one) == 2  # one blue bar per head in each metric's panel


def _bars(rgb: np.ndarray) -> int:
    """Blue bars crossing a band just above the baseline (below the legend): runs of columns holding tab:blue."""
    h = rgb.shape[0]
    band = rgb[int(0.8 * h):int(0.86 * h)].astype(int)
    blue = (np.abs(band - TAB_BLUE).max(axis=2) <= 2).any(axis=0)  # [W]
    return int(np.count_nonzero(blue[1:] & ~blue[:-1]) + blue[0])


PROBE = r"""
import sys
import matplotlib
matplotlib.use("svg")  # a notebook's or script's own choice, made before importing the package
import numpy as np
import herlev_fa
from herlev_fa import figures
herlev_fa.evaluate(sys.argv[1], herlev_fa.EvalSettings(out=sys.argv[2], device="cpu", progress=False, n_boot=0))
figures.lr_find_png([1e-4, 1e-3, 1e-2], [1.0, 0.5, 2.0], 1e-3, sys.argv[2] + "/lr.png")
import herlev_fa.explanation.report, herlev_fa.reproduction, herlev_fa.training.loop
open_figures = sys.modules["matplotlib.pyplot"].get_fignums() if "matplotlib.pyplot" in sys.modules else []
print(matplotlib.get_backend(), len(open_figures))
"""


def test_evaluating_and_drawing_leave_the_backend_and_pyplot_alone(trained_run, tmp_path):
    out = subprocess.run([sys.executable, "-c", PROBE, str(trained_run), str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["svg", "0"]  # the backend it chose, and no figure left open in pyplot
    drawn_png(tmp_path / "confusion_matrix.png", (300, 1000), (300, 900))
    drawn_png(tmp_path / "lr.png", (300, 900), (300, 600))


# --- fit for a paper: decoded, sized, nothing cut off at the edges -------------------------------------------------

from helpers import text_inside  # noqa: E402


def test_run_figures_keep_every_label_inside_the_canvas(tmp_path):
    rng = np.random.default_rng(0)
    cm = np.array([[50, 3, 1, 0, 0], [4, 20, 5, 1, 0], [1, 5, 18, 6, 1], [0, 1, 6, 30, 5], [0, 0, 1, 5, 40]])
    figures.confusion_matrix_png(cm, CLASSES, tmp_path / "cm.png", title="cls_reg: accuracy 0.700, n=203")
    rgb = drawn_png(tmp_path / "cm.png", (600, 1000), (550, 900), colours=[DARK_BLUE])
    text_inside(rgb)
    y = np.repeat(np.arange(5), 20)
    figures.score_distribution_png(y + rng.normal(0, 0.3, 100), y, CLASSES, SEV, tmp_path / "sd.png")
    text_inside(drawn_png(tmp_path / "sd.png", (600, 1100), (420, 650)))
    log = pd.DataFrame({"epoch": range(5), "fold": 2, "train_loss": np.linspace(2, 1, 5),
                        "valid_loss": np.linspace(2, 1.2, 5), "accuracy": np.linspace(.3, .6, 5),
                        "binary_accuracy": np.linspace(.6, .85, 5)})
    figures.training_curves_png(log, tmp_path / "tc.png")
    text_inside(drawn_png(tmp_path / "tc.png", (900, 1300), (400, 550), colours=[TAB_BLUE, TAB_ORANGE]))
    probs = rng.dirichlet(np.ones(5) * 0.5, 150)
    probs[0] = [0.02, 0.02, 0.02, 0.02, 0.92]  # a lone very confident cell: a bin of one
    figures.reliability_png(probs, probs.argmax(1), 0.05, tmp_path / "rel.png")
    text_inside(drawn_png(tmp_path / "rel.png", (450, 700), (500, 750), colours=[TAB_BLUE]))
    table = pd.DataFrame({"label": rng.choice(CLASSES, 60), "nucleus_pos_share": rng.uniform(0, 1, 60),
                          "nucleus_area_share": rng.uniform(0, .5, 60), "nucleus_enrichment": rng.uniform(.5, 4, 60)})
    figures.nucleus_attribution_png(table, CLASSES, tmp_path / "q.png", title="run: 50 steps")
    text_inside(drawn_png(tmp_path / "q.png", (1100, 1500), (450, 650), colours=[PALE_RED]))


def test_confusion_matrix_counts_are_written_in_the_colour_that_reads_on_their_cell(tmp_path, monkeypatch):
    from matplotlib.colors import to_rgb

    drawn = []
    monkeypatch.setattr(figures, "save_png", lambda fig, path, dpi=120: drawn.append(fig) or path)
    figures.confusion_matrix_png(np.array([[50, 0], [5, 5]]), ("normal", "abnormal"), tmp_path / "cm.png")
    texts = {t.get_text(): to_rgb(t.get_color()) for t in drawn[0].axes[0].texts}
    assert texts["n=50"] == texts["1.00"] and sum(texts["n=50"]) > 2.8  # near white on the darkest cell
    assert texts["n=0"] == texts["0.00"] and sum(texts["n=0"]) < 1.0  # dark on the palest
    assert drawn[0].axes[0].get_xlabel() == "predicted class" and drawn[0].axes[0].get_ylabel() == "true class"


def test_reliability_curve_leaves_out_tiny_bins_and_labels_every_bin_with_its_count(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    drawn = []
    monkeypatch.setattr(figures, "save_png", lambda fig, path, dpi=120: drawn.append(fig) or path)
    confidence = np.r_[np.full(20, 0.55), np.full(10, 0.75), 0.95]  # 20 and 10 cells, then one cell alone
    probs = np.c_[confidence, 1 - confidence]
    y = np.r_[np.zeros(11), np.ones(9), np.zeros(7), np.ones(3), 1]  # the lone cell is wrong: accuracy 0
    figures.reliability_png(probs, y.astype(int), 0.1, tmp_path / "rel.png")
    top = drawn[0].axes[0]
    assert isinstance(drawn[0], Figure)
    model = next(line for line in top.lines if line.get_label().startswith("model"))
    np.testing.assert_allclose(model.get_xdata(), [0.55, 0.75])  # the one-cell bin does not drag the curve
    tiny = next(line for line in top.lines if line.get_label().startswith("bins of <"))
    np.testing.assert_allclose(np.c_[tiny.get_xdata(), tiny.get_ydata()], [[0.95, 0.0]])
    assert sorted(t.get_text() for t in top.texts if t.get_text().isdigit()) == ["1", "10", "20"]


def test_figure7_is_large_enough_for_print_with_whole_ids_a_colour_bar_and_an_uncut_title(tmp_path):
    from helpers import text_inside

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (200, 200, 3), dtype=np.uint8) for _ in range(3)]
    nuclei = [np.zeros((200, 200), bool) for _ in images]
    for n in nuclei:
        n[80:120, 80:120] = True
    maps = [[rng.normal(size=(200, 200)).astype(np.float32) for _ in range(2)] for _ in images]
    ids = [f"CIS\n153958345-153958392-00{i}" for i in range(3)]
    title = ("Integrated Gradients, 50 steps of the Gauss-Legendre rule from the mean-image baseline, gradients in "
             "fp32; gold: nucleus (mask)")
    figures.explanation_grid_png(tmp_path / "f7.png", images, nuclei, maps, ids, ["cls/fold0", "cls_reg/fold0"],
                                 notes=[["CIS, s=3.8, nuc 61%", "CIS, s=3.9, nuc 72%"]] * 3, title=title)
    rgb = drawn_png(tmp_path / "f7.png", (1300, 1600), (1250, 1600))  # 2 runs: was 510 x 900 px at 100 dpi
    text_inside(rgb)
    fig = figures.explanation_grid(images, nuclei, maps, ids, ["cls/fold0", "cls_reg/fold0"], title=title)
    labels = [ax.get_ylabel() for ax in fig.axes[:9:3]]
    assert labels == ids  # the whole cell ids, not cut to 18 characters
    assert "IG / 99.5th pct." in fig.axes[-1].get_ylabel()  # the colour bar says what the colours are
