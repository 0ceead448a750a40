"""The ordinal heads `corn` (coral-pytorch) and `sord` (dlordinal): the libraries' losses and decodings,
and every command.

Unit tests compare with the libraries on hand-made outputs; one module fixture per head trains a
2-fold test_resnet run through the CLI, which the command tests share.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from coral_pytorch.dataset import corn_label_from_logits
from coral_pytorch.losses import corn_loss
from dlordinal.losses import SORDLoss
from typer.testing import CliRunner

import herlev_cli.explain  # noqa: F401  (registers explain, quantify, compare-explanations, compare-quantify)
import herlev_cli.predict  # noqa: F401  (registers predict)
import herlev_cli.reproduce  # noqa: F401  (registers reproduce)
from herlev_cli.main import app
from herlev_fa.errors import HerlevError
from herlev_fa.labels import get_task
from herlev_fa.metrics import SCALAR_METRICS
from herlev_fa.model.heads import corn_log_probs, corn_logits, get_head
from herlev_fa.model.loss import SeverityLoss
from herlev_fa.prediction import predict_outputs
from herlev_fa.runs import load_run

SEV = (0.0, 1.0, 2.0, 3.0, 4.0)
ORDINAL = ("corn", "sord")
runner = CliRunner()
WIDE = {"COLUMNS": "200"}


# --- the libraries' losses and decodings -------------------------------------------------------


def test_corn_loss_is_coral_pytorchs_on_a_hand_made_example():
    out = torch.tensor([[2.0, -1.0, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0]])  # [B=2, K-1=4]
    y = torch.tensor([1, 4])
    # y = 1 takes part in tasks 0 (y > 0: yes) and 1 (y > 1: no); y = 4 in all four, each "yes"
    by_hand = -(math.log(torch.sigmoid(torch.tensor(2.0)).item()) + math.log(torch.sigmoid(torch.tensor(1.0)).item())
                + 4 * math.log(0.5)) / 6
    loss = SeverityLoss(get_head("corn"), SEV)
    assert loss(out, y).item() == pytest.approx(by_hand, rel=1e-6)
    assert corn_loss(out, y, 5).item() == pytest.approx(by_hand, rel=1e-6)
    assert list(loss.parts) == ["corn"]


def test_sord_loss_is_dlordinals_on_a_hand_made_example():
    out = torch.tensor([[0.5, 1.0, 2.0, -1.0, 0.0]])
    y = torch.tensor([1])
    soft = torch.softmax(-2.0 * torch.tensor([1.0, 0.0, 1.0, 2.0, 3.0]), dim=0)  # alpha 2, |k - 1|
    by_hand = -(soft * out.log_softmax(dim=1)[0]).sum().item()
    loss = SeverityLoss(get_head("sord"), SEV)
    assert loss(out, y).item() == pytest.approx(by_hand, rel=1e-6)
    assert SORDLoss(alpha=2.0, num_classes=5, train_targets=y)(out, y).item() == pytest.approx(by_hand, rel=1e-6)
    assert loss(out, y).dtype == torch.float32 and list(loss.parts) == ["sord"]


def test_corn_probabilities_by_hand():
    # every conditional probability 1/2: P(y > k) = 1/2, 1/4, 1/8, 1/16
    probs, score, pred = get_head("corn").decode(torch.zeros(1, 4), SEV)
    assert probs[0].tolist() == pytest.approx([1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 16])
    assert score.item() == pytest.approx(0.25 + 0.25 + 3 / 16 + 4 / 16)  # expected severity under p
    assert pred.tolist() == [0]  # no P(y > k) above 1/2


def test_corn_decodes_to_the_median_like_coral_pytorch_not_the_argmax():
    p = torch.tensor([[0.45, 0.05, 0.05, 0.44, 0.01]])  # argmax 0, but P(y > 0) = 0.55: the median is class 1
    out = corn_logits(p.log())  # the conditional logits of p
    head = get_head("corn")
    probs, _, pred = head.decode(out, SEV)
    assert torch.allclose(probs, p, atol=1e-6)
    assert pred.tolist() == corn_label_from_logits(out).tolist() == [1] and probs.argmax(dim=1).tolist() == [0]
    assert head.decodes(head.activation(out, SEV), SEV).tolist() == [1]  # fastai's path: activation, then decodes
    assert head.decode_explained(head.explained(out, SEV), SEV)[2].tolist() == [1]  # explain's path


@pytest.mark.parametrize("name", ORDINAL)
def test_probabilities_sum_to_one_and_the_class_is_the_librarys_decoding(name):
    torch.manual_seed(0)
    head = get_head(name)
    out = 4 * torch.randn(500, head.n_outputs(5))
    probs, score, pred = head.decode(out, SEV)
    assert probs.shape == (500, 5) and (probs >= 0).all()
    assert torch.allclose(probs.sum(dim=1), torch.ones(500), atol=1e-6)
    assert torch.allclose(score, probs @ torch.tensor(SEV), atol=1e-5)
    library = corn_label_from_logits(out) if name == "corn" else out.softmax(dim=1).argmax(dim=1)
    assert torch.equal(pred, library)
    assert torch.equal(head.decodes(head.activation(out, SEV), SEV), library)
    explained = head.explained(out, SEV)  # [B, K + 1]: the class columns, then the score
    assert explained.shape == (500, 6) and torch.allclose(explained[:, 5], score)
    assert torch.equal(head.decode_explained(explained, SEV)[2], library)
    if name == "corn":
        assert not torch.equal(library, probs.argmax(dim=1))  # the two decodings do differ on some outputs
        assert torch.allclose(corn_log_probs(out).exp(), probs, atol=1e-6)


@pytest.mark.parametrize("name", ORDINAL)
def test_tta_of_identical_views_is_the_identity_and_of_two_views_the_mean_probability(name):
    torch.manual_seed(1)
    head = get_head(name)
    a, b = 3 * torch.randn(2, 4, head.n_outputs(5))  # two views of 4 images
    same = head.average_views(torch.stack([a, a, a]), SEV)
    assert same.shape == a.shape
    assert torch.allclose(head.decode(same, SEV)[0], head.decode(a, SEV)[0], atol=1e-6)
    if name == "corn":
        assert torch.allclose(same, a, atol=1e-4)  # the conditional logits themselves come back
    mean = (head.decode(a, SEV)[0] + head.decode(b, SEV)[0]) / 2
    assert torch.allclose(head.decode(head.average_views(torch.stack([a, b]), SEV), SEV)[0], mean, atol=1e-6)


@pytest.mark.parametrize("name", ORDINAL)
def test_ordinal_heads_refuse_tasks_without_distinct_ordered_severities(name):
    head = get_head(name)
    head.check_task(get_task("severity"))
    head.check_task(get_task("binary"))
    with pytest.raises(HerlevError, match=rf"^the {name} head needs classes with distinct severities in increasing "
                                          r"order, and task 'herlev7' has severities \[0.0, 0.0, 0.0, 1.0"):
        head.check_task(get_task("herlev7"))


def test_train_refuses_an_ordinal_head_on_herlev7_in_one_line(synth_data, tmp_path):
    result = runner.invoke(app, ["train", "--data", str(synth_data), "--arch", "test_resnet", "--no-pretrained",
                                 "--task", "herlev7", "--head", "corn", "--epochs", "1", "--device", "cpu",
                                 "--out", str(tmp_path), "--quiet"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1, result.output
    assert lines[0].startswith("error: the corn head needs classes with distinct severities"), lines[0]


# --- every command, on a tiny trained run of each head ----------------------------------------


def _train_cv(data: Path, out: Path, head: str, device: str) -> Path:
    result = runner.invoke(app, ["train", "--data", str(data), "--arch", "test_resnet", "--no-pretrained",
                                 "--head", head, "--size", "32", "--epochs", "2", "--lr", "3e-3", "--bs", "16",
                                 "--folds", "2", "--fold", "all", "--seed", "0", "--device", device, "--out", str(out),
                                 "--name", head, "--quiet"])
    assert result.exit_code == 0, result.output
    return out / head


@pytest.fixture(scope="module")
def cv_runs(synth_data, tmp_path_factory, device) -> dict[str, Path]:
    """A 2-fold cross-validated test_resnet run of each ordinal head (`<head>/fold0`, `<head>/fold1`)."""
    out = tmp_path_factory.mktemp("ordinal")
    return {head: _train_cv(synth_data, out, head, device) for head in ORDINAL}


@pytest.mark.parametrize("name", ORDINAL)
def test_train_evaluate_predict_tta_and_explain(name, cv_runs, synth_data, tmp_path):
    run_dir = cv_runs[name] / "fold0"
    run = load_run(run_dir)
    head = get_head(name)
    assert run.head == head and run.model.net.get_classifier().out_features == head.n_outputs(5)
    assert "train_" + name in (run_dir / "log.csv").read_text().splitlines()[0]  # the library loss is logged by name

    result = runner.invoke(app, ["evaluate", str(run_dir), "--device", "cpu", "--bootstrap", "20", "--json",
                                 "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    for key in ("accuracy", "binary_accuracy", "auc", "mse", "big_mistakes", "sensitivity", "specificity", "ece"):
        assert metrics[key] is not None and math.isfinite(metrics[key]), key
    assert set(SCALAR_METRICS) <= set(metrics)

    held = run.folds()[run.folds()["fold"] == run.fold]
    paths = [str(synth_data / r) for r in held["rel"]]
    raw, _ = predict_outputs(run, paths, device="cpu", progress=False)  # [N, C]
    out = torch.from_numpy(raw)
    library = corn_label_from_logits(out) if name == "corn" else out.argmax(dim=1)
    y = held["label"].map(run.task.classes.index).to_numpy()
    assert metrics["accuracy"] == pytest.approx(float((library.numpy() == y).mean()))  # evaluate decodes as the library

    images = sorted((synth_data / "carcinoma_in_situ").glob("*.BMP"))[:3]
    args = ["predict", *map(str, images), "--run", str(run_dir), "--device", "cpu"]
    result = runner.invoke(app, args + ["--tta", "--out", str(tmp_path / "tta.csv")], env=WIDE)
    assert result.exit_code == 0, result.output
    tta = pd.read_csv(tmp_path / "tta.csv")
    probs = tta[[f"p_{c}" for c in run.task.classes]].to_numpy()
    assert (probs >= 0).all() and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert np.allclose(tta["score"], probs @ np.array(SEV), atol=1e-4)
    assert np.allclose(tta["abnormal_prob"], 1 - probs[:, 0], atol=1e-5)
    classes = head.classify(torch.from_numpy(probs)).tolist()
    assert list(tta["pred"]) == [run.task.classes[k] for k in classes]

    result = runner.invoke(app, args + ["--out", str(tmp_path / "plain.csv")], env=WIDE)
    assert result.exit_code == 0, result.output
    plain = pd.read_csv(tmp_path / "plain.csv")
    result = runner.invoke(app, ["explain", str(images[0]), "--run", str(run_dir), "--steps", "8", "--device", "cpu",
                                 "--out", str(tmp_path / "ex"), "--quiet"], env=WIDE)
    assert result.exit_code == 0, result.output
    row = pd.read_csv(tmp_path / "ex" / "explanations.csv").iloc[0]
    assert row["predicted"] == row["target"] == plain["pred"][0]  # the predicted class's column is explained
    assert row["score"] == pytest.approx(plain["score"][0], abs=1e-4)
    assert np.isfinite(np.load(tmp_path / "ex" / f"{images[0].stem}_ig.npy")).all()


@pytest.mark.parametrize("name", ORDINAL)
def test_a_fold_ensemble_of_an_ordinal_head_averages_probabilities_and_quantifies(name, cv_runs, synth_data, tmp_path):
    run, head = load_run(cv_runs[name]), get_head(name)
    assert len(run.members) == 2 and run.head == head
    paths = [str(p) for p in sorted((synth_data / "severe_dysplastic").glob("*.BMP"))[:6]]
    got, _ = predict_outputs(run, paths, progress=False)
    members = [predict_outputs(m, paths, progress=False)[0] for m in run.members]
    mean_p = sum(head.decode(torch.from_numpy(m), SEV)[0] for m in members) / 2  # corn: from its conditional logits
    probs, _, pred = head.decode(torch.from_numpy(got), SEV)
    torch.testing.assert_close(probs, mean_p, rtol=1e-4, atol=1e-5)
    assert torch.allclose(probs.sum(dim=1), torch.ones(6), atol=1e-5)
    result = runner.invoke(app, ["predict", *paths, "--run", str(cv_runs[name]), "--device", "cpu", "--tta",
                                 "--out", str(tmp_path / "p.csv")], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "ensemble of 2 fold models" in result.output
    new = tmp_path / "new"
    for p in paths[:2]:  # two cells with their masks, as new data
        for f in (Path(p), Path(p).with_name(Path(p).stem + "-d.bmp")):
            (new / "severe_dysplastic").mkdir(parents=True, exist_ok=True)
            (new / "severe_dysplastic" / f.name).write_bytes(f.read_bytes())
    result = runner.invoke(app, ["quantify", "--run", str(cv_runs[name]), "--data", str(new), "--split", "all",
                                 "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "q"), "--quiet"], env=WIDE)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "q" / "quantify.csv")
    assert len(table) == 2 and np.isfinite(table["nucleus_pos_share"]).all()


def test_compare_explanations_and_compare_quantify_take_ordinal_runs(cv_runs, tmp_path):
    corn, sord = cv_runs["corn"], cv_runs["sord"]
    out = tmp_path / "fig7.png"
    result = runner.invoke(app, ["compare-explanations", str(corn / "fold0"), str(sord / "fold0"), "--out", str(out),
                                 "--per-class", "1", "--steps", "4", "--device", "cpu"], env=WIDE)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out.with_suffix(".csv"))
    assert len(table) == 2 * 5 and np.isfinite(table["nucleus_pos_share"]).all()
    result = runner.invoke(app, ["compare-quantify", str(corn), str(sord), "--out", str(tmp_path / "fig8"),
                                 "--steps", "2", "--device", "cpu", "--quiet"], env=WIDE)
    assert result.exit_code == 0, result.output
    for label in ("corn", "sord"):
        folds = [pd.read_csv(tmp_path / "fig8" / label / f"fold{k}" / "quantify.csv") for k in (0, 1)]
        assert sum(len(f) for f in folds) == 168  # every cell once, on its held-out fold


def test_reproduce_takes_comma_separated_heads_with_an_ordinal_one(synth_data, tmp_path, device):
    result = runner.invoke(app, ["reproduce", "--data", str(synth_data), "--arch", "test_resnet", "--no-pretrained",
                                 "--folds", "2", "--epochs", "1", "--size", "32", "--bs", "32", "--seed", "0",
                                 "--device", device, "--heads", "cls,corn", "--out", str(tmp_path / "r"), "--quiet"],
                           env=WIDE)
    assert result.exit_code == 0, result.output
    results = pd.read_csv(tmp_path / "r" / "results.csv")
    assert list(results["head"]) == ["cls", "cls", "corn", "corn"] and list(results["fold"]) == [0, 1, 0, 1]
    assert np.isfinite(results[["accuracy", "auc", "ece"]].to_numpy()).all()
    # no paper number for corn
    assert re.search(r"accuracy \(%\)\s*│[^│]+│\s*67\.6\s*│[^│]+│\s*–", result.output), result.output
