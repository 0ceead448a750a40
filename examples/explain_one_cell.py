"""Explain one cell with Integrated Gradients and check how much of the attribution falls on its nucleus.

The lines to copy are in `explain_cell`: load a run, `explain` one image (captum's Integrated
Gradients on the run's own preprocessing), read the cell's mask and measure the nucleus share
of the positive attribution against the nucleus share of the cell's area.

    python examples/explain_one_cell.py --run runs/<run> --image cells/light_dysplastic/x.BMP
    python examples/explain_one_cell.py          # demo: trains a small model on synthetic cells first

Without `--run`, the demo writes a synthetic data set under `--out`, trains test_resnet on the
CPU for a few epochs, and explains the first held-out carcinoma-in-situ cell. This is an example
script, not part of the library.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

# fastai calls torch.jit.script when it is imported, which recent torch deprecates: a warning about
# fastai's code, not about this script. Filtered before herlev_fa imports fastai (as the `herlev` command does).
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)

from herlev_fa import (DataConfig, IGSettings, ModelConfig, TrainConfig, explain, load_run, read_mask,  # noqa: E402
                       train, write_synthetic)
from herlev_fa.data.items import mask_for  # noqa: E402
from herlev_fa.explanation.overlap import region_shares  # noqa: E402
from herlev_fa.explanation.report import write_explanation  # noqa: E402


def explain_cell(run_dir: Path, image: Path, out: Path) -> dict:
    """IG of `image` for its predicted class; the figure is written to `out`. Returns the numbers."""
    run = load_run(run_dir)
    [result] = explain(run, [image], IGSettings(steps=50, device="cpu"))
    png, _ = write_explanation(result, out, baseline="mean", steps=50)
    numbers = {"predicted": result.predicted, "score": result.score, "figure": png}
    mask = mask_for(image)
    if mask is not None:
        shares = region_shares(result.attribution, read_mask(mask))  # both in the image's own pixel grid
        numbers.update(nucleus_share=shares["nucleus_pos_share"], nucleus_area=shares["nucleus_area_share"],
                       enrichment=shares["nucleus_enrichment"])
    return numbers


def demo_run(out: Path) -> tuple[Path, Path]:
    """A small run on synthetic cells and one of its held-out carcinoma-in-situ images."""
    data = write_synthetic(out / "data", per_class=24, size=64, seed=0)
    cfg = TrainConfig(DataConfig(data, size=48, bs=16, seed=0), ModelConfig("test_resnet", pretrained=False),
                      epochs=15, lr=3e-3, device="cpu", out=out / "runs", name="demo", quiet=True)
    run_dir = train(cfg).runs[0]
    folds = load_run(run_dir).folds()
    rel = folds[(folds["fold"] == 0) & (folds["label"] == "carcinoma_in_situ")]["rel"].iloc[0]
    return run_dir, data / rel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, help="run folder (default: train a demo run)")
    parser.add_argument("--image", type=Path, help="image to explain (its -d.bmp / -d.png mask is used if present)")
    parser.add_argument("--out", type=Path, default=Path("explain_one_cell"), help="output folder")
    args = parser.parse_args()
    if args.run is None:
        run_dir, image = demo_run(args.out)
    elif args.image is None:
        parser.error("--image is needed with --run")
    else:
        run_dir, image = args.run, args.image
    n = explain_cell(run_dir, image, args.out)
    print(f"{image.name}: predicted {n['predicted']}, severity score {n['score']:.2f}")
    if "nucleus_share" in n:
        print(f"nucleus: {n['nucleus_share']:.1%} of the positive attribution on {n['nucleus_area']:.1%} of the "
              f"pixels (enrichment {n['enrichment']:.2f})")
    print(f"figure: {n['figure']}")


if __name__ == "__main__":
    main()
