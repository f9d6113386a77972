"""Evaluate an image run: sample quality against step count for the teacher's samplers and every student.

Metrics (lower is better unless noted):

- ``frechet_classifier``: Frechet distance between Gaussians fitted to the penultimate-layer features of the
  project's own Fashion-MNIST classifier (`classifier.py`), generated samples against the test split. Offline and
  cheap; only for 1x28x28 data. Not comparable with published FIDs.
- ``fid``, ``kid`` and ``isc`` (Inception score, higher is better): torch-fidelity's Inception-v3 metrics, the
  paper's, computed only when the user supplies the standard Inception weights file (it is never downloaded).
- ``teacher_rms`` and ``teacher_psnr`` (dB, higher is better): always, for any image data. The distance of each
  sampler's output from the teacher's many-step DDIM output started from the same noise (and labels): how
  faithfully a student (or a few-step baseline) reproduces its teacher, sample for sample. RMS over all pixels in
  [-1, 1]; PSNR = 20 log10(2 / RMS), 2 being the range of the data.

Every data-set metric has a ``data`` row: the same metric between ``num`` training images and the reference set, the
floor a perfect model of this size of sample would reach. The teacher-agreement metrics have none (their reference
is the teacher itself, whose own row at the reference step count is 0 / infinite).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import runfolder
from ..build import load_data, load_denoiser, schedule_of
from ..config import Config
from ..data.batches import to_unit_range
from .classifier import feature_stats, load_classifier
from .frechet import frechet_distance
from .plots import metric_vs_steps
from ..sampling import balanced_labels, generate
from .tables import markdown_table

CLASSIFIER_METRIC = "frechet_classifier"
FIDELITY_METRICS = ("fid", "kid", "isc")
AGREEMENT_METRICS = ("teacher_rms", "teacher_psnr")
HIGHER_IS_BETTER = ("isc", "teacher_psnr")
# name in report -> (sampler for `generate`, whose weights)
SAMPLER_KINDS = {
    "teacher_ddim": "ddim",
    "teacher_ancestral": "ancestral",
    "dpm_solver": "dpm_solver",
    "student": "ddim",
    # An imported diffusers model only: diffusers' own DDIMScheduler as the model's scheduler config sets it up
    # (interop.diffusers_io.diffusers_default_ddim), reported beside ours for every imported teacher.
    "diffusers_ddim": "diffusers",
}


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] floats -> uint8 [0, 255] (round to nearest), as images are stored."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def save_grid(rows: list[tuple[str, Tensor]], path: Path, ncols: int = 10) -> Path:
    """One row of `ncols` images per (label, images) entry, labelled on the left, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    width = ncols * 0.75
    fig, axes = plt.subplots(len(rows), 1, figsize=(width + 1.6, len(rows) * 0.8 + 0.2), squeeze=False)
    fig.subplots_adjust(left=1.5 / (width + 1.6), right=0.99, top=0.98, bottom=0.02, hspace=0.1)
    for ax, (label, images) in zip(axes[:, 0], rows):
        grid = make_grid(to_uint8(images[:ncols]).float() / 255, nrow=ncols, padding=1, pad_value=1.0)
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class ClassifierMetric:
    """Frechet distance in the shipped Fashion-MNIST classifier's feature space, against fixed reference images."""

    name = CLASSIFIER_METRIC

    def __init__(self, reference: Tensor, device: torch.device | str = "cpu"):
        if tuple(reference.shape[1:]) != (1, 28, 28):
            raise ValueError(
                f"the '{CLASSIFIER_METRIC}' metric needs 1x28x28 images (Fashion-MNIST); this run's images are "
                f"{tuple(reference.shape[1:])}: use the Inception metrics (--inception-weights) instead")
        self.classifier = load_classifier(device)
        self.reference = feature_stats(reference, self.classifier)

    def __call__(self, images: Tensor) -> dict[str, float]:
        return {self.name: frechet_distance(*feature_stats(images, self.classifier), *self.reference)}


