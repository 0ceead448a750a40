"""`herlev reproduce` against a minimal plain timm + PyTorch loop: wall time and accuracy, one run.

Both run as child processes of this script, one after the other, on the same machine and data:

(a) plain: this file with `--plain`: decode and letterbox the images once, put them on the device,
    and for each head and fold train a `timm.create_model(arch)` with torch's AdamW and
    OneCycleLR (fastai's one-cycle: cosine warm-up over 25%, div 25, final div 1e5, momentum
    0.95-0.85) on batches indexed from that tensor and augmented with the same batch policy
    (`herlev_fa.data.augment.batch_augment`), bf16 autocast and channels-last on CUDA; evaluate the
    last epoch on the held-out fold.
(b) herlev: `herlev reproduce --keep last` with the same model, optimiser, schedule, batch size,
    augmentation, folds (herlev's seeded stratified split, used by both) and epochs.

Prints both tables (mean ± std over folds per head) and herlev's wall time over the plain loop's.
Goal on a GPU: <= 1.2 (issue 10). On the CPU it runs with small settings:

    python bench/reproduce_vs_plain.py --arch test_resnet --size 32 --epochs 2 --heads cls --device cpu
    python bench/reproduce_vs_plain.py --arch resnet101 --size 224 --epochs 30 --device cuda   (the issue's protocol)
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "herlev" / "letterbox200"
METRICS = ("accuracy", "binary_accuracy", "auc", "mse")


def plain(args: argparse.Namespace) -> dict[str, list[dict]]:
    """The plain loop: metrics per head, one dict per fold."""
    import timm
    import torch
    import torch.nn.functional as F
    from fastai.torch_core import TensorImage
    from fastai.data.core import Pipeline

    from herlev_fa.data.augment import batch_augment
    from herlev_fa.data.images import decode_all
    from herlev_fa.data.items import assign_folds, scan
    from herlev_fa.labels import get_task
    from herlev_fa.metrics import severity_metrics
    from herlev_fa.model.heads import get_head

    device, cuda = args.device, args.device.startswith("cuda")
    task = get_task("severity")
    items = scan(args.data, task)
    cache, _ = decode_all(items["path"], args.size, progress=False)
    folds = assign_folds(items, args.folds, args.seed)
    x_all = torch.from_numpy(np.stack([cache[p] for p in items["path"]])).permute(0, 3, 1, 2).to(device)  # [N,3,S,S]
    y_all = torch.tensor([task.classes.index(c) for c in items["label"]], device=device)  # [N]
    sev = torch.tensor(task.severities, dtype=torch.float32, device=device)  # [K]
    mean = torch.tensor([0.485, 0.456, 0.406], device=device)[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225], device=device)[:, None, None]
    augment = Pipeline(batch_augment(), split_idx=0)

    def loss_fn(out, y, head):
        if head == "reg":
            return F.mse_loss(out[:, 0], sev[y])
        ce = F.cross_entropy(out, y)
        return ce if head == "cls" else ce + args.mse_weight * F.mse_loss(out.softmax(1) @ sev, sev[y])

    results: dict[str, list[dict]] = {}
    for head in args.heads:
        results[head] = []
        for fold in range(args.folds):
            torch.manual_seed(args.seed)
            train_idx = torch.from_numpy(np.flatnonzero(folds != fold)).to(device)
            valid_idx = torch.from_numpy(np.flatnonzero(folds == fold)).to(device)
            model = timm.create_model(args.arch, num_classes=1 if head == "reg" else len(task.classes)).to(device)
            if cuda:
                model = model.to(memory_format=torch.channels_last)
            opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05, foreach=True)
            steps = args.epochs * (len(train_idx) // args.bs)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.25,
                                                        div_factor=25, final_div_factor=1e5 / 25,
                                                        base_momentum=0.85, max_momentum=0.95)
            for _ in range(args.epochs):
                model.train()
                order = train_idx[torch.randperm(len(train_idx), device=device)]
                for i in range(len(order) // args.bs):  # drop_last, as herlev's training split
                    idx = order[i * args.bs:(i + 1) * args.bs]
                    x = augment(TensorImage(x_all[idx].float() / 255)).as_subclass(torch.Tensor)  # [B,3,S,S]
                    x = (x - mean) / std
                    if cuda:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=cuda):
                        out = model(x).float()
                    loss = loss_fn(out, y_all[idx], head)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
            model.eval()
            outs = []
            with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=cuda):
                for i in range(0, len(valid_idx), args.bs):
                    idx = valid_idx[i:i + args.bs]
                    outs.append(model((x_all[idx].float() / 255 - mean) / std).float())
            out = torch.cat(outs)  # [n, C]
            if head == "cls_reg":  # herlev's output layout: logits, then the expected severity
                out = torch.cat([out, out.softmax(1) @ sev[:, None]], dim=1)
            results[head].append(severity_metrics(out.cpu().numpy(), y_all[valid_idx].cpu().numpy(), get_head(head),
                                                  task.severities, full=False))
    return results


def herlev(args: argparse.Namespace, out: Path) -> dict[str, list[dict]]:
    """`herlev reproduce` in a child process: metrics per head, one dict per fold."""
    cmd = [sys.executable, "-m", "herlev_cli.main", "reproduce", "--data", str(args.data), "--arch", args.arch,
           "--no-pretrained", "--size", str(args.size), "--epochs", str(args.epochs), "--bs", str(args.bs),
           "--lr", str(args.lr), "--folds", str(args.folds), "--seed", str(args.seed), "--keep", "last",
           "--mse-weight", str(args.mse_weight), "--device", args.device, "--out", str(out), "--quiet",
           *[a for h in args.heads for a in ("--head", h)]]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return {h: [json.loads((out / h / f"fold{k}" / "metrics.json").read_text()) for k in range(args.folds)]
            for h in args.heads}


def table(name: str, results: dict[str, list[dict]]) -> str:
    lines = [f"{name}:", "| head | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for head, folds in results.items():
        cells = []
        for m in METRICS:
            v = np.array([f[m] if f[m] is not None else math.nan for f in folds], dtype=float)
            cells.append(f"{np.nanmean(v):.3f} ± {np.nanstd(v):.3f}")
        lines.append(f"| {head} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=SHARED)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--mse-weight", type=float, default=1.0)
    p.add_argument("--heads", nargs="+", default=["cls", "reg", "cls_reg"])
    p.add_argument("--device", default="cuda" if _has_cuda() else "cpu")
    p.add_argument("--plain", type=Path, help=argparse.SUPPRESS)  # child mode: write the plain loop's metrics here
    args = p.parse_args()
    if args.plain is not None:
        args.plain.write_text(json.dumps(plain(args)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        child = [sys.executable, __file__, *sys.argv[1:], "--plain", str(Path(tmp) / "plain.json")]
        start = time.perf_counter()
        subprocess.run(child, check=True)
        t_plain = time.perf_counter() - start
        plain_results = json.loads((Path(tmp) / "plain.json").read_text())
        start = time.perf_counter()
        herlev_results = herlev(args, Path(tmp) / "herlev")
        t_herlev = time.perf_counter() - start
    runs = len(args.heads) * args.folds
    print(f"{args.arch}, {args.size} px, {args.epochs} epochs, batch {args.bs}, {len(args.heads)} head(s) x "
          f"{args.folds} folds on {args.device}")
    print(table(f"plain loop ({t_plain:.1f} s, {t_plain / runs:.1f} s per fold run)", plain_results))
    print(table(f"herlev reproduce ({t_herlev:.1f} s, {t_herlev / runs:.1f} s per fold run)", herlev_results))
    print(f"herlev / plain wall time = {t_herlev / t_plain:.2f}")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
