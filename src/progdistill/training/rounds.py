"""The round loop of progressive distillation: halve N, the student becomes the teacher, fresh optimizer. What a
round trains (the students' network, targets, w for guided students, a warm-up) is resolved beforehand into a
`DistillPlan` (training/plan.py); the loop does not know which mode it runs.

Mid-round checkpoints (every distill.checkpoint_every updates) let a killed run resume exactly; a finished round
leaves students/student_NNNNsteps, from which distillation can also continue."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from .. import runfolder
from ..build import load_denoiser
from ..checkpoint import CheckpointError, read_record
from ..config import Config, config_from_json
from ..sampling import balanced_labels, generate
from .phase import Run, resume_config
from .players import train_phase
from .plan import DistillPlan, Round, plan_distillation, prepare_teacher
from .resume import latest_loadable
from .runlog import RunLog

# The per-round sample log draws its noise from this fixed seed, so every round's grid starts from the same noise.
ROUND_LOG_SEED = 4321


@dataclass
class Start:
    """Where a distillation starts: a checkpoint to distil from, the settings, and a mid-round checkpoint of its
    first round to resume from (None: start the round afresh)."""

    teacher: Path
    cfg: Config | None
    partial: Path | None = None

    def resume_from(self, rnd: Round) -> Path | None:
        """The mid-round checkpoint to continue `rnd` from (the first round only), checked to belong to it."""
        partial, self.partial = self.partial, None
        if partial is not None:
            record = read_record(partial)
            if int(record["round"]) != rnd.number or int(record["sampling_steps"]) != rnd.student_steps:
                raise CheckpointError(f"{partial}.json is for round {record['round']} ({record['sampling_steps']} "
                                      f"steps), but its teacher {self.teacher} starts round {rnd.number} "
                                      f"({rnd.student_steps} steps)")
        return partial


def resume_point(out: Path) -> tuple[Path | None, Path | None]:
    """(newest loadable mid-round checkpoint, last finished student) of a distillation run folder."""
    partial = latest_loadable(runfolder.round_checkpoints(out), "round*_step*")
    students = runfolder.saved_students(out)
    return partial, (students[min(students)] if students else None)


def find_start(teacher_stem: str | Path | None, out: Path, cfg: Config | None, resume: bool) -> Start:
    """resume=True: the run in `out` continues from its newest mid-round checkpoint (with that checkpoint's
    [distill] settings), else from its last finished student, else from `teacher_stem` or its own teacher."""
    if resume:
        partial, last_student = resume_point(out)
        if partial is not None:
            record = read_record(partial)
            return Start(Path(record["teacher"]), resume_config(record, cfg, ("distill",), partial), partial)
        started = started_distillation(out) if last_student is None else None
        if last_student is not None:
            teacher_stem = last_student
        elif started is not None:
            return started
        elif teacher_stem is None and runfolder.has_teacher(out):
            teacher_stem = runfolder.teacher_stem(out)
    if teacher_stem is None:
        raise CheckpointError(f"nothing to distil: {out} holds no teacher, student or mid-round checkpoint")
    return Start(Path(teacher_stem), cfg)


def record_start(out: Path, start: Start, cfg: Config, path: Path | None = None) -> None:
    """Write what this distillation starts from and with (`cfg`: its settings before "auto" is resolved), so that
    `--resume` killed before the first checkpoint starts it again the same way instead of with the teacher's own
    settings. `path`: default RUN/students/distill_start.json."""
    path = path or runfolder.distill_start(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"teacher": str(start.teacher), "config": cfg.to_dict()}, indent=2, sort_keys=True))


def started_distillation(out: Path, path: Path | None = None) -> Start | None:
    """The Start recorded by `record_start` in `out` (or at `path`), said on stderr, or None when there is none."""
    path = path or runfolder.distill_start(out)
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        start = Start(Path(saved["teacher"]), config_from_json(saved["config"]))
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path} is not a readable distillation start ({e}); start the distillation again "
                              "with --from") from None
    print(f"progdistill: {out} has no distillation checkpoint yet; starting it from {start.teacher} with its saved "
          f"settings ({path.name})", file=sys.stderr)
    return start


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
    mixed_precision are used from it. resume=True continues the run in `out` exactly (see `find_start`)."""
    out = Path(out)
    start = find_start(teacher_stem, out, cfg, resume)
    teacher, record, ckpt_cfg = load_denoiser(start.teacher)
    plan = plan_distillation(teacher.spec, record, ckpt_cfg, start.cfg)
    run = Run.open(plan.cfg, out, progress=progress)
    teacher, teacher_stem, stems = prepare_teacher(teacher, plan, run), start.teacher, []
    if not resume and run.accelerator.is_main_process:
        record_start(out, start, start.cfg if start.cfg is not None else ckpt_cfg)
    if resume and not plan.rounds and start.partial is None:
        print(f"progdistill: the distillation in {out} is finished ({teacher_stem}); nothing left to resume",
              file=sys.stderr)
    bar = tqdm(total=len(plan.rounds), desc="distill rounds", disable=not progress, dynamic_ncols=True)
    try:
        for rnd in plan.rounds:
            student, resume_from = plan.student(teacher, run), start.resume_from(rnd)
            teacher = plan.round_teacher(teacher)
            if resume_from is None and rnd is plan.rounds[0]:
                plan.warm_up(teacher, student, rnd, run)
            phase = plan.phase(rnd, out, teacher_stem, student)
            result = train_phase(phase, student, plan.objective(teacher, rnd), run, resume_from=resume_from)
            log_round(run, plan, rnd, teacher, result)
            stems.append(phase.final)
            if on_round is not None:
                on_round(phase.final, rnd.student_steps)
            teacher, teacher_stem = result.sampling.eval().requires_grad_(False), phase.final
            bar.update(1)
    finally:
        bar.close()
        run.close()
    return stems


