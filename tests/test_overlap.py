"""Pure functions of the explanation: letterbox geometry and its inverse, region shares, top-k fractions."""

from __future__ import annotations

import math

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from herlev_fa.data.images import letterbox
from herlev_fa.explanation.attribution import Box, content_mask, gaussian_blur, letterbox_box, unletterbox
from herlev_fa.explanation.masks import BACKGROUND, BORDER, CYTOPLASM, NUCLEUS, OTHER
from herlev_fa.explanation.overlap import (
    LOCALISATION_METRICS,
    localisation,
    localisation_batch,
    padding_share,
    padding_share_batch,
    region_shares,
    region_shares_batch,
    partners,
    top_fraction_in,
)


def _zero_padded(size: int) -> A.Compose:
    """The project's letterbox with its padding made black, so that the content box can be seen: albumentations'
    pipeline that `data.images.letterbox` equals pixel for pixel (tests/test_images.py), with constant padding."""
    return A.Compose([A.LongestMaxSize(max_size=size, interpolation=cv2.INTER_AREA),
                      A.PadIfNeeded(min_height=size, min_width=size, border_mode=cv2.BORDER_CONSTANT, fill=0)])


@pytest.mark.parametrize("size", [16, 48, 64, 200, 224])
def test_letterbox_box_matches_the_letterbox_on_many_shapes(size):
    rng = np.random.default_rng(size)
    shapes = [(1, 1), (size, size), (size, 1), (3, size * 3), (size + 1, size - 1), (2 * size, size)]
    shapes += [tuple(int(v) for v in rng.integers(1, 4 * size, 2)) for _ in range(60)]
    boxed = _zero_padded(size)
    for h, w in shapes:
        seen = boxed(image=np.full((h, w, 3), 200, np.uint8))["image"][..., 0] > 0  # [S, S]
        box = letterbox_box(h, w, size)
        assert (content_mask(box, size) == seen).all(), (h, w, box)


def test_letterbox_box_by_hand():
    assert letterbox_box(32, 16, 64) == Box(top=0, left=16, height=64, width=32)
    assert letterbox_box(128, 96, 64) == Box(top=0, left=8, height=64, width=48)
    assert letterbox_box(10, 30, 64) == Box(top=21, left=0, height=21, width=64)  # 21.33 -> 21; pad 43 = 21 + 22
    assert letterbox_box(64, 64, 64) == Box(0, 0, 64, 64)


def test_mask_follows_the_image_through_the_letterbox():
    h, w, size = 30, 50, 64
    image = np.full((h, w, 3), 230, np.uint8)
    regions = np.full((h, w), BACKGROUND, np.uint8)
    regions[10:20, 5:45] = CYTOPLASM
    regions[12:18, 20:30] = NUCLEUS
    image[regions == NUCLEUS] = 20  # the nucleus is the dark patch
    out = letterbox(size)(image=image, mask=regions)
    dark = out["image"][..., 0] < 125  # [S, S]
    nucleus = out["mask"] == NUCLEUS
    assert out["mask"].dtype == np.uint8 and set(np.unique(out["mask"])) <= {BACKGROUND, CYTOPLASM, NUCLEUS}
    iou = (dark & nucleus).sum() / (dark | nucleus).sum()
    assert iou > 0.8, iou


def test_unletterbox_is_identity_on_a_square_image_of_the_model_size():
    grid = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    assert np.array_equal(unletterbox(grid, 64, 64), grid)


def test_unletterbox_integer_shrink_is_exact_and_keeps_the_mass():
    # a 32 x 16 image is enlarged x2 to a 64 x 32 box at columns 16..48 of a 64 grid
    rng = np.random.default_rng(0)
    values = rng.normal(size=(32, 16)).astype(np.float32)  # one value per input pixel
    grid = np.full((64, 64), 1e6, np.float32)  # padding: must not leak
    grid[:, 16:48] = np.kron(values, np.ones((2, 2), np.float32))  # each input pixel -> a 2 x 2 block
    back = unletterbox(grid, 32, 16)
    assert back.shape == (32, 16) and back.dtype == np.float32
    np.testing.assert_allclose(back, 4 * values, rtol=1e-5, atol=1e-6)  # the 4 pixels' mass on one pixel
    assert back.sum() == pytest.approx(grid[:, 16:48].sum(), rel=1e-5)


