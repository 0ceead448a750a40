"""`herlev train --config run.yaml`: defaults < the file < the options typed; every run folder holds its run.yaml."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from herlev_cli.main import app
from herlev_fa.config import train_config
from herlev_fa.errors import HerlevError

runner = CliRunner()


def test_train_from_a_config_file_with_an_override_and_again_from_the_run_yaml_it_wrote(synth_data, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"data": str(synth_data), "size": 32, "folds": 2, "bs": 16},
        "model": {"arch": "test_resnet", "pretrained": False, "head": "cls"},
        "epochs": 3, "lr": 3e-3, "device": "cpu", "out": str(tmp_path / "runs")}))
    result = runner.invoke(app, ["train", "--config", str(config), "--epochs", "1", "--name", "a", "--quiet"])
    assert result.exit_code == 0, result.output
    first = json.loads((tmp_path / "runs" / "a" / "herlev.json").read_text())["config"]
    assert first["epochs"] == 1  # typed: wins over the file's 3
    assert first["data"]["size"] == 32 and first["model"]["head"] == "cls" and first["lr"] == 3e-3  # from the file
    assert first["model"]["arch"] == "test_resnet" and first["data"]["folds"] == 2
    written = tmp_path / "runs" / "a" / "run.yaml"
    assert yaml.safe_load(written.read_text())["epochs"] == 1
    again = runner.invoke(app, ["train", "--config", str(written), "--name", "b", "--quiet"])
    assert again.exit_code == 0, again.output
    second = json.loads((tmp_path / "runs" / "b" / "herlev.json").read_text())["config"]
    assert {k: v for k, v in second.items() if k != "name"} == {k: v for k, v in first.items() if k != "name"}


def test_a_config_file_with_an_unknown_setting_is_refused_naming_it(tmp_path, synth_data):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"data": {"data": str(synth_data), "sise": 32}, "epoch": 3}))
    result = runner.invoke(app, ["train", "--config", str(config)])
    assert result.exit_code == 2 and "unknown setting(s) epoch, data.sise" in result.output
    with pytest.raises(HerlevError, match="gives no data folder"):
        train_config({"epochs": 2})
    assert train_config({"data": {"data": str(synth_data)}, "fold": "all", "lr": "auto"}).fold is None
    missing = runner.invoke(app, ["train", "--config", str(tmp_path / "none.yaml")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
