"""Heads as objects: the registry, each head's contract, and a fourth head added in this file only."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from herlev_fa.config import EvalSettings, ModelConfig, PredictSettings
from herlev_fa.errors import HerlevError
from herlev_fa.metrics import decode, severity_metrics
from herlev_fa.model.heads import (HEADS, AppendExpectedSeverity, ClsHead, ClsRegHead, CornHead, Head, RegHead,
                                   SordHead, get_head, head_names, nearest_class, register_head)
from herlev_fa.model.loss import SeverityLoss

SEV = (0.0, 1.0, 2.0, 3.0, 4.0)


def test_the_registry_is_the_one_list_of_head_names():
    assert head_names() == ("cls", "reg", "cls_reg", "corn", "sord")
    assert [type(get_head(n)) for n in head_names()] == [ClsHead, RegHead, ClsRegHead, CornHead, SordHead]
    head = get_head("reg")
    assert head == RegHead() and head != ClsHead() and hash(head) == hash(RegHead())
    with pytest.raises(HerlevError, match="unknown head 'ordinal': choose one of cls, reg, cls_reg, corn, sord"):
        get_head("ordinal")
    with pytest.raises(HerlevError, match="unknown head 'ordinal'"):
        ModelConfig(head="ordinal")
    assert ModelConfig(head=ClsHead()).head == "cls"  # a Head is stored by its name (run folders hold names)


def test_register_head_refuses_a_nameless_or_taken_name():
    class Nameless(ClsHead):
        name = ""

    class Impostor(ClsHead):
        name = "cls"

    for cls in (Nameless, Impostor):
        with pytest.raises(ValueError, match="needs a name that is not taken"):
            register_head(cls)
    assert HEADS["cls"] is ClsHead and register_head(ClsHead) is ClsHead  # registering the same class again is fine


@pytest.mark.parametrize("name,width,index,names", [("cls", 5, 5, list("abcde")), ("reg", 1, 0, ["severity"]),
                                                     ("cls_reg", 5, 5, list("abcde")),
                                                     ("corn", 4, 5, ["> a", "> b", "> c", "> d"]),
                                                     ("sord", 5, 5, list("abcde"))])
def test_each_head_states_its_widths_and_columns(name, width, index, names):
    head = get_head(name)
    assert head.n_outputs(5) == width
    assert head.score_index(5) == index
    assert head.output_names("abcde") == names
    assert head.weighted == (name == "cls_reg")


def test_average_views_per_head():
    outs = torch.tensor([[[2.0, 0.0, 0.0, 0.0, 0.0, 1.0]], [[0.0, 0.0, 0.0, 0.0, 2.0, 3.0]]])  # [V=2, B=1, K+1]
    p = torch.softmax(outs[..., :5], dim=-1).mean(dim=0)  # [1, 5]
    cls = get_head("cls").average_views(outs[..., :5], SEV)
    assert torch.allclose(cls.softmax(dim=1), p, atol=1e-6)
    cls_reg = get_head("cls_reg").average_views(outs, SEV)
    assert cls_reg.shape == (1, 6)
    assert cls_reg[0, 5].item() == pytest.approx((p[0] * torch.tensor(SEV)).sum().item(), rel=1e-6)
    assert get_head("reg").average_views(outs[..., 5:], SEV).tolist() == [[2.0]]


def test_decode_and_explained_columns_agree_with_split():
    out = torch.tensor([[0.0, 3.0, 0.0, 0.0, 0.0, 1.2]])
    probs, score, pred = get_head("cls_reg").decode(out, SEV)
    assert probs.shape == (1, 5) and score.item() == pytest.approx(1.2) and pred.tolist() == [1]
    assert torch.equal(get_head("cls_reg").explained(out, SEV), out)
    probs, score, pred = get_head("reg").decode(torch.tensor([[2.6]]), SEV)
    assert probs is None and pred.tolist() == [3]
    assert get_head("reg").explained(torch.tensor([[2.6]]), SEV).tolist() == [[pytest.approx(2.6)]]
    explained = get_head("cls").explained(out[:, :5], SEV)  # cls gains the score column it computes
    assert (explained.shape == (1, 6)
            and explained[0, 5].item() == pytest.approx(get_head("cls").split(out[:, :5], SEV)[1].item()))


def test_cls_reg_score_is_expected_severity():
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    out = AppendExpectedSeverity(SEV)(logits)
    assert out.shape == (2, 6)
    p = torch.softmax(logits, dim=1)
    expected = (p * torch.arange(5.0)).sum(dim=1)
    assert torch.allclose(out[:, 5], expected, atol=1e-6)
    assert out[1, 5].item() == pytest.approx(2.0)  # uniform probabilities -> mean severity
    assert torch.equal(out[:, :5], logits)


def test_head_split_and_nearest_class():
    sev = torch.tensor(SEV)
    logits, score = get_head("cls_reg").split(torch.tensor([[0.0, 0, 0, 0, 0, 3.3]]), sev)
    assert logits.shape == (1, 5) and score.item() == pytest.approx(3.3)
    logits, score = get_head("reg").split(torch.tensor([[2.6]]), sev)
    assert logits is None and score.item() == pytest.approx(2.6)
    _, score = get_head("cls").split(torch.tensor([[0.0, 0, 0, 0, 100]]), sev)
    assert score.item() == pytest.approx(4.0)
    assert nearest_class(torch.tensor([-3.0, 0.49, 0.51, 2.5001, 9.0]), sev).tolist() == [0, 0, 1, 3, 4]


def test_loss_equals_ce_plus_lambda_mse_by_hand():
    out = torch.tensor([[1.0, 0.0, -1.0, 0.5, 0.0, 1.5], [0.0, 2.0, 0.0, 0.0, -1.0, 0.7]])
    y = torch.tensor([3, 1])
    ce = F.cross_entropy(out[:, :5], y).item()
    mse = ((1.5 - 3.0) ** 2 + (0.7 - 1.0) ** 2) / 2
    loss = SeverityLoss(get_head("cls_reg"), SEV, mse_weight=0.25)
    assert loss(out, y).item() == pytest.approx(ce + 0.25 * mse, rel=1e-6)
    assert loss.parts["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert loss.parts["mse"].item() == pytest.approx(mse, rel=1e-6)
    assert SeverityLoss(get_head("cls"), SEV)(out[:, :5], y).item() == pytest.approx(ce, rel=1e-6)
    assert SeverityLoss(get_head("reg"), SEV)(out[:, 5:], y).item() == pytest.approx(mse, rel=1e-6)


def test_loss_activation_and_decodes():
    loss = SeverityLoss(get_head("reg"), SEV)
    act = loss.activation(torch.tensor([[0.2], [3.7]]))
    assert loss.decodes(act).tolist() == [0, 4]
    loss = SeverityLoss(get_head("cls_reg"), SEV)
    act = loss.activation(torch.tensor([[0.0, 0.0, 5.0, 0.0, 0.0, 2.0]]))
    assert act.shape == (1, 5) and act.sum().item() == pytest.approx(1.0)
    assert loss.decodes(act).tolist() == [2]


def test_cls_loss_logs_the_mse_it_does_not_train():
    out = torch.tensor([[1.0, 0.0, -1.0, 0.5, 0.0]])
    loss = SeverityLoss(get_head("cls"), SEV, mse_weight=5.0)
    assert loss(out, torch.tensor([3])).item() == pytest.approx(F.cross_entropy(out, torch.tensor([3])).item())
    score = (out.softmax(dim=1) @ torch.tensor(SEV)).item()
    assert loss.parts["mse"].item() == pytest.approx((score - 3.0) ** 2, rel=1e-6)


@pytest.mark.parametrize("name", ["cls", "cls_reg"])
def test_label_smoothing_is_the_cross_entropy_against_smoothed_targets(name):
    """q = (1 - s) * onehot(y) + s / K, loss = -sum_k q_k log p_k (+ lambda * MSE for cls_reg, unchanged)."""
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0, 1.0], [-0.5, 0.0, 3.0, 1.0, 0.2]])
    y, s = torch.tensor([0, 3]), 0.2
    out = get_head(name).module(SEV)(logits)  # cls_reg appends the score
    q = (1 - s) * F.one_hot(y, 5).float() + s / 5
    expected = -(q * logits.log_softmax(dim=1)).sum(dim=1).mean()
    head = get_head(name)
    plain, smoothed = SeverityLoss(head, SEV, mse_weight=0.5), SeverityLoss(head, SEV, mse_weight=0.5, smoothing=s)
    mse = plain(out, y) - F.cross_entropy(logits, y)  # the MSE term, the same with or without smoothing
    assert smoothed(out, y).item() == pytest.approx((expected + mse).item(), rel=1e-6)
    assert smoothed.parts["ce"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert [n for n, h in HEADS.items() if h.smoothable] == ["cls", "cls_reg"]  # the heads --label-smoothing accepts


@pytest.mark.parametrize("name", list(HEADS))
def test_per_cell_losses_are_each_cells_loss_and_average_to_the_batch_loss(name):
    """reduction "none" (what fastai's MixUp and CutMix ask for): one loss per cell,
    each the loss of that cell alone."""
    head = get_head(name)
    torch.manual_seed(0)
    out = torch.randn(6, head.n_outputs(5))
    out = head.module(SEV)(out)  # cls_reg appends the score
    y = torch.tensor([0, 1, 2, 3, 4, 2])
    loss = SeverityLoss(head, SEV, mse_weight=0.5)
    batch = loss(out, y)
    loss.reduction = "none"
    per_cell = loss(out, y)
    assert batch.shape == () and per_cell.shape == (6,)
    alone = torch.stack([SeverityLoss(head, SEV, mse_weight=0.5)(out[i:i + 1], y[i:i + 1]) for i in range(6)])
    assert torch.allclose(per_cell, alone, rtol=1e-5)
    if name != "corn":  # CORN's batch loss weighs each cell by its number of binary tasks (coral-pytorch)
        assert per_cell.mean().item() == pytest.approx(batch.item(), rel=1e-5)
    assert set(loss.parts) and all(v.shape == () for v in loss.parts.values())  # the log keeps batch means


# --- a fourth head, added here and nowhere else ------------------------------------------------


class OrdinalHead(Head):
    """Cumulative-link toy head: K - 1 outputs, sigmoid(out_k) = P(class > k), trained with BCE.

    Its score is the expected severity under those probabilities; it has no class logits.
    """

    name = "ordinal_test"
    summary = "BCE on P(class > k)"
    has_classes = False

    def n_outputs(self, n_classes: int) -> int:
        return n_classes - 1

    def split(self, out, severities):
        sev = torch.as_tensor(severities, dtype=torch.float32, device=out.device)
        return None, sev[0] + out.float().sigmoid() @ (sev[1:] - sev[:-1])  # [B]

    def loss(self, out, target, severities, mse_weight=1.0, smoothing=0.0, reduction="mean"):
        above = (target[:, None] > torch.arange(out.shape[1], device=out.device)[None, :]).float()  # [B, K - 1]
        bce = F.binary_cross_entropy_with_logits(out.float(), above, reduction="none").mean(dim=1)  # [B]
        return (bce.mean() if reduction == "mean" else bce), {"bce": bce.detach().mean()}

    def output_names(self, classes):
        return [f"> {c}" for c in classes[:-1]]


@pytest.fixture
def ordinal_head():
    register_head(OrdinalHead)
    yield OrdinalHead()
    del HEADS[OrdinalHead.name]


def test_a_registered_head_has_its_loss_and_decoding(ordinal_head):
    out = torch.tensor([[3.0, 1.0, -1.0, -3.0], [-5.0, -5.0, -5.0, -5.0]])  # [B=2, K-1=4]
    y = torch.tensor([2, 0])
    above = torch.tensor([[1.0, 1, 0, 0], [0, 0, 0, 0]])
    loss = SeverityLoss(get_head("ordinal_test"), SEV)
    assert loss(out, y).item() == pytest.approx(F.binary_cross_entropy_with_logits(out, above).item(), rel=1e-6)
    assert list(loss.parts) == ["bce"]
    score = torch.sigmoid(out).sum(dim=1)  # severities 0..4: every step is 1
    probs, dec_score, pred = decode(out.numpy(), get_head("ordinal_test"), SEV)
    assert probs is None and np.allclose(dec_score, score.numpy(), atol=1e-6)
    assert pred.tolist() == nearest_class(score, SEV).tolist() == [2, 0]
    m = severity_metrics(out.numpy(), y.numpy(), ordinal_head, SEV)
    assert m["accuracy"] == 1.0 and m["mse"] == pytest.approx(float(((score - torch.tensor([2.0, 0.0])) ** 2).mean()))


def test_a_head_added_in_a_test_file_trains_predicts_and_explains(ordinal_head, synth_data, tmp_path):
    from herlev_fa import DataConfig, IGSettings, TrainConfig, evaluate, explain, load_run, predict, train

    cfg = TrainConfig(DataConfig(synth_data, size=32, bs=32, folds=2),
                      ModelConfig("test_resnet", head="ordinal_test", pretrained=False),
                      epochs=1, device="cpu", out=tmp_path, name="ordinal", quiet=True)
    run_dir = train(cfg).runs[0]
    meta = json.loads((run_dir / "herlev.json").read_text())
    timm_cfg = json.loads((run_dir / "config.json").read_text())
    assert meta["head"] == "ordinal_test"
    assert timm_cfg["num_classes"] == 4 and timm_cfg["label_names"][0] == "> normal"
    run = load_run(run_dir)
    assert run.model.net.get_classifier().out_features == 4
    assert run.model(torch.zeros(2, 3, 32, 32)).shape == (2, 4)
    log = (run_dir / "log.csv").read_text().splitlines()[0].split(",")
    assert "train_bce" in log and "valid_bce" in log  # the head's loss parts are logged by name

    preds = predict(run_dir, synth_data / "carcinoma_in_situ", PredictSettings(tta=True, device="cpu", progress=False))
    assert list(preds.columns) == ["path", "pred", "score", "abnormal", "pred_abnormal"] and len(preds) == 24
    nearest = np.clip(np.rint(preds["score"]), 0, 4).astype(int)  # severities 0..4: nearest = rounded and clipped
    assert (preds["pred"] == [run.task.classes[i] for i in nearest]).all()
    assert ((preds["score"] > 0) & (preds["score"] < 4)).all()  # a sum of 4 sigmoids, each step 1

    metrics = evaluate(run_dir, EvalSettings(device="cpu", progress=False, n_boot=0))
    assert 0 <= metrics["accuracy"] <= 1 and math.isfinite(metrics["mse"]) and metrics["n"] == 84

    cell = next((synth_data / "carcinoma_in_situ").glob("*.BMP"))
    [result] = explain(run_dir, [cell], IGSettings(steps=16, device="cpu"))
    assert result.target == "score" and result.probs is None  # a head without classes explains its score
    assert result.attribution.ndim == 2 and np.isfinite(result.attribution).all()
