"""The round loop of progressive distillation: halve N, the student becomes the teacher, fresh optimizer. A
w-conditioned teacher (guided distillation's stage-1 model, training/guided.py) makes every round guided: w is
drawn per example from its trained range and is an input of both the teacher's two steps and the student.

Mid-round checkpoints (every distill.checkpoint_every updates) let a killed run resume exactly; a finished round
leaves students/student_NNNNsteps, from which distillation can also continue."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .. import runfolder
from ..build import denoiser_from_spec, load_data, load_denoiser, make_accelerator, schedule_of
from ..config import Config, ConfigError, check_distill_steps, config_from_json
from ..data import make_batches
from ..diffusion.weighting import check_combination
from ..sampling import balanced_labels, generate
from ..checkpoint import CheckpointError, checkpoint_paths, read_record, save_checkpoint
from .objectives import DistillObjective, teacher_clip_threshold, training_w_range
from .phase import Phase, optim_settings, run_phase
from .resume import latest_loadable
from .reparam import convert_student, student_config
from .runlog import RunLog
from .teacher import shard_of


# eps students are distillable only while 1/alpha at t = 1 stays moderate: log-SNR -12 is 1/alpha ~ 400 (DDPM's
# linear betas over 1000 steps end at -10.1; the continuous schedules here end at -20, 1/alpha ~ 22 000).
EPS_LOGSNR_FLOOR = -12.0


student_stem = runfolder.student_stem
partial_dir = runfolder.round_checkpoints


saved_students = runfolder.saved_students


def resume_point(out: Path) -> tuple[Path | None, Path | None]:
    """(newest loadable mid-round checkpoint, last finished student) of a distillation run folder."""
    partial = latest_loadable(runfolder.round_checkpoints(out), "round*_step*")
    students = saved_students(out)
    return partial, (students[min(students)] if students else None)


def distill(
    teacher_stem: str | Path | None,
    out: Path,
    cfg: Config | None = None,
    *,
    on_round: Callable[[Path, int], None] | None = None,
    progress: bool = True,
    resume: bool = False,
) -> list[Path]:
    """Distil from a teacher or a saved student down to cfg.distill.target_steps; returns the students' stems.

    A teacher checkpoint starts at cfg.distill.start_steps; a student checkpoint of M steps continues from M.
    `cfg` defaults to the checkpoint's own config; only its [distill] and [perf] sections, device and
    mixed_precision are used from it.
    resume=True continues the run in `out` exactly: from its newest mid-round checkpoint (with that checkpoint's
    config), else from its last finished student, else from `teacher_stem`.
    """
    out = Path(out)
    partial = None
    if resume:
        partial, last_student = resume_point(out)
        if partial is not None:
            precord = read_record(partial)
            saved = config_from_json(precord["config"])
            if cfg is not None and cfg.distill != saved.distill:
                raise ConfigError(f"--resume continues with the [distill] settings saved in {partial}.json; drop "
                                  "--config/--set (or start a new run to change them)")
            teacher_stem, cfg = precord["teacher"], saved
        elif last_student is not None:
            teacher_stem = last_student
        elif teacher_stem is None and runfolder.has_teacher(out):
            teacher_stem = runfolder.teacher_stem(out)
    if teacher_stem is None:
        raise CheckpointError(f"nothing to distil: {out} holds no teacher, student or mid-round checkpoint")
    teacher, record, ckpt_cfg = load_denoiser(teacher_stem)
    cfg = (replace(ckpt_cfg, distill=cfg.distill, device=cfg.device, perf=cfg.perf,
                   mixed_precision=cfg.mixed_precision).validate() if cfg is not None else ckpt_cfg)
    teacher_param = teacher.spec.parameterization
    # The students' parameterization (distill.parameterization, its "auto" values resolved) from here on.
    cfg = student_config(replace(cfg, model=replace(cfg.model, parameterization=teacher_param)))
    # Students are the teacher's network (with distill.dropout, their own output), whatever the presets say now.
    spec = replace(teacher.spec, parameterization=cfg.model.parameterization)
    dc = cfg.distill
    w_range = spec.w_range  # a w-conditioned (guided) teacher: w drawn per example, both steps at that w
    if w_range is not None and spec.parameterization != teacher_param:
        raise ConfigError(f"guided distillation keeps the teacher's parameterization ({teacher_param}); set "
                          "distill.parameterization = \"same\"")
    # w drawn in training: the model's range, widened below by the guided.w_margin its stage 1 was trained with
    w_train = None if w_range is None else training_w_range(*w_range, cfg.guided.w_margin)
    check_combination(spec.parameterization, dc.weighting)
    clip_below = teacher_clip_threshold(dc.teacher_clip, dc.teacher_clip_logsnr)
    schedule = schedule_of(spec)
    if spec.parameterization == "eps" and schedule.logsnr_min < EPS_LOGSNR_FLOOR:
        raise ConfigError("model.parameterization 'eps' cannot be distilled on this schedule: x_hat = (z - sigma "
                          f"eps) / alpha amplifies errors by 1/alpha, and its log-SNR at t = 1 is "
                          f"{schedule.logsnr_min:.1f} < {EPS_LOGSNR_FLOOR} (paper section 2); train the "
                          "teacher with x, v or both, or give its students another output "
                          "(distill.parameterization = \"v\")")
    start = int(record["sampling_steps"]) if record["kind"] == "student" else dc.start_steps
    check_distill_steps(start, dc.target_steps,
                        start_name="the checkpoint's step count" if record["kind"] == "student" else
                        "distill.start_steps")
    accelerator = make_accelerator(cfg)
    data = load_data(cfg, progress=progress)
    if dc.batch_size > len(data):
        raise ConfigError(f"distill.batch_size ({dc.batch_size}) is larger than the data ({len(data)} examples)")
    data_shape, num_classes = spec.data_shape, spec.num_classes
    first_round = int(record.get("round", 0)) + 1
    teacher = teacher.to(accelerator.device)
    if cfg.perf.channels_last and len(data_shape) == 3:
        teacher = teacher.to(memory_format=torch.channels_last)
    current_teacher = Path(teacher_stem)
    stems: list[Path] = []
    n, r = start, first_round
    runlog = RunLog(out, enabled=accelerator.is_main_process)
    rounds = tqdm(total=max(start.bit_length() - dc.target_steps.bit_length(), 0), desc="distill rounds",
                  disable=not progress, dynamic_ncols=True)
    while n > dc.target_steps:
        m = n // 2
        updates = (dc.final_updates_per_round
                   if dc.final_updates_per_round > 0 and m <= dc.long_round_max_steps else dc.updates_per_round)
        student = denoiser_from_spec(spec.with_dropout(dc.dropout), cfg.perf).to(accelerator.device)
        student.load_state_dict(teacher.state_dict())  # student starts from the teacher's (sampling) weights
        if teacher_param != spec.parameterization and dc.convert_updates and partial is None:
            convert_student(teacher, student, schedule, n, data, cfg, out, accelerator=accelerator, runlog=runlog,
                            clip_below=clip_below, progress=progress)
        teacher_param = spec.parameterization
        resume_from = None
        if partial is not None:
            if int(precord["round"]) != r or int(precord["sampling_steps"]) != m:
                raise CheckpointError(f"{partial}.json is for round {precord['round']} ({precord['sampling_steps']}"
                                      f" steps), but its teacher {teacher_stem} starts round {r} ({m} steps)")
            resume_from, partial = partial, None
        # The students sample as their teacher does (clipping, variance), in their own number of steps.
        base = {"config": cfg.to_dict(), "model": student.spec.to_dict(), "sampling": record["sampling"] | {"steps": m},
                "round": r,
                "sampling_steps": m, "teacher": str(current_teacher)}
        phase = Phase(name=f"round{r:02d}", desc=f"round {r}: {n} -> {m} steps",
                      settings=optim_settings(dc, updates, "linear"), weighting=dc.weighting, seed=dc.seed + 1000 * r,
                      grad_accum=dc.grad_accum, checkpoints=runfolder.round_checkpoints(out),
                      prefix=runfolder.round_prefix(r), checkpoint_every=dc.checkpoint_every, keep=2,
                      record={"kind": "student_partial", **base}, fallback=current_teacher,
                      fallback_note=f" (round {r}; earlier rounds' students are intact)")

        def batches_after(start_batch: int, data_state: dict | None, r=r):
            return make_batches(data, dc.batch_size, dc.seed + r, shard=shard_of(accelerator),
                                workers=cfg.data.workers, device=accelerator.device, state=data_state,
                                start=start_batch)

        result = run_phase(phase, student, batches_after, DistillObjective(teacher, schedule, m, clip_below, w_range=w_train),
                           accelerator=accelerator, runlog=runlog, resume_from=resume_from, progress=progress,
                           perf=cfg.perf)
        sampling = result.sampling
        stem = runfolder.student_stem(out, m)
        if accelerator.is_main_process:  # one process writes; all hold the same weights
            save_checkpoint(stem, result.modules, {
                "kind": "student", **base, "sampling_weights": result.sampling_weights,
                "step": updates, "loss_history": result.history, "num_processes": accelerator.num_processes,
            })
            # The finished student supersedes this round's mid-round checkpoints.
            for old in runfolder.round_checkpoints(out).glob(f"{runfolder.round_prefix(r)}*.json"):
                for path in checkpoint_paths(old.with_suffix("")):
                    path.unlink(missing_ok=True)
            summary = {"student_steps": m, **({"final_loss": result.history[-1][1]} if result.history else {})}
            if dc.log_samples:
                summary |= round_sample_gaps(runlog, teacher, sampling, schedule, n, m, r, data_shape, num_classes,
                                             dc.log_samples, accelerator.device, out,
                                             w=None if w_range is None else 0.5 * (w_range[0] + w_range[1]))
            runlog.scalars("round", r, summary)
        accelerator.wait_for_everyone()
        stems.append(stem)
        if on_round is not None:
            on_round(stem, m)
        teacher = sampling.eval().requires_grad_(False)
        current_teacher = stem
        n, r = m, r + 1
        rounds.update(1)
    rounds.close()
    runlog.close()
    return stems


def round_sample_gaps(runlog: RunLog, teacher, student, schedule, n: int, m: int, r: int, data_shape,
                      num_classes: int, num: int, device, out: Path, w: float | None = None) -> dict[str, float]:
    """Per round: how far the m-step student lands from its n-step teacher (RMS over `num` samples from the same
    noise), beside the teacher's own m-step distance (what distillation should beat); images get a grid of the
    student's samples in RUN/students/samples/ and TensorBoard. `w`: the guidance weight of guided students (the
    middle of their range)."""
    kw = dict(seed=4321, labels=balanced_labels(num, num_classes), device=device, guidance=w)
    target = generate(teacher, schedule, n, num, data_shape, **kw)
    fast = generate(student.eval(), schedule, m, num, data_shape, **kw)  # it is the next round's (eval) teacher
    short = generate(teacher, schedule, m, num, data_shape, **kw)
    if len(data_shape) == 3:
        runlog.images("students/samples", fast, r, png=runfolder.round_sample_grid(out, r, m))
    rms = lambda a, b: float((a - b).pow(2).mean().sqrt())  # noqa: E731
    return {"student_vs_teacher_rms": rms(fast, target), "teacher_short_vs_teacher_rms": rms(short, target)}
