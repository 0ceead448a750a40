"""`herlev export`: the ONNX file a deployment runs gives the run's own outputs on real cells."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from herlev_cli.main import app

runner = CliRunner()
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def test_exported_onnx_predicts_like_herlev_predict_on_real_cells(trained_run, shared_herlev, tmp_path):
    import onnx
    import onnxruntime

    from herlev_fa import PredictSettings, predict, preprocess

    cells = sorted((shared_herlev / "letterbox200").rglob("*.jpg"))[::61][:12]
    target = tmp_path / "cls_reg.onnx"
    result = runner.invoke(app, ["export", str(trained_run), "--format", "onnx", "--out", str(target),
                                 *[a for c in cells[:4] for a in ("--check", str(c))]])
    assert result.exit_code == 0, result.output
    assert "onnxruntime agrees with the run on 4 given image(s)" in result.output
    meta = {p.key: p.value for p in onnx.load(str(target)).metadata_props}
    classes = json.loads(meta["herlev_classes"])
    assert meta["herlev_head"] == "cls_reg" and len(classes) == 5
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    raw = session.run(["output"], {"image": preprocess(cells, trained_run).numpy()})[0]  # [12, 6]: any batch size
    logits = raw[:, :5]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    ours = predict(trained_run, cells, PredictSettings(device="cpu", progress=False))
    np.testing.assert_allclose(probs, ours[[f"p_{c}" for c in classes]].to_numpy(), atol=1e-4)
    np.testing.assert_allclose(raw[:, 5], ours["score"], atol=1e-4)  # cls_reg: the last column is the score


def test_export_defaults_to_the_held_out_cells_and_refuses_an_unknown_format(trained_run, tmp_path):
    result = runner.invoke(app, ["export", str(trained_run), "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    assert "16 held-out cells of the run" in result.output and (tmp_path / "m.onnx").stat().st_size > 10_000
    bad = runner.invoke(app, ["export", str(trained_run), "--format", "tflite"])
    assert bad.exit_code == 2 and "unknown --format 'tflite': choose onnx" in bad.output


def test_a_missing_optional_package_is_named_with_its_install_command():
    from herlev_fa.errors import HerlevError
    from herlev_fa.export import _needs

    with pytest.raises(HerlevError, match=r"needs the package 'no_such_package_x'.*pip install \"herlev_fa\[onnx\]\""):
        _needs("no_such_package_x")
