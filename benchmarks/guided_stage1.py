"""Benchmark: how well guided distillation's stage 1 fits the guided teacher, per guidance weight w, for a few
stage-1 settings (an ablation). Trains stage 1 of each variant from one label-dropout teacher, then measures:

- `fit_mse` (per w): mean squared error, in x space, of the stage-1 model's x_hat(z_t, c, w) against the guided
  teacher's x_hat_w(z_t), on 256 training images noised at t = 0.2, 0.5, 0.8 and 0.95 (the mean over the four
  t); `teacher_gap_w_plus_1` is the same distance between the teacher at w and at w + 1, for scale;
- `class_accuracy` and `frechet_classifier` of 500 samples, DDIM at --steps steps, for the stage-1 model (one
  network evaluation per step) and for the guided teacher (two), the same noise and balanced labels.

    python benchmarks/guided_stage1.py --teacher runs/bench-guided/run/teacher --out runs/stage1-ablation
    python benchmarks/guided_stage1.py --teacher T --out DIR --variants gate     # one variant (a process each)

Each variant's result is DIR/<variant>.json (skipped when present); a variant whose stage-1 model is already in
DIR/<variant>/stage1 is measured without training again. DIR/report.md gathers the results present.
Variants (all: the [distill] settings of the fashion_mnist preset, w in [0, 4], --updates stage-1 updates):
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def _variant(lr: str = "0", gate: str = "false", margin: str = "0", *extra: str) -> list[str]:
    """Every guided setting a variant depends on, spelled out, so a variant keeps its meaning when the preset changes."""
    return [f"guided.stage1_lr={lr}", f"guided.class_gate={gate}", f"guided.w_margin={margin}", *extra]


VARIANTS = {
    "base": _variant(),  # distill.lr (2e-4 in the preset), additive w embedding, w drawn from [0, 4]
    "lr1e-3": _variant("1e-3"),
    "gate": _variant("1e-3", "true"),
    "scale1": _variant("1e-3", "false", "0", "guided.embed_scale=1.0"),
    "margin1": _variant("1e-3", "true", "1"),  # the preset's since
}
__doc__ += "".join(f"    {k}: {' '.join(v)}\n" for k, v in VARIANTS.items())
WS = (0.0, 1.0, 2.0, 4.0)
TS = (0.2, 0.5, 0.8, 0.95)


def fit_errors(student, teacher, schedule, images, labels, null_label) -> dict:
    from progdistill.diffusion.guidance import guided_x_hat
    from progdistill.guidance import AtGuidance

    gen = torch.Generator().manual_seed(0)
    err = {w: 0.0 for w in WS}
    gap = {w: 0.0 for w in WS}
    with torch.no_grad():
        for t in TS:
            logsnr = schedule(torch.full((len(images),), t, dtype=torch.float64)).float()
            a2 = torch.sigmoid(logsnr)[:, None, None, None]
            z = a2.sqrt() * images + (1 - a2).sqrt() * torch.randn(images.shape, generator=gen)
            x = teacher(torch.cat([z, z]), torch.cat([logsnr, logsnr]),
                        torch.cat([labels, torch.full_like(labels, null_label)]))
            x_c, x_u = x[: len(z)], x[len(z):]
            for w in WS:
                if student is not None:
                    target = guided_x_hat(x_c, x_u, w)
                    err[w] += (AtGuidance(student, w)(z, logsnr, labels) - target).pow(2).mean().item() / len(TS)
                gap[w] += (x_c - x_u).pow(2).mean().item() / len(TS)  # x_hat_{w+1} - x_hat_w, the same for every w
    return {"fit_mse": err, "teacher_gap_w_plus_1": gap}


def measure(model, record, cfg, steps, num, per_step) -> dict:
    from progdistill.build import schedule_of
    from progdistill.evaluation.classifier import class_accuracy, feature_stats, load_classifier
    from progdistill.evaluation.frechet import frechet_distance
    from progdistill.evaluation.images import reference_sets
    from progdistill.sampling import balanced_labels, generate

    clf = load_classifier("cpu")
    reference, _, _ = reference_sets(cfg, num, 1234)
    ref = feature_stats(reference, clf)
    labels = balanced_labels(num, model.spec.num_classes)
    out = {"class_accuracy": {}, "frechet_classifier": {}, "nfe": per_step * steps}
    for w in WS:
        x = generate(model, schedule_of(model.spec), steps, num, model.spec.data_shape, sampler="ddim", guidance=w,
                     clip=record["sampling"]["clip"], seed=1234, batch_size=500, labels=labels, progress=False)
        out["class_accuracy"][w] = class_accuracy(x, labels, clf)
        out["frechet_classifier"][w] = frechet_distance(*feature_stats(x, clf), *ref)
    return out


def report(out: Path) -> str:
    results = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
    lines = ["| variant | settings | " + " | ".join(f"w = {w:g}: acc / FD / fit" for w in WS) + " |",
             "|---|---|" + "---|" * len(WS)]
    for name, r in results.items():
        cells = []
        for w in WS:
            k = str(w)
            fit = f"{r['fit_mse'][k]:.4f}" if r.get("fit_mse") else "-"
            cells.append(f"{r['class_accuracy'][k]:.3f} / {r['frechet_classifier'][k]:.1f} / {fit}")
        lines.append(f"| {name} | {' '.join(r.get('overrides', [])) or '-'} | " + " | ".join(cells) + " |")
    gaps = next((r["teacher_gap_w_plus_1"] for r in results.values() if "teacher_gap_w_plus_1" in r), None)
    if gaps:  # x_hat_{w+1} - x_hat_w = x_hat(c) - x_hat(null) whatever w: one number
        lines += ["", "acc: class accuracy; FD: classifier Frechet distance; fit: stage-1 fit_mse. For scale, the "
                  f"teacher's x_hat at w against w + 1 (x_hat(c) - x_hat(null)), same measure: "
                  f"{sum(gaps.values()) / len(gaps):.4f}"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="a label-dropout Fashion-MNIST teacher (checkpoint stem)")
    p.add_argument("--out", required=True)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--updates", type=int, default=600, help="stage-1 updates of every variant")
    p.add_argument("--steps", type=int, default=32, help="DDIM steps of the sample measures")
    p.add_argument("--num", type=int, default=500)
    p.add_argument("--no-teacher", action="store_true", help="skip the guided teacher's row")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from progdistill.build import load_denoiser, schedule_of
    from progdistill.config import load_config
    from progdistill.evaluation.images import reference_sets
    from progdistill.training.guided import train_stage1

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher, trecord, tcfg = load_denoiser(a.teacher)
    _, held, held_labels = reference_sets(tcfg, 256, 99)  # floor images: training rows, their own labels
    null = teacher.spec.num_classes
    names = [v for v in a.variants.split(",") if v]
    unknown = set(names) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}")
    if not a.no_teacher and not (out / "teacher.json").is_file():
        r = measure(teacher, trecord, tcfg, a.steps, a.num, 2)
        r |= {"overrides": [f"guided teacher, {2 * a.steps} network evaluations"]}
        r |= {"teacher_gap_w_plus_1": fit_errors(None, teacher, schedule_of(teacher.spec), held, held_labels,
                                                 null)["teacher_gap_w_plus_1"]}
        (out / "teacher.json").write_text(json.dumps(r, indent=2))
    for name in names:
        if (out / f"{name}.json").is_file():
            continue
        overrides = ["data.workers=0", "guided.checkpoint_every=0", f"guided.stage1_updates={a.updates}",
                     *VARIANTS[name]]
        cfg = load_config("fashion_mnist", ["train.label_dropout=0.1", *overrides])
        t0, stem = time.time(), out / name / "stage1"
        if not stem.with_suffix(".json").is_file():  # a stage-1 model already there is measured as it is
            stem = train_stage1(a.teacher, out / name, cfg, progress=False)
        seconds = time.time() - t0
        model, record, mcfg = load_denoiser(stem)
        r = measure(model, record, mcfg, a.steps, a.num, 1)
        r |= fit_errors(model, teacher, schedule_of(teacher.spec), held, held_labels, null)
        r |= {"overrides": VARIANTS[name], "stage1_seconds": round(seconds, 1), "updates": a.updates}
        (out / f"{name}.json").write_text(json.dumps(r, indent=2))
        print(f"[{name}] done in {seconds:.0f} s", flush=True)
    print(report(out))


if __name__ == "__main__":
    main()
