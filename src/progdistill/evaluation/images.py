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

import math
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .. import runfolder
from ..build import load_data, load_denoiser, schedule_of
from ..config import Config
from ..data.batches import to_unit_range
from ..sampling import balanced_labels
from .classifier import feature_stats, load_classifier
from .figures import SampleGrids, save_grid, to_uint8
from .frechet import frechet_distance
from .methods import BUDGET_METRICS, budget_of, method_rows, methods_table
from .plots import metric_vs_steps
from .rows import (DATA, DIFFUSERS_DDIM, DPM_SOLVER, STUDENT, TEACHER_ANCESTRAL, TEACHER_DDIM, Row, Weights,
                   names, rows_named)
from .runner import Evaluation, Job, Metric, Models, ReportFiles, Sampling, data_rows, draw, run_evaluation
from .tables import markdown_table

__all__ = ["CLASSIFIER_METRIC", "HIGHER_IS_BETTER", "balanced_labels", "evaluate_images", "reference_sets",
           "save_grid", "teacher_agreement"]

CLASSIFIER_METRIC = "frechet_classifier"
FIDELITY_METRICS = ("fid", "kid", "isc")
AGREEMENT_METRICS = ("teacher_rms", "teacher_psnr")
HIGHER_IS_BETTER = ("isc", "teacher_psnr")
# The rows an image evaluation can report; diffusers' own DDIM only for an imported teacher.
IMAGE_ROWS = (TEACHER_DDIM, TEACHER_ANCESTRAL, DPM_SOLVER, STUDENT, DIFFUSERS_DDIM)
IMAGE_SAMPLERS = names((TEACHER_DDIM, TEACHER_ANCESTRAL, DPM_SOLVER, STUDENT))
# name in report -> the sampler it runs (a registry name, or "diffusers" for diffusers' own DDIMScheduler)
SAMPLER_KINDS = {row.name: row.sampler for row in IMAGE_ROWS}


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


# The reference subset of a large data set is drawn with its own seed, independent of the floor sample's.
REFERENCE_SUBSET_SEED_OFFSET = 1
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
    at most REFERENCE_MAX of them (a subset drawn with its own seed), and `num` training images drawn with `seed`
    with their labels. Only those rows are read."""
    train = load_data(cfg)
    try:
        test = load_data(cfg, split="test")
    except Exception:  # folder data has no test split: compare with the training images themselves
        test = train
    floor, floor_labels = floor_sample(train, num, seed)
    if len(test) <= REFERENCE_MAX:
        reference = _rows(test, torch.arange(len(test)))
    else:
        subset = torch.Generator().manual_seed(seed + REFERENCE_SUBSET_SEED_OFFSET)
        reference = _rows(test, torch.randperm(len(test), generator=subset)[:REFERENCE_MAX])
    return reference, floor, floor_labels


def evaluate_images(
    run: Path,
    out: Path,
    *,
    steps: list[int],
    num: int,
    seed: int,
    samplers: tuple[str, ...] = IMAGE_SAMPLERS,
    max_steps: dict[str, int] | None = None,
    inception_weights: str | Path | None = None,
    classifier: bool | None = None,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    progress: bool = True,
    reference_steps: int | None = None,
    methods: dict[str, Path] | None = None,
    method_steps: list[int] | None = None,
) -> list[dict]:
    """Rows {sampler, steps, metric, value} for every sampler and step count, written to out/report.json with
    out/report.md, one plot per metric and a sample grid per step count under out/samples/.

    The teacher-agreement rows compare every sampler's output with the teacher's DDIM at `reference_steps`
    (default: the largest of `steps`) from the same noise and labels; they are written for any image data, so a
    report exists even when no data-set metric applies (no classifier for the data, no Inception weights).

    `methods` ({label: run folder}): the students of other distillations of this teacher (pd, cd, tract) as rows
    of their own at the counts of `method_steps` (default: `steps`) they have; every student row carries its recorded
    budget, and report.md
    gets a table of the students against the teacher's best (evaluation/methods.py)."""
    requested = rows_named(tuple(samplers), IMAGE_ROWS)
    teacher, record, cfg = load_denoiser(runfolder.teacher_stem(run), device)
    requested = _with_diffusers_row(requested, record.get("diffusers_scheduler"))
    students = runfolder.saved_students(run) if STUDENT in requested else {}
    reference_job = Job(TEACHER_DDIM, reference_steps or max(steps))
    if reference_job.steps < 1:
        raise ValueError(f"reference_steps must be >= 1, got {reference_job.steps}")
    spec = teacher.spec
    sampling = Sampling(schedule_of(spec), num, spec.data_shape, seed, variance=record["sampling"]["variance"],
                        clip=record["sampling"]["clip"], batch_size=batch_size, device=device,
                        labels=balanced_labels(num, spec.num_classes), progress=progress,
                        diffusers_scheduler=record.get("diffusers_scheduler"))
    reference, floor_images, _ = reference_sets(cfg, num, seed)
    if classifier is None:
        classifier = spec.data_shape == (1, 28, 28)
    dataset_metrics = _dataset_metrics(reference, classifier, inception_weights, device)
    floor = data_rows(dataset_metrics, floor_images)
    method_jobs, sources = method_rows(methods or {}, method_steps or steps, {row.name for row in IMAGE_ROWS})
    models = Models(teacher, students, device, sources)
    # The teacher's many-step DDIM output from the evaluation noise: what every sampler is compared with.
    teacher_reference = draw(models, sampling, reference_job)
    floor_text = (f"Floor ('data' row): {len(floor_images)} training images against the reference set "
                  f"({len(reference)} images)")
    student_rows = ([STUDENT.name] if students else []) + list(sources)
    files = ReportFiles(tables=partial(image_tables, floor_text=floor_text, reference_steps=reference_job.steps,
                                       students=student_rows),
                        plots=plot_each_metric,
                        figures=SampleGrids(floor_images, lambda job: f"steps_{job.steps:04d}.png"))
    jobs = _image_jobs(requested, steps, max_steps or {}, students) + [Job(row, k) for row, k in method_jobs]
    metrics = [*dataset_metrics, partial(teacher_agreement, reference=teacher_reference)]
    budgets = lambda job: budget_of(models.student_path(job)) if job.row.weights is Weights.STUDENT else {}  # noqa
    evaluation = Evaluation(jobs, models, sampling, metrics, files, floor=floor, job_metrics=[budgets],
                            presampled={reference_job: teacher_reference}, progress=progress)
    return run_evaluation(evaluation, out)