def test_unletterbox_enlarging_keeps_the_mass_of_a_constant_map():
    # a 128 x 96 image is shrunk x0.5 to a 64 x 48 box at columns 8..56
    grid = np.zeros((64, 64), np.float32)
    grid[:, 8:56] = 2.0
    back = unletterbox(grid, 128, 96)
    assert back.shape == (128, 96)
    np.testing.assert_allclose(back, 0.5, rtol=1e-6)
    assert back.sum() == pytest.approx(2.0 * 64 * 48)


def test_unletterbox_rejects_a_non_square_map():
    with pytest.raises(ValueError, match="square"):
        unletterbox(np.zeros((4, 5)), 4, 5)


def test_gaussian_blur_keeps_constants_and_spreads_an_impulse_with_unit_mass():
    const = torch_full((1, 3, 20, 24), 0.7)
    np.testing.assert_allclose(gaussian_blur(const, 3.0).numpy(), 0.7, rtol=1e-5)
    impulse = torch_full((1, 1, 41, 41), 0.0)
    impulse[0, 0, 20, 20] = 1.0
    out = gaussian_blur(impulse, 2.0).numpy()[0, 0]
    assert out.sum() == pytest.approx(1.0, rel=1e-4)
    assert out[20, 20] == pytest.approx(1 / (2 * math.pi * 4.0), rel=0.02)  # peak of a 2D Gaussian, sigma 2
    np.testing.assert_allclose(out, out.T, atol=1e-7)


def torch_full(shape, value):
    import torch

    return torch.full(shape, value, dtype=torch.float32)


# A hand-made 3 x 4 case: the last pixel is padding (excluded), so 11 pixels count.
ATTR = np.array([[1.0, 2.0, -1.0, 0.0],
                 [3.0, -2.0, 4.0, 0.5],
                 [0.0, 1.0, 0.0, 6.0]])
REGIONS = np.array([[BACKGROUND, CYTOPLASM, CYTOPLASM, BACKGROUND],
                    [NUCLEUS, NUCLEUS, CYTOPLASM, BORDER],
                    [BACKGROUND, OTHER, BACKGROUND, BACKGROUND]], np.uint8)
KEEP = np.ones((3, 4), bool)
KEEP[2, 3] = False


def test_region_shares_by_hand():
    s = region_shares(ATTR, REGIONS, KEEP)
    # positive mass: background 1, cytoplasm 2 + 4, nucleus 3, border 0.5, other 1 -> 11.5
    assert s["background_pos_share"] == pytest.approx(1 / 11.5)
    assert s["cytoplasm_pos_share"] == pytest.approx(6 / 11.5)
    assert s["nucleus_pos_share"] == pytest.approx(3 / 11.5)
    assert s["border_pos_share"] == pytest.approx(0.5 / 11.5)
    assert s["other_pos_share"] == pytest.approx(1 / 11.5)
    # absolute mass: background 1, cytoplasm 7, nucleus 5, border 0.5, other 1 -> 14.5
    assert s["cytoplasm_abs_share"] == pytest.approx(7 / 14.5)
    assert s["nucleus_abs_share"] == pytest.approx(5 / 14.5)
    # area over the 11 kept pixels: background 4, cytoplasm 3, nucleus 2, border 1, other 1
    assert [s[f"{r}_area_share"] for r in ("background", "cytoplasm", "nucleus", "border", "other")] == \
        pytest.approx([4 / 11, 3 / 11, 2 / 11, 1 / 11, 1 / 11])
    assert s["nucleus_enrichment"] == pytest.approx((3 / 11.5) / (2 / 11))  # 33/23
    assert s["nucleus_abs_enrichment"] == pytest.approx((5 / 14.5) / (2 / 11))
    # top 5%: ceil(0.55) = 1 pixel, the 4 (cytoplasm); top 10%: ceil(1.1) = 2 pixels, 4 and 3 (nucleus)
    assert s["nucleus_top5"] == 0.0
    assert s["nucleus_top10"] == 0.5
    for kind in ("pos", "abs", "area"):
        assert sum(v for k, v in s.items() if k.endswith(f"_{kind}_share")) == pytest.approx(1.0)


