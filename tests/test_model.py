"""Networks: the model each head builds, its fixed severity layer, architectures and weights (local, pretrained,
refused). What a head computes from the outputs is in test_heads.py."""

import os
import pickle

import pytest
import timm
import torch

from herlev_fa.config import ModelConfig
from herlev_fa.errors import HerlevError
from herlev_fa.labels import get_task
from herlev_fa.model.loss import SeverityLoss
from herlev_fa.model.heads import get_head
from herlev_fa.model.network import build_model, create_net, load_weights_file
from herlev_fa.training.learner import body_head_splitter

SEV = (0.0, 1.0, 2.0, 3.0, 4.0)


@pytest.mark.parametrize("head,width", [("cls", 5), ("reg", 1), ("cls_reg", 6)])
def test_model_output_shapes_and_finite(head, width):
    torch.manual_seed(0)
    model = build_model(ModelConfig("test_resnet", head=head, pretrained=False), get_task("severity")).eval()
    out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, width)
    assert torch.isfinite(out).all()
    assert model.net.get_classifier().out_features == (1 if head == "reg" else 5)


def test_fixed_severity_layer_is_in_no_param_group_and_never_trains():
    model = build_model(ModelConfig("test_resnet", head="cls_reg", pretrained=False), get_task("severity"))
    fixed = model.readout.score.fc.weight
    assert not fixed.requires_grad
    grouped = {id(p) for group in body_head_splitter(model) for p in group}
    assert id(fixed) not in grouped
    assert len(grouped) == len(list(model.net.parameters()))
    opt = torch.optim.SGD([p for g in body_head_splitter(model) for p in g], lr=1.0)
    loss = SeverityLoss(get_head("cls_reg"), SEV)(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 4]))
    loss.backward()
    opt.step()
    assert fixed.tolist() == [list(SEV)]


def test_reg_head_refuses_tasks_with_shared_severities():
    with pytest.raises(HerlevError, match="reg head needs one class per severity"):
        build_model(ModelConfig("test_resnet", head="reg", pretrained=False), get_task("herlev7"))


def test_unknown_arch_suggests_names():
    with pytest.raises(HerlevError, match="unknown architecture 'resnet1001'.*did you mean.*resnet101"):
        create_net("resnet1001", 5)


def test_pretrained_unavailable_is_a_clear_error(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HerlevError, match="pretrained weights for 'test_resnet'.*--weights FILE.*--no-pretrained"):
        create_net("test_resnet", 5, pretrained=True)


def test_local_weights_load_from_safetensors_and_state_dict(tmp_path):
    from safetensors.torch import save_file

    src = timm.create_model("test_resnet", num_classes=1000)
    sd = src.state_dict()
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        net = create_net("test_resnet", 5, weights=tmp_path / name)
        assert torch.equal(net.conv1[0].weight, src.conv1[0].weight)  # body loaded
        assert net.fc.weight.shape == (5, net.num_features)  # 1000-class ImageNet head dropped


def test_weights_for_another_arch_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file(timm.create_model("test_vit", num_classes=5).state_dict(), str(tmp_path / "vit.safetensors"))
    with pytest.raises(HerlevError, match="do not fit architecture 'test_resnet'"):
        create_net("test_resnet", 5, weights=tmp_path / "vit.safetensors")


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['HERLEV_PWNED']}",))


def test_crafted_pickle_is_refused_and_never_runs(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("HERLEV_PWNED", str(marker))
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"fc.weight": _Payload()}, f)
    torch.save({"x": _Payload()}, tmp_path / "evil2.pt")
    for path in (evil, tmp_path / "evil2.pt"):
        with pytest.raises(HerlevError, match="cannot load weights .* safely"):
            load_weights_file(path)
    assert not marker.exists()
    with pytest.raises(HerlevError, match="does not exist"):
        load_weights_file(tmp_path / "none.pth")