def _with_diffusers_row(requested: tuple[Row, ...], diffusers_scheduler: dict | None) -> tuple[Row, ...]:
    """Users of an imported model see diffusers' own DDIM beside ours; other models cannot run it."""
    if diffusers_scheduler is not None and TEACHER_DDIM in requested and DIFFUSERS_DDIM not in requested:
        return (*requested, DIFFUSERS_DDIM)
    if diffusers_scheduler is None and DIFFUSERS_DDIM in requested:
        raise ValueError(f"sampler '{DIFFUSERS_DDIM.name}' needs an imported teacher (progdistill import-diffusers)")
    return requested


def _dataset_metrics(reference: Tensor, classifier: bool, inception_weights: str | Path | None,
                     device: torch.device | str) -> list[Metric]:
    """The data-set metrics that apply: the classifier Frechet distance, the Inception metrics given weights."""
    metrics: list[Metric] = []
    if classifier:
        metrics.append(ClassifierMetric(reference, device))
    if inception_weights:
        metrics.append(InceptionMetrics(reference, inception_weights, device))
    return metrics


def _image_jobs(requested: tuple[Row, ...], steps: list[int], max_steps: dict[str, int],
                students: dict[int, Path]) -> list[Job]:
    """Each teacher sampler at every count of `steps` up to its `max_steps`, then the students at theirs."""
    jobs = [Job(row, k) for row in requested if row is not STUDENT for k in steps if k <= max_steps.get(row.name, k)]
    return jobs + [Job(STUDENT, k) for k in sorted(students, reverse=True) if k in steps]


def image_tables(rows: list[dict], floor_text: str, reference_steps: int, students: list[str] = ()) -> str:
    """report.md: one table per metric, headed by which way is better (and, for agreement, against what); then the
    students of every method against the teacher's best, with their budgets."""
    parts = []
    for name in dict.fromkeys(r["metric"] for r in rows if r["metric"] not in BUDGET_METRICS):
        header = (f"### {name} ({'higher' if name in HIGHER_IS_BETTER else 'lower'} is better"
                  + (f"; against the teacher's {reference_steps}-step DDIM from the same noise)"
                     if name in AGREEMENT_METRICS else ")"))
        parts.append(f"{header}\n\n{markdown_table(rows, name, floor_text)}")
    quality = next((m for m in (CLASSIFIER_METRIC, "fid") if any(r["metric"] == m for r in rows)), None)
    if students and quality is not None:
        parts.append(f"### Students by method, against the teacher's best\n\n"
                     f"{methods_table(rows, quality, list(students), quality in HIGHER_IS_BETTER)}")
    return "\n".join(parts)


def plot_each_metric(rows: list[dict], out: Path) -> None:
    """OUT/<metric>_vs_steps.png per metric, the data row as its floor (the agreement reference's 0 left out)."""
    for name in dict.fromkeys(r["metric"] for r in rows if r["metric"] not in BUDGET_METRICS):
        floor = next((r["value"] for r in rows if r["sampler"] == DATA and r["metric"] == name), None)
        shown = [r for r in rows if r["metric"] == name and not (name in AGREEMENT_METRICS and r["value"] == 0)]
        if shown:
            metric_vs_steps(shown, out / f"{name}_vs_steps.png", name, floor=floor)