def test_region_shares_count_the_padding_when_not_told_to_keep_it_out():
    s = region_shares(ATTR, REGIONS)
    assert s["background_pos_share"] == pytest.approx(7 / 17.5)  # the padding's 6 is background here
    assert s["nucleus_area_share"] == pytest.approx(2 / 12)


def test_region_shares_nan_where_undefined():
    negative = -np.abs(ATTR)
    s = region_shares(negative, REGIONS, KEEP)
    assert math.isnan(s["nucleus_pos_share"]) and math.isnan(s["nucleus_enrichment"])
    assert s["nucleus_abs_share"] == pytest.approx(5 / 14.5)  # |attr| is unchanged by the sign
    no_nucleus = np.where(REGIONS == NUCLEUS, CYTOPLASM, REGIONS).astype(np.uint8)
    s = region_shares(ATTR, no_nucleus, KEEP)
    assert s["nucleus_area_share"] == 0.0 and math.isnan(s["nucleus_enrichment"]) and s["nucleus_top10"] == 0.0
    s = region_shares(np.zeros((3, 4)), REGIONS, KEEP)
    assert math.isnan(s["nucleus_abs_share"])


def test_region_shares_refuses_bad_inputs():
    with pytest.raises(ValueError, match="same"):
        region_shares(ATTR, REGIONS[:2])
    with pytest.raises(ValueError, match="no pixel"):
        region_shares(ATTR, REGIONS, np.zeros((3, 4), bool))
    with pytest.raises(ValueError, match="region codes"):
        region_shares(ATTR, np.full((3, 4), 7, np.uint8))


def test_enrichment_is_one_over_area_when_only_the_nucleus_is_attributed():
    regions = np.full((20, 20), BACKGROUND, np.uint8)
    regions[5:15, 5:15] = CYTOPLASM
    regions[8:12, 8:12] = NUCLEUS  # 16 of 400 px
    attr = np.where(regions == NUCLEUS, 0.25, 0.0)
    s = region_shares(attr, regions)
    assert s["nucleus_pos_share"] == 1.0
    assert s["nucleus_enrichment"] == pytest.approx(400 / 16)
    assert s["nucleus_top5"] == pytest.approx(16 / 20)  # 20 pixels: the 16 nucleus ones, then 4 zeros
    assert s["nucleus_top10"] == pytest.approx(16 / 40)


def test_top_fraction_ranks_by_signed_value_with_stable_ties():
    values = np.array([5.0, -9.0, 5.0, 1.0, 0.0])
    inside = np.array([False, True, True, True, False])
    assert top_fraction_in(values, inside, 0.2) == 0.0  # k = 1: the first 5
    assert top_fraction_in(values, inside, 0.4) == 0.5  # both 5s
    assert top_fraction_in(values, inside, 0.6) == pytest.approx(2 / 3)  # 5, 5, 1
    assert top_fraction_in(values, inside, 1.0) == pytest.approx(3 / 5)
    with pytest.raises(ValueError):
        top_fraction_in(values, inside, 0.0)


def test_padding_share_by_hand():
    assert padding_share(ATTR, KEEP) == pytest.approx(6 / 20.5)
    assert math.isnan(padding_share(np.zeros((3, 4)), KEEP))


