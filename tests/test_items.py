"""The folder reader (layout, masks, aliases, nesting, class maps) and the fold split."""

import numpy as np
import pytest

from helpers import herlev_folder, write_image, write_mask
from herlev_fa.data.items import assign_folds, mask_for, scan
from herlev_fa.errors import HerlevError
from herlev_fa.labels import get_task, load_class_map


def test_scan_pairs_masks_and_never_lists_them_as_images(tmp_path):
    root = herlev_folder(tmp_path / "h", per_class=3)
    write_image(root / "light_dysplastic" / "extra.png")  # an image without a mask
    write_mask(root / "light_dysplastic" / "orphan-d.png")  # a mask without an image: still not an image
    items = scan(root, get_task("severity"))
    assert len(items) == 7 * 3 + 1
    assert not items["path"].str.lower().str.endswith(("-d.bmp", "-d.png")).any()
    with_mask = items[items["mask"] != ""]
    assert len(with_mask) == 21
    for path, mask in zip(with_mask["path"], with_mask["mask"]):
        assert mask.endswith("-d.bmp") and mask[: -len("-d.bmp")] == path[: -len(".BMP")]
    assert items.loc[items["path"].str.endswith("extra.png"), "mask"].item() == ""


def test_scan_labels_merge_normals_and_follow_severity_order(tmp_path):
    items = scan(herlev_folder(tmp_path / "h", per_class=2), get_task("severity"))
    counts = items["label"].value_counts()
    assert counts["normal"] == 6 and counts["carcinoma_in_situ"] == 2
    assert set(zip(items["label"], items["y"])) == {("normal", 0), ("light_dysplastic", 1), ("moderate_dysplastic", 2),
                                                     ("severe_dysplastic", 3), ("carcinoma_in_situ", 4)}
    assert items.loc[items["label"] == "severe_dysplastic", "severity"].unique().tolist() == [3.0]


def test_scan_finds_class_folders_two_levels_down_with_odd_case(tmp_path):
    root = tmp_path / "smear2005" / "New database pictures"
    herlev_folder(root, folders={"NORMAL_SUPERFICIEL": 2, "Carcinoma_In_Situ": 2})
    (tmp_path / "smear2005" / "docs").mkdir()
    items = scan(tmp_path, get_task("herlev7"))
    assert sorted(items["label"].unique()) == ["carcinoma_in_situ", "normal_superficial"]
    assert items["rel"].iloc[0].startswith("smear2005/New database pictures/")


def test_scan_errors(tmp_path):
    with pytest.raises(HerlevError, match="does not exist"):
        scan(tmp_path / "missing", get_task("severity"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(HerlevError, match="no class folder found"):
        scan(tmp_path / "empty", get_task("severity"))
    root = herlev_folder(tmp_path / "h", folders={"light_dysplastic": 2, "koilocytes": 2})
    with pytest.raises(HerlevError, match="'.*koilocytes' is not a known class.*--classes"):
        scan(root, get_task("severity"))


def test_scan_with_class_map_reads_another_dataset(tmp_path):
    root = herlev_folder(tmp_path / "sip", folders={"im_Superficial-Intermediate": 3, "im_Koilocytotic": 4})
    (tmp_path / "map.yaml").write_text("im_Superficial-Intermediate: {class: normal, severity: 0}\n"
                                       "im_Koilocytotic: {class: abnormal, severity: 1}\n")
    items = scan(root, load_class_map(tmp_path / "map.yaml"))
    assert items.groupby("label")["y"].agg(["first", "count"]).to_dict() == {
        "first": {"abnormal": 1, "normal": 0}, "count": {"abnormal": 4, "normal": 3}}


def test_mask_for_any_case_and_png(tmp_path):
    img = write_image(tmp_path / "a.JPG")
    assert mask_for(img) is None
    write_mask(tmp_path / "a-D.PNG")
    assert mask_for(img).name == "a-D.PNG"


def test_folds_are_stratified_and_reproducible(tmp_path):
    items = scan(herlev_folder(tmp_path / "h", folders={"normal_columnar": 12, "light_dysplastic": 8,
                                                      "carcinoma_in_situ": 4}), get_task("severity"))
    folds = assign_folds(items, 4, seed=7)
    assert folds.shape == (24,) and set(folds) == {0, 1, 2, 3}
    for k in range(4):  # each fold holds 3 normal, 2 light, 1 CIS
        fold = items[folds == k]["label"].value_counts().to_dict()
        assert fold == {"normal": 3, "light_dysplastic": 2, "carcinoma_in_situ": 1}
    assert np.array_equal(folds, assign_folds(items, 4, seed=7))
    assert not np.array_equal(folds, assign_folds(items, 4, seed=8))


def test_folds_need_enough_images_per_class(tmp_path):
    items = scan(herlev_folder(tmp_path / "h", folders={"normal_columnar": 6, "light_dysplastic": 2}),
                 get_task("severity"))
    with pytest.raises(HerlevError, match="'light_dysplastic' has only 2 image.*--folds 2"):
        assign_folds(items, 4, seed=0)