def log_round(run: Run, plan: DistillPlan, rnd: Round, teacher, result) -> None:
    """The round's summary in the run log (main process): its final loss and, with distill.log_samples, how far
    the student's samples land from its teacher's."""
    if not run.accelerator.is_main_process:
        return
    summary = {"student_steps": rnd.student_steps, **({"final_loss": result.history[-1][1]} if result.history else {})}
    if plan.cfg.distill.log_samples:
        summary |= round_sample_gaps(run.runlog, teacher, result.sampling, plan.schedule, rnd.teacher_steps,
                                     rnd.student_steps, rnd.number, plan.spec.data_shape, plan.spec.num_classes,
                                     plan.cfg.distill.log_samples, run.accelerator.device, run.out, w=plan.log_w)
    run.runlog.scalars("round", rnd.number, summary)


def round_sample_gaps(runlog: RunLog, teacher, student, schedule, n: int, m: int, r: int, data_shape,
                      num_classes: int, num: int, device, out: Path, w: float | None = None) -> dict[str, float]:
    """Per round: how far the m-step student lands from its n-step teacher (RMS over `num` samples from the same
    noise), beside the teacher's own m-step distance (what distillation should beat); images get a grid of the
    student's samples in RUN/students/samples/ and TensorBoard. `w`: the guidance weight of guided students (the
    middle of their range)."""
    kw = dict(seed=ROUND_LOG_SEED, labels=balanced_labels(num, num_classes), device=device, guidance=w)
    target = generate(teacher, schedule, n, num, data_shape, **kw)
    fast = generate(student.eval(), schedule, m, num, data_shape, **kw)  # it is the next round's (eval) teacher
    short = generate(teacher, schedule, m, num, data_shape, **kw)
    if len(data_shape) == 3:
        runlog.images("students/samples", fast, r, png=runfolder.round_sample_grid(out, r, m))
    rms = lambda a, b: float((a - b).pow(2).mean().sqrt())  # noqa: E731
    return {"student_vs_teacher_rms": rms(fast, target), "teacher_short_vs_teacher_rms": rms(short, target)}