def _random_batch(rng: np.random.Generator, b: int, size: int):
    """Attribution maps with many ties (a few levels), random regions, letterbox-like keep boxes, edge cases."""
    attr = rng.integers(-3, 4, (b, size, size)).astype(np.float32) * 0.5  # [B, S, S], ties everywhere
    regions = rng.integers(0, 5, (b, size, size)).astype(np.uint8)
    keep = np.zeros((b, size, size), bool)
    for i in range(b):
        top, left = rng.integers(0, size // 3, 2)
        keep[i, top:size - rng.integers(0, size // 3), left:size - rng.integers(0, size // 3)] = True
    attr[0] = -np.abs(attr[0])  # no positive attribution: NaN positive shares
    regions[1][regions[1] == NUCLEUS] = CYTOPLASM  # no nucleus: NaN enrichment, top-k 0
    attr[2] = 0.0  # nothing attributed at all
    keep[3] = True  # a square image: no padding
    return attr, regions, keep


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_region_shares_equal_the_per_image_ones(dtype, device):
    rng = np.random.default_rng(3)
    attr, regions, keep = _random_batch(rng, 6, 23)
    got = region_shares_batch(torch.as_tensor(attr, dtype=dtype, device=device),
                              torch.as_tensor(regions, device=device), torch.as_tensor(keep, device=device))
    for i in range(len(attr)):
        want = region_shares(attr[i], regions[i], keep[i])
        assert set(got) == set(want)
        for key, value in want.items():
            batched = float(got[key][i])
            assert ((math.isnan(value) and math.isnan(batched))
                    or batched == pytest.approx(value, rel=1e-12, abs=1e-15)), (i, key, batched, value)
    padding = padding_share_batch(torch.as_tensor(attr, dtype=dtype, device=device),
                                  torch.as_tensor(keep, device=device))
    want = [padding_share(a, k) for a, k in zip(attr, keep)]
    np.testing.assert_allclose(padding.cpu().numpy(), want, rtol=1e-12)  # NaN for the all-zero map, 0 without padding
    assert math.isnan(want[2]) and want[3] == 0.0
    assert math.isnan(float(got["nucleus_pos_share"][0])) and math.isnan(float(got["nucleus_enrichment"][1]))
    assert float(got["nucleus_top10"][1]) == 0.0 and math.isnan(float(got["nucleus_abs_share"][2]))
    without_top = region_shares_batch(torch.as_tensor(attr, dtype=dtype, device=device),
                                      torch.as_tensor(regions, device=device), torch.as_tensor(keep, device=device),
                                      top=False)
    assert set(without_top) == set(got) - {"nucleus_top5", "nucleus_top10"}
    for key, value in without_top.items():
        torch.testing.assert_close(value, got[key], equal_nan=True, rtol=0, atol=0)


def test_batched_region_shares_by_hand_and_bad_inputs():
    got = region_shares_batch(torch.as_tensor(ATTR)[None], torch.as_tensor(REGIONS)[None], torch.as_tensor(KEEP)[None])
    assert float(got["nucleus_enrichment"][0]) == pytest.approx(33 / 23)
    assert float(got["nucleus_top5"][0]) == 0.0 and float(got["nucleus_top10"][0]) == 0.5
    with pytest.raises(ValueError, match="same"):
        region_shares_batch(torch.zeros(2, 3, 4), torch.zeros(2, 3, 3, dtype=torch.uint8),
                            torch.ones(2, 3, 4, dtype=bool))
    with pytest.raises(ValueError, match="no pixel"):
        region_shares_batch(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4, dtype=torch.uint8),
                            torch.tensor(KEEP)[None].expand(2, 3, 4) & torch.tensor([True, False])[:, None, None])


# ---------------------------------------------------------------------------------------------
# Localisation metrics against the nucleus mask


def test_localisation_metrics_by_hand():
    attr = np.array([[3.0, -1.0, 0.0],
                     [1.0, 2.0, -2.0]])  # [2, 3]
    inside = np.array([[False, True, False],
                       [True, True, False]])  # K = 3 mask pixels
    got = localisation(attr, inside)
    assert got["pointing_game"] == 0.0  # the maximum, 3, is outside
    # min-max normalised: (a + 2) / 5 = [[1, .2, .4], [.6, .8, 0]], sum 3.0; inside .2 + .6 + .8 = 1.6
    assert got["energy_pointing_game"] == pytest.approx(1.6 / 3.0)
    assert got["relevance_mass_accuracy"] == pytest.approx(3 / 6)  # positive mass 3 + 1 + 2, inside 1 + 2
    assert got["relevance_rank_accuracy"] == pytest.approx(2 / 3)  # top 3: 3 (out), 2 (in), 1 (in)
    keep = np.array([[False, True, True], [True, True, True]])  # the 3 left out: the maximum is now 2, inside
    kept = localisation(attr, inside, keep)
    assert kept["pointing_game"] == 1.0 and kept["relevance_mass_accuracy"] == pytest.approx(1.0)
    assert kept["relevance_rank_accuracy"] == pytest.approx(2 / 3)  # top 3 of the kept: 2 (in), 1 (in), 0 (out)
    # ties: the first pixel in row-major order wins, as in the stable sort
    flat = localisation(np.array([[1.0, 1.0], [1.0, 0.0]]), np.array([[False, True], [True, False]]))
    assert flat["pointing_game"] == 0.0 and flat["relevance_rank_accuracy"] == pytest.approx(0.5)
    constant = localisation(np.zeros((2, 2)), np.array([[True, False], [False, False]]))
    assert math.isnan(constant["energy_pointing_game"]) and math.isnan(constant["relevance_mass_accuracy"])
    assert all(math.isnan(v) for v in localisation(attr, np.zeros_like(inside)).values())  # no mask pixel
    assert set(got) == set(LOCALISATION_METRICS)


def test_a_map_exactly_on_the_mask_scores_one_everywhere_and_its_complement_zero():
    rng = np.random.default_rng(0)
    inside = rng.random((9, 11)) < 0.3
    on = np.where(inside, 1 + rng.random(inside.shape), -1.0)  # outside at the minimum: no energy after min-max
    assert localisation(on, inside) == pytest.approx(dict.fromkeys(LOCALISATION_METRICS, 1.0))
    off = localisation(-on, inside)
    assert off["pointing_game"] == 0 and off["relevance_rank_accuracy"] == 0 and off["relevance_mass_accuracy"] == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_localisation_equals_the_per_image_one(dtype, device):
    rng = np.random.default_rng(5)
    attr, regions, keep = _random_batch(rng, 6, 23)
    attr[4] = np.round(attr[4])  # many ties
    inside = regions == NUCLEUS
    inside[5] = False  # no nucleus
    got = localisation_batch(torch.as_tensor(attr, dtype=dtype, device=device), torch.as_tensor(inside, device=device),
                             torch.as_tensor(keep, device=device))
    for i in range(len(attr)):
        want = localisation(attr[i].astype(np.float32 if dtype == torch.float32 else np.float64), inside[i], keep[i])
        for key, value in want.items():
            batched = float(got[key][i])
            assert ((math.isnan(value) and math.isnan(batched))
                    or batched == pytest.approx(value, rel=1e-9, abs=1e-12)), (i, key, batched, value)
    assert all(math.isnan(float(v[5])) for v in got.values())


def test_partners_are_a_seeded_derangement_within_each_group():
    groups = np.array(["a", "b", "a", "a", "c", "b", "a"])
    got = partners(groups, seed=1)
    assert got[4] == -1  # alone in its group
    for i, j in enumerate(got):
        if j >= 0:
            assert j != i and groups[j] == groups[i]
    assert sorted(got[groups == "a"]) == sorted(np.flatnonzero(groups == "a"))  # each drawn once
    assert list(got[[1, 5]]) == [5, 1]
    np.testing.assert_array_equal(partners(groups, seed=1), got)
    assert any((partners(groups, seed=s) != got).any() for s in range(2, 6))


# ---------------------------------------------------------------------------------------------
# Comparing explanations on the same cells (explanation.study)


def test_paired_comparison_by_hand():
    from herlev_fa.explanation.study import paired_comparison

    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, np.nan])
    b = a + np.array([0.5, 0.1, 0.3, 0.6, 0.2, 0.4, 1.0])  # six distinct positive differences, one NaN pair
    r = paired_comparison(a, b)
    assert r["n"] == 6 and r["b_greater"] == 1.0
    assert r["mean_diff"] == pytest.approx(0.35) and r["median_diff"] == pytest.approx(0.35)
    assert r["p"] == pytest.approx(2 / 2 ** 6)  # exact: only one of the 2^6 sign patterns is this extreme, twice
    flipped = paired_comparison(b, a)
    assert flipped["p"] == pytest.approx(r["p"]) and flipped["b_greater"] == 0.0 and flipped["mean_diff"] < 0
    same = paired_comparison(a, a)
    assert same["n"] == 6 and same["median_diff"] == 0.0 and math.isnan(same["p"])
    assert paired_comparison([np.nan], [1.0])["n"] == 0.0
    with pytest.raises(ValueError, match="paired"):
        paired_comparison([1.0, 2.0], [1.0])


