"""Data feed throughput: images/s that the training DataLoader delivers, with no model.

Decodes the shared real cells once (the in-memory cache), builds the training DataLoaders of
fold 0 exactly as `herlev train` does (`data.feed`: the cache on the device, batches gathered
and augmented there; or `--augment albumentations`: the DataBlock of `data.datablock`, per image on
CPU workers), and times full
passes over the training split. In the same run it times the same feed without augmentation,
and prints the ratio. To feed a GPU, the feed must outrun the GPU's training throughput
(resnet101 at 224 px: about 2,200 images/s on an H200).

    python bench/data_pipeline.py [--data ../shared/data/herlev/letterbox200] [--size 224] [--bs 64]
        [--augment batch|albumentations] [--workers N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from herlev_fa.data.augment import POLICIES
from herlev_fa.data.datablock import datablock, training_dataloaders
from herlev_fa.data.feed import build_dataloaders
from herlev_fa.data.images import decode_all
from herlev_fa.data.items import assign_folds, scan
from herlev_fa.labels import get_task

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "herlev" / "letterbox200"


def images_per_second(dl, passes: int) -> float:
    n, start = 0, time.perf_counter()
    for _ in range(passes):
        for xb, _ in dl:
            n += len(xb)
    if xb.is_cuda:
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="for --augment albumentations")
    parser.add_argument("--augment", default="batch", choices=("batch", "albumentations"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--passes", type=int, default=2)
    args = parser.parse_args()
    task = get_task("severity")
    items = scan(args.data, task)
    t = time.perf_counter()
    cache, _ = decode_all(items["path"], args.size, progress=False)
    print(f"decode + letterbox {len(items)} images once: {len(items) / (time.perf_counter() - t):.0f} images/s")
    items["fold"] = assign_folds(items, 4, seed=0)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    valid = (items["fold"] == 0).to_numpy()
    if args.augment == "albumentations":
        block = datablock(task, args.size, mean, std, fold=0, policy=POLICIES["poster"], cache=cache)
        dls = training_dataloaders(block, items, args.bs, args.device, args.workers)
    else:
        dls = build_dataloaders(items, cache, task, valid=valid, bs=args.bs, mean=mean, std=std, device=args.device,
                                augment=args.augment)
    plain = build_dataloaders(items, cache, task, valid=valid, bs=args.bs, mean=mean, std=std, device=args.device,
                              augment="none")
    images_per_second(dls.train, 1)  # warm up workers and caches
    augmented = images_per_second(dls.train, args.passes)
    baseline = images_per_second(plain.train, args.passes)
    workers = f"{args.workers} workers" if args.augment == "albumentations" else "no workers"
    print(f"{os.cpu_count()} CPU cores, {args.augment} augmentation on {args.device}, {workers}, {args.size} px, "
          f"batch {args.bs}")
    print(f"training DataLoader (augmented): {augmented:8.0f} images/s")
    print(f"same DataLoader, no augmentation: {baseline:8.0f} images/s")
    print(f"ratio augmented / no augmentation: {augmented / baseline:.2f}")


if __name__ == "__main__":
    main()
