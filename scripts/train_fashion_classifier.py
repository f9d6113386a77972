#!/usr/bin/env python
"""Train the Fashion-MNIST feature classifier behind our offline FID-style metric and ship its weights.

Writes src/progdistill/evaluation/weights/fashion_mnist_classifier.safetensors (the state dict) and
fashion_mnist_classifier.json (test accuracy, the Frechet floor of 10k train images vs the 10k test images,
the training settings, date and this command). CPU is enough: 3 epochs take about 5-6 minutes on one core.

    python scripts/train_fashion_classifier.py            # defaults = the shipped weights
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gzip
import hashlib
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from progdistill.evaluation.classifier import WEIGHTS_NAME, FashionClassifier, feature_stats
from progdistill.evaluation.frechet import frechet_distance

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "src" / "progdistill" / "evaluation" / "weights"
FALLBACK_ROOT = Path("/usr/share/datasets/fashion-mnist")


def _read_idx_gz(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def _load_split_fallback(root: Path, split: str) -> tuple[Tensor, Tensor]:
    """Private reader for the gzipped IDX files, used only when progdistill.data.images is unavailable."""
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx_gz(root / f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)
    labels = _read_idx_gz(root / f"{prefix}-labels-idx1-ubyte.gz", 8)
    x = torch.from_numpy(images.astype(np.float32)).div_(127.5).sub_(1.0)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_split(root: str | None, split: str) -> tuple[Tensor, Tensor, str]:
    """(x [N,1,28,28] in [-1,1], labels [N], source description) for split 'train' or 'test'."""
    try:
        from progdistill.data.images import load_fashion_mnist
    except Exception as e:  # noqa: BLE001 - the library loader may not exist yet; fall back to the raw files
        print(f"progdistill.data.images unavailable ({e!r}); reading IDX files directly", file=sys.stderr)
        x, y = _load_split_fallback(Path(root) if root else FALLBACK_ROOT, split)
        return x, y, "private IDX reader"
    data = load_fashion_mnist(root, split)
    return data.x, data.labels, "progdistill.data.images.load_fashion_mnist"


def augment(x: Tensor, gen: torch.Generator, flip: bool, max_shift: int) -> Tensor:
    """Random horizontal flips and integer shifts of up to max_shift pixels (background -1 fills the border)."""
    if flip:
        f = torch.rand(x.shape[0], generator=gen) < 0.5
        x = torch.where(f[:, None, None, None], x.flip(-1), x)
    if max_shift > 0:
        k = max_shift
        padded = F.pad(x, (k, k, k, k), value=-1.0)
        dx = torch.randint(0, 2 * k + 1, (x.shape[0],), generator=gen).tolist()
        dy = torch.randint(0, 2 * k + 1, (x.shape[0],), generator=gen).tolist()
        x = torch.stack([padded[i, :, dy[i] : dy[i] + 28, dx[i] : dx[i] + 28] for i in range(x.shape[0])])
    return x


@torch.no_grad()
def accuracy(model: FashionClassifier, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = sum(int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
                  for i in range(0, x.shape[0], batch_size))
    return correct / x.shape[0]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST IDX files (default: library search)")
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3, help="Adam peak learning rate (linear warmup, cosine decay)")
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--no-flip", dest="flip", action="store_false", help="disable random horizontal flips")
    p.add_argument("--max-shift", type=int, default=1, help="random shifts of up to this many pixels")
    p.add_argument("--floor-n", type=int, default=10_000, help="train images for the train-vs-test Frechet floor")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 is fastest on a shared 2-core machine; results can differ slightly)")
    p.add_argument("--train-subset", type=int, default=None, help="use only the first N train images (smoke tests)")
    args = p.parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in ([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])))

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    x_train, y_train, source = load_split(args.data_root, "train")
    x_test, y_test, _ = load_split(args.data_root, "test")
    if args.train_subset is not None:
        x_train, y_train = x_train[: args.train_subset], y_train[: args.train_subset]
    print(f"data: train {tuple(x_train.shape)}, test {tuple(x_test.shape)} via {source}")

    model = FashionClassifier(dropout=args.dropout)
    n_params = sum(t.numel() for t in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = x_train.shape[0] // args.batch_size
    total = args.epochs * steps_per_epoch

    def lr_at(step: int) -> float:
        if step < args.warmup_steps:
            return args.lr * (step + 1) / args.warmup_steps
        t = (step - args.warmup_steps) / max(1, total - args.warmup_steps)
        return args.lr * 0.5 * (1 + math.cos(math.pi * t))

    t0 = time.time()
    step = 0
    history = []
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(x_train.shape[0], generator=gen)
        run_loss, run_n = 0.0, 0
        for b in range(steps_per_epoch):
            idx = perm[b * args.batch_size : (b + 1) * args.batch_size]
            xb = augment(x_train[idx], gen, args.flip, args.max_shift)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = F.cross_entropy(model(xb), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            run_loss += loss.item() * len(idx)
            run_n += len(idx)
            if step % 100 == 0:
                print(f"epoch {epoch + 1} step {step}/{total} loss {run_loss / run_n:.4f} "
                      f"({time.time() - t0:.0f}s)", flush=True)
        acc = accuracy(model, x_test, y_test)
        history.append({"epoch": epoch + 1, "train_loss": run_loss / run_n, "test_accuracy": acc})
        print(f"epoch {epoch + 1}: train loss {run_loss / run_n:.4f}, test accuracy {acc:.4f} "
              f"({time.time() - t0:.0f}s)", flush=True)
    train_seconds = time.time() - t0

    model.eval()
    test_acc = accuracy(model, x_test, y_test)
    floor_idx = torch.randperm(x_train.shape[0], generator=torch.Generator().manual_seed(args.seed + 1))[: args.floor_n]
    mu_tr, cov_tr = feature_stats(x_train[floor_idx], model)
    mu_te, cov_te = feature_stats(x_test, model)
    floor = frechet_distance(mu_tr, cov_tr, mu_te, cov_te)
    print(f"test accuracy {test_acc:.4f}; Frechet floor ({args.floor_n} train vs {x_test.shape[0]} test) {floor:.4f}")

    from safetensors.torch import save_file

    args.out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = args.out_dir / WEIGHTS_NAME
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(weights_path), metadata={"format": "pt", "model": "progdistill FashionClassifier"})
    weights_path.chmod(0o644)  # safetensors writes 0600; the file ships as package data
    blob = weights_path.read_bytes()
    info = {
        "model": "progdistill.evaluation.classifier.FashionClassifier",
        "feature_layer": "features(x): ReLU(linear 1152->256), 256-d penultimate activations",
        "test_accuracy": test_acc,
        "frechet_floor_train_vs_test": floor,
        "frechet_floor_note": f"Frechet distance between features of {args.floor_n} random train images "
                              f"(seed {args.seed + 1}) and all {x_test.shape[0]} test images",
        "parameters": n_params,
        "weights_file": WEIGHTS_NAME,
        "weights_bytes": len(blob),
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "training": {
            "data": f"Fashion-MNIST train split ({x_train.shape[0]} images, via {source}), inputs in [-1, 1]",
            "optimizer": "Adam",
            "lr": args.lr,
            "schedule": f"linear warmup {args.warmup_steps} steps, cosine decay to 0",
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "steps": total,
            "dropout": args.dropout,
            "augmentation": {"horizontal_flip": args.flip, "max_shift_px": args.max_shift},
            "seed": args.seed,
            "threads": args.threads,
            "seconds": round(train_seconds, 1),
            "history": history,
        },
        "torch_version": torch.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
    }
    json_path = weights_path.with_suffix(".json")
    json_path.write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {weights_path} ({len(blob) / 1e6:.2f} MB) and {json_path}")


if __name__ == "__main__":
    main()