def test_severity_trend_and_compare_runs():
    import pandas as pd

    from herlev_fa.explanation.study import compare_runs, severity_trend

    assert severity_trend([1, 2, 3, 4, np.nan], [0, 1, 2, 3, 4])["rho"] == pytest.approx(1.0)
    assert severity_trend([4, 3, 2, 1], [0, 1, 2, 3])["rho"] == pytest.approx(-1.0)
    assert math.isnan(severity_trend([1, 2, 3], [2, 2, 2])["rho"])
    ref = pd.DataFrame({"path": ["a", "b", "c", "d"], "x": [1.0, 2.0, 3.0, 4.0]})
    other = pd.DataFrame({"path": ["d", "c", "b", "e"], "x": [5.0, 4.0, 3.0, 9.0]})  # other order, one extra cell
    table = compare_runs({"ref": ref, "other": other}, "ref", ["x"])
    row = table.iloc[0]
    assert (row["name"], row["metric"], row["n"]) == ("other", "x", 3.0)
    assert row["mean_diff"] == pytest.approx(1.0) and row["b_greater"] == 1.0


def test_rank_biserial_and_effect_intervals_by_hand():
    from herlev_fa.explanation.study import effect_intervals, paired_comparison, rank_biserial

    assert rank_biserial(np.array([1.0, 2.0, 3.0])) == pytest.approx(1.0)  # every pair b > a
    assert rank_biserial(np.array([-1.0, -2.0, 0.0])) == pytest.approx(-1.0)  # the zero is left out, as by the test
    # |d| ranks 1, 2, 3 for 0.1, -0.2, 0.3: W+ = 1 + 3, W- = 2 -> (4 - 2) / 6
    assert rank_biserial(np.array([0.1, -0.2, 0.3, 0.0])) == pytest.approx(2 / 6)
    assert np.isnan(rank_biserial(np.zeros(4)))
    batch = rank_biserial(np.array([[1.0, 2.0], [-1.0, 0.0]]))  # bootstrap resamples at once
    assert batch.tolist() == [1.0, -1.0]
    rng = np.random.default_rng(0)
    tiny = rng.normal(0.004, 0.001, 400)  # a tiny but consistent shift: p is minute, the effect is not
    result = paired_comparison(np.zeros(400), tiny)
    assert result["p"] < 1e-10 and result["r"] > 0.9
    assert result["median_diff_low"] <= result["median_diff"] <= result["median_diff_high"] < 0.005
    noise = paired_comparison(np.zeros(400), rng.normal(0, 1, 400))
    assert noise["r_low"] < noise["r"] < noise["r_high"] and noise["r_low"] < 0 < noise["r_high"]
    assert effect_intervals(np.array([1.0]))["r_low"] != effect_intervals(np.array([1.0]))["r_low"]  # NaN