def _rgb_uint8(x: Tensor) -> Tensor:
    """[-1, 1] images -> uint8 [N, 3, H, W] (grey images repeated over 3 channels), as Inception expects."""
    x = to_uint8(x)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class InceptionMetrics:
    """FID, KID and Inception score from torch-fidelity's Inception-v3 feature extractor and metric functions,
    with a weights file the user provides (it is loaded from disk only, never downloaded).

    The standard file is torch-fidelity's conversion of the TF Inception graph used by the original FID code,
    `weights-inception-2015-12-05-6726825d.pth` (README: "Inception FID"). Reference features are extracted once.
    """

    LAYERS = ("2048", "logits_unbiased")  # FID/KID features; Inception-score logits

    def __init__(self, reference: Tensor, weights: str | Path, device: torch.device | str = "cpu",
                 batch_size: int = 100):
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        weights = Path(weights).expanduser()
        if not weights.is_file():
            raise FileNotFoundError(
                f"Inception weights file {weights} not found. Download "
                "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                "weights-inception-2015-12-05-6726825d.pth on a machine with internet access and pass its path.")
        try:
            self.extractor = FeatureExtractorInceptionV3("inception-v3-compat", list(self.LAYERS),
                                                         feature_extractor_weights_path=str(weights))
        except Exception as e:  # a file that is not an Inception-v3 state dict
            raise ValueError(f"{weights} is not a torch-fidelity Inception-v3 weights file ({e})") from None
        self.device = torch.device(device)
        self.extractor.to(self.device)
        self.batch_size = batch_size
        self.reference = self.features(reference)

    @torch.no_grad()
    def features(self, x: Tensor) -> dict[str, Tensor]:
        parts: dict[str, list[Tensor]] = {k: [] for k in self.LAYERS}
        for i in range(0, len(x), self.batch_size):
            out = self.extractor(_rgb_uint8(x[i : i + self.batch_size]).to(self.device))
            for k, f in zip(self.LAYERS, out):
                parts[k].append(f.cpu())
        return {k: torch.cat(v) for k, v in parts.items()}

    def __call__(self, images: Tensor) -> dict[str, float]:
        from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
        from torch_fidelity.metric_isc import isc_features_to_metric
        from torch_fidelity.metric_kid import kid_features_to_metric

        f = self.features(images)
        n = min(len(images), len(self.reference["2048"]))
        fid = fid_statistics_to_metric(fid_features_to_statistics(f["2048"]),
                                       fid_features_to_statistics(self.reference["2048"]), False)
        kid = kid_features_to_metric(f["2048"], self.reference["2048"], kid_subset_size=min(1000, n),
                                     kid_subsets=100, verbose=False)
        isc = isc_features_to_metric(f["logits_unbiased"], splits=min(10, len(images)))
        return {"fid": fid["frechet_inception_distance"], "kid": kid["kernel_inception_distance_mean"],
                "isc": isc["inception_score_mean"]}


def teacher_agreement(x: Tensor, reference: Tensor) -> dict[str, float]:
    """RMS distance (all pixels, data in [-1, 1]) and PSNR in dB (peak-to-peak range 2) of `x` from `reference`."""
    rms = (x.double() - reference.double()).pow(2).mean().sqrt().item()
    if rms == 0:  # the reference itself: PSNR is infinite, which JSON cannot hold; the row is left out
        return {"teacher_rms": 0.0}
    return {"teacher_rms": rms, "teacher_psnr": 20 * math.log10(2.0 / rms)}


# The largest reference set materialised as float32 (FID's customary 50 000): a larger training set (a folder without
# test split, ImageNet) is sampled down to it rather than loaded whole (1.28M ImageNet 64x64 images are 63 GB).
REFERENCE_MAX = 50_000


def _rows(data, idx: Tensor) -> Tensor:
    """Examples `idx` of `data` as float32 in [-1, 1], reading only those rows (of a memory-mapped cache too)."""
    idx = idx.sort().values
    if data.is_uint8:
        return to_unit_range(torch.from_numpy(np.asarray(data.images[idx.numpy()])))
    return data.images[idx]


def floor_sample(train, num: int, seed: int) -> tuple[Tensor, Tensor | None]:
    """`num` training images drawn with `seed` (the floor rows' sample) and their labels."""
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[: min(num, len(train))]
    idx = idx.sort().values
    return _rows(train, idx), (train.labels[idx] if train.labels is not None else None)


def reference_sets(cfg: Config, num: int, seed: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """(reference, floor sample, its labels): the test split (or, for folders without one, the training images),
    at most REFERENCE_MAX of them drawn with `seed`, and `num` training images drawn with `seed` with their labels.
    Only those rows are read."""
    train = load_data(cfg)
    try:
        test = load_data(cfg, split="test")
    except Exception:  # folder data has no test split: compare with the training images themselves
        test = train
    floor, floor_labels = floor_sample(train, num, seed)
    if len(test) <= REFERENCE_MAX:
        reference = _rows(test, torch.arange(len(test)))
    else:
        reference = _rows(test, torch.randperm(len(test), generator=torch.Generator().manual_seed(seed + 1))
                          [:REFERENCE_MAX])
    return reference, floor, floor_labels


def evaluate_images(
    run: Path,
    out: Path,
    *,
    steps: list[int],
    num: int,
    seed: int,
    samplers: tuple[str, ...] = ("teacher_ddim", "teacher_ancestral", "dpm_solver", "student"),
    max_steps: dict[str, int] | None = None,
    inception_weights: str | Path | None = None,
    classifier: bool | None = None,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    progress: bool = True,
    reference_steps: int | None = None,
) -> list[dict]:
    """Rows {sampler, steps, metric, value} for every sampler and step count, written to out/report.json with
    out/report.md, one plot per metric and a sample grid per step count under out/samples/.

    The teacher-agreement rows compare every sampler's output with the teacher's DDIM at `reference_steps`
    (default: the largest of `steps`) from the same noise and labels; they are written for any image data, so a
    report exists even when no data-set metric applies (no classifier for the data, no Inception weights)."""
    unknown = sorted(set(samplers) - set(SAMPLER_KINDS))
    if unknown:
        raise ValueError(f"unknown sampler(s) {', '.join(unknown)}; choose from {', '.join(SAMPLER_KINDS)}")
    max_steps = max_steps or {}
    teacher, record, cfg = load_denoiser(runfolder.teacher_stem(run), device)
    students = runfolder.saved_students(run) if "student" in samplers else {}
    diffusers_scheduler = record.get("diffusers_scheduler")
    if diffusers_scheduler is not None and "teacher_ddim" in samplers and "diffusers_ddim" not in samplers:
        samplers = (*samplers, "diffusers_ddim")  # users of an imported model see diffusers' DDIM beside ours
    elif diffusers_scheduler is None and "diffusers_ddim" in samplers:
        raise ValueError("sampler 'diffusers_ddim' needs an imported teacher (progdistill import-diffusers)")
    shape = teacher.spec.data_shape
    schedule = schedule_of(teacher.spec)
    sampling = record["sampling"]
    labels = balanced_labels(num, teacher.spec.num_classes)
    reference, floor_images, _ = reference_sets(cfg, num, seed)

    metrics = []
    if classifier is None:
        classifier = shape == (1, 28, 28)
    if classifier:
        metrics.append(ClassifierMetric(reference, device))
    if inception_weights:
        metrics.append(InceptionMetrics(reference, inception_weights, device))
    def measure(images: Tensor) -> dict[str, float]:
        values = {}
        for m in metrics:
            values.update(m(images))
        return values

    rows = [{"sampler": "data", "steps": 0, "metric": k, "value": v} for k, v in measure(floor_images).items()]
    jobs = [(s, k) for s in samplers if s != "student" for k in steps if k <= max_steps.get(s, k)]
    jobs += [("student", k) for k in sorted(students, reverse=True) if k in steps]
    ref_steps = reference_steps or max(steps)
    if ref_steps < 1:
        raise ValueError(f"reference_steps must be >= 1, got {ref_steps}")

    def sample(model, sampler: str, k: int) -> Tensor:
        if SAMPLER_KINDS[sampler] == "diffusers":
            from ..interop.diffusers_io import diffusers_default_ddim

            x = diffusers_default_ddim(model, diffusers_scheduler, k, num, shape, seed=seed, batch_size=batch_size,
                                       device=device, labels=labels)
        else:
            x = generate(model, schedule, k, num, shape, sampler=SAMPLER_KINDS[sampler],
                         variance=sampling["variance"], clip=sampling["clip"], seed=seed, batch_size=batch_size,
                         device=device, labels=labels, progress=progress)
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"{sampler} at {k} steps produced non-finite samples")
        return x

    # The teacher's many-step DDIM output from the evaluation noise: what every sampler is compared with.
    teacher_reference = sample(teacher, "teacher_ddim", ref_steps)
    grids: dict[int, list[tuple[str, Tensor]]] = {}
    for sampler, k in tqdm(jobs, desc="evaluate", disable=not progress, dynamic_ncols=True):
        if sampler == "teacher_ddim" and k == ref_steps:
            x = teacher_reference
        else:
            x = sample(load_denoiser(students[k], device)[0] if sampler == "student" else teacher, sampler, k)
        values = {**measure(x), **teacher_agreement(x, teacher_reference)}
        rows += [{"sampler": sampler, "steps": k, "metric": name, "value": v} for name, v in values.items()]
        grids.setdefault(k, []).append((f"{sampler}", x[:10]))
        del x

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(rows, indent=2))
    names = list(dict.fromkeys(r["metric"] for r in rows))
    floor_text = (f"Floor ('data' row): {len(floor_images)} training images against the reference set "
                  f"({len(reference)} images)")
    header = {name: f"### {name} ({'higher' if name in HIGHER_IS_BETTER else 'lower'} is better"
                    + (f"; against the teacher's {ref_steps}-step DDIM from the same noise)" if name in
                       AGREEMENT_METRICS else ")") for name in names}
    (out / "report.md").write_text("\n".join(f"{header[name]}\n\n{markdown_table(rows, name, floor_text)}"
                                             for name in names))
    for name in names:
        floor = next((r["value"] for r in rows if r["sampler"] == "data" and r["metric"] == name), None)
        shown = [r for r in rows if r["metric"] == name and not (name in AGREEMENT_METRICS and r["value"] == 0)]
        if shown:
            metric_vs_steps(shown, out / f"{name}_vs_steps.png", name, floor=floor)
    for k, panel in grids.items():
        save_grid([("data", floor_images[:10]), *panel], out / "samples" / f"steps_{k:04d}.png")
    return rows
