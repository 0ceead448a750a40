"""Fine-tune a severity classifier on a new folder in a few epochs, starting from a previous run.

The lines to copy into your own script are in `finetune` and `accuracy_on`: point
`ModelConfig(weights=...)` at a run's `model.safetensors` (or any local weights file: a timm
safetensors file or a state dict), and `train` fine-tunes it: one epoch with only the classifier
training, then `--epochs` epochs of the whole network. The run folder it writes is like any other.

    python examples/quick_finetune.py --data new_cells/ --weights runs/<run>/model.safetensors
    python examples/quick_finetune.py --data new_cells/ --weights resnet50.safetensors --arch resnet50
    python examples/quick_finetune.py        # demo: synthetic data, test_resnet, on the CPU

Without `--data`, the demo writes two synthetic data sets (seeds 0 and 1) under `--out`, trains
a small model from scratch on the first, fine-tunes it on the second, and prints the accuracy on
the second set's held-out images before and after fine-tuning. This is an example script, not
part of the library.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

# fastai calls torch.jit.script when it is imported, which recent torch deprecates: a warning about
# fastai's code, not about this script. Filtered before herlev_fa imports fastai (as the `herlev` command does).
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)

import pandas as pd  # noqa: E402

from herlev_fa import (DataConfig, HerlevError, ModelConfig, PredictSettings, TrainConfig, train,  # noqa: E402
                       write_synthetic)
from herlev_fa.prediction import predict  # noqa: E402


def finetune(data: Path, weights: Path, out: Path, arch: str, size: int, epochs: int = 5, lr: float = 1e-3,
             device: str = "auto") -> tuple[Path, float]:
    """Fine-tune `weights` on `data` (fold 0 held out): the new run folder and its held-out accuracy."""
    cfg = TrainConfig(DataConfig(data, size=size, bs=16),
                      ModelConfig(arch, head="cls_reg", weights=weights),
                      epochs=epochs, lr=lr, device=device, out=out, quiet=True)
    result = train(cfg)
    return result.runs[0], result.metrics[0]["accuracy"]


def accuracy_on(run: Path, held_out_of: Path, data: Path, device: str = "auto") -> float:
    """Accuracy of `run` on the images that run `held_out_of` held out (its fold 0) of `data`."""
    folds = pd.read_csv(held_out_of / "folds.csv")
    held = folds[folds["fold"] == 0]
    preds = predict(run, [data / rel for rel in held["rel"]], PredictSettings(device=device, progress=False))
    return float((preds["pred"].to_numpy() == held["label"].to_numpy()).mean())


def demo_start(out: Path, arch: str, size: int) -> Path:
    """The demo's previous run: a small model trained from scratch on synthetic data (seed 0); its weights."""
    old = out / "data_old"
    if not (old / "README.txt").is_file():
        write_synthetic(old, per_class=24, size=64, seed=0)
    cfg = TrainConfig(DataConfig(old, size=size, bs=16), ModelConfig(arch, pretrained=False),
                      epochs=10, lr=3e-3, device="cpu", out=out, quiet=True)
    scratch = train(cfg)
    print(f"from scratch on {old}: held-out accuracy {scratch.metrics[0]['accuracy']:.3f} ({scratch.runs[0]})")
    return scratch.runs[0] / "model.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="new folder-per-class data set (default: synthetic demo)")
    parser.add_argument("--weights", type=Path, help="starting weights: a run's model.safetensors or a local file")
    parser.add_argument("--out", type=Path, default=Path("runs/quick_finetune"), help="runs are written here")
    parser.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs after the frozen one")
    parser.add_argument("--arch", help="timm architecture (default: the run's, or test_resnet for the demo)")
    parser.add_argument("--size", type=int, help="image size (default: the run's, or 48 for the demo)")
    args = parser.parse_args()

    device, lr = "auto", 1e-3
    if args.data is None:  # the demo, on the CPU; the new folder is synthetic data of another seed
        device, lr = "cpu", 1e-2  # a tiny network far from its optimum: a high rate moves it in a few epochs
        args.data = args.out / "data_new"
        if not (args.data / "README.txt").is_file():
            write_synthetic(args.data, per_class=24, size=64, seed=1)
        if args.weights is None:
            args.weights = demo_start(args.out, args.arch or "test_resnet", args.size or 48)
    if args.weights is None:
        parser.error("--weights is required with --data")
    old_run = args.weights.parent if (args.weights.parent / "herlev.json").is_file() else None
    meta = json.loads((old_run / "herlev.json").read_text()) if old_run else {}
    arch, size = args.arch or meta.get("arch"), args.size or meta.get("image_size", 224)
    if arch is None:
        parser.error("--arch is required when --weights is not a run's model.safetensors")

    try:
        new_run, after = finetune(args.data, args.weights, args.out, arch, size, args.epochs, lr, device)
        before = accuracy_on(old_run, new_run, args.data, device) if old_run else None
    except HerlevError as e:  # a mistake in the input: one line, no traceback
        parser.exit(2, f"error: {e}\n")
    print(f"accuracy before fine-tuning: {'-' if before is None else f'{before:.3f}'}")
    print(f"accuracy after fine-tuning:  {after:.3f}")
    print(f"(both on the {args.data} images held out of fine-tuning; run folder: {new_run})")


if __name__ == "__main__":
    main()