def test_severity_trend_interval_contains_rho_and_narrows_with_n():
    from herlev_fa.explanation.study import severity_trend

    rng = np.random.default_rng(1)
    sev = rng.integers(0, 5, 400).astype(float)
    values = sev + rng.normal(0, 3, 400)
    big, small = severity_trend(values, sev), severity_trend(values[:40], sev[:40])
    assert big["rho_low"] < big["rho"] < big["rho_high"]
    assert big["rho_high"] - big["rho_low"] < small["rho_high"] - small["rho_low"]
    # Fisher z with se 1.06 / sqrt(n - 3)
    assert np.tanh(np.arctanh(big["rho"]) + 1.959964 * 1.06 / np.sqrt(397)) == pytest.approx(big["rho_high"])


def test_compare_quantify_warns_about_fold_models_that_learned_nothing(tmp_path):
    import json

    from herlev_fa.explanation.study import _warn_learned_nothing

    folds = []
    for name, cm, kappa in (("fold0", [[3, 0], [0, 3]], 1.0), ("fold1", [[3, 0], [3, 0]], 0.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps({"confusion_matrix": cm, "kappa": kappa,
                                                                  "auc": 0.5 + kappa / 2}))
        folds.append(tmp_path / name)
    with pytest.warns(UserWarning) as caught:
        _warn_learned_nothing(["cls"], [folds], ("normal", "abnormal"))
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and messages[0].startswith("cls (fold1): the model predicts 'normal' for every cell")
