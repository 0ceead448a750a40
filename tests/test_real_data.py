"""The loader and a training run on the real Herlev cells in ../shared/data/herlev."""

import json

import pytest
from typer.testing import CliRunner

from herlev_cli.main import app
from herlev_fa.data.items import scan
from herlev_fa.labels import get_task

# from ../shared/data/herlev/README.md, "Classes and counts"
COUNTS = {"normal_superficial": 59, "normal_intermediate": 56, "normal_columnar": 78, "light_dysplastic": 146,
          "moderate_dysplastic": 117, "severe_dysplastic": 158, "carcinoma_in_situ": 120}


@pytest.mark.parametrize("subset,image_ext,mask_ext", [("letterbox200", ".jpg", "-d.png"),
                                                       ("cells40", ".BMP", "-d.bmp")])
def test_real_folders_read_with_counts_and_masks(shared_herlev, subset, image_ext, mask_ext):
    items = scan(shared_herlev / subset, get_task("herlev7"))
    assert items["label"].value_counts().to_dict() == COUNTS
    assert len(items) == 734
    assert items["path"].str.endswith(image_ext).all()
    assert (items["mask"] != "").all(), "every real image has its mask"
    assert items["mask"].str.endswith(mask_ext).all()
    assert (items["mask"].str[: -len(mask_ext)] == items["path"].str[: -len(image_ext)]).all()
    # the archive's own spelling of the superficial folder is read through the alias
    assert set(items.loc[items["label"] == "normal_superficial", "folder"]) == {"normal_superficiel"}


def test_real_severity_task_merges_normals(shared_herlev):
    items = scan(shared_herlev / "letterbox200", get_task("severity"))
    assert items["label"].value_counts()["normal"] == 59 + 56 + 78
    assert items.groupby("label")["severity"].first().to_dict() == {
        "normal": 0, "light_dysplastic": 1, "moderate_dysplastic": 2, "severe_dysplastic": 3, "carcinoma_in_situ": 4}


def test_train_on_real_cells_one_epoch(shared_herlev, tmp_path):
    result = CliRunner().invoke(app, ["train", "--data", str(shared_herlev / "letterbox200"), "--arch", "test_resnet",
                                      "--no-pretrained", "--head", "cls_reg", "--size", "32", "--epochs", "1",
                                      "--fold", "0", "--out", str(tmp_path), "--name", "real", "--quiet"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "real" / "metrics.json").read_text())
    assert metrics["n"] == 184  # fold 0 of 734 cells, 4 stratified folds
    assert sum(map(sum, metrics["confusion_matrix"])) == 184
