"""A CSV of image paths and labels as training data, beside class folders."""

import json

import pandas as pd
from typer.testing import CliRunner

from herlev_cli.main import app
from herlev_fa.data.items import scan
from herlev_fa.labels import get_task

runner = CliRunner()


def _csv(synth_data, path):
    """Every synthetic image, its path relative to the CSV's folder; labels as classes or as archive folder names."""
    items = scan(synth_data, get_task("severity"))
    labels = [folder if i % 2 else label for i, (folder, label) in enumerate(zip(items["folder"], items["label"]))]
    pd.DataFrame({"path": ["data/" + r for r in items["rel"]], "label": labels}).to_csv(path, index=False)
    return items


def test_train_and_evaluate_from_a_csv_of_images_and_labels(synth_data, tmp_path):
    (tmp_path / "data").symlink_to(synth_data)
    items = _csv(synth_data, tmp_path / "cells.csv")
    from_csv = scan(tmp_path / "cells.csv", get_task("severity"))
    assert (list(from_csv["label"]) == list(items["label"])
            and list(from_csv["rel"]) == ["data/" + r for r in items["rel"]])
    assert (from_csv["mask"] != "").all()  # masks found beside the images, as for folders
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "cells.csv"), "--arch", "test_resnet",
                                 "--no-pretrained", "--folds", "2", "--epochs", "1", "--size", "32", "--bs", "16",
                                 "--out", str(tmp_path / "runs"), "--name", "csv", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    folds = pd.read_csv(tmp_path / "runs" / "csv" / "folds.csv")
    assert len(folds) == len(items) and folds["rel"].str.startswith("data/").all()
    evaluated = runner.invoke(app, ["evaluate", str(tmp_path / "runs" / "csv"), "--device", "cpu", "--json",
                                    "--bootstrap", "0"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["n"] == int((folds["fold"] == 0).sum())  # the held-out half, read back


def test_a_bad_csv_is_refused_naming_the_line(synth_data, tmp_path):
    (tmp_path / "a.csv").write_text("file,class\nx.bmp,normal\n")
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "a.csv"), "--arch", "test_resnet",
                                 "--no-pretrained"])
    assert result.exit_code == 2 and "has no column path, label" in result.output
    image = next(synth_data.rglob("*.BMP"))
    (tmp_path / "b.csv").write_text(f"path,label\n{image},normal\n{image},koilocyte\n")
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "b.csv"), "--arch", "test_resnet",
                                 "--no-pretrained"])
    assert result.exit_code == 2 and "line 3: label 'koilocyte' is not a class of task 'severity'" in result.output
