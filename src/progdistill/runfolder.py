"""The layout of a run folder, in one place. Every module that reads or writes a run asks here for the path.

    RUN/config.json                          the config a run was started with (provenance; `train --resume`
                                             starts from it when the run was killed before its first checkpoint)
    RUN/teacher.{safetensors,json}           the trained (or imported) teacher
    RUN/checkpoints/teacher_stepNNNNNNNN.*   periodic teacher checkpoints (the newest train.keep_checkpoints)
    RUN/students/student_NNNNsteps.*         the student of every finished distillation round
    RUN/students/distill_start.json          what the distillation started from and with (for `distill --resume`
                                             before its first checkpoint)
    RUN/students/checkpoints/roundRR_stepNNNNNNNN.*   mid-round checkpoints (the newest 2 of the current round)
    RUN/students/samples/roundRR_NNNNsteps.png        a sample grid per round
    RUN/log.jsonl, RUN/tensorboard/          scalars (and images) logged while the run works
    RUN/eval/                                `progdistill evaluate`'s default report folder

A guided distillation (docs/guided.md) writes a run folder of its own (default RUN/guided for the teacher RUN/teacher):

    GUIDED/stage1.{safetensors,json}         the w-conditioned stage-1 model (the first teacher of stage 2)
    GUIDED/checkpoints/stage1_stepNNNNNNNN.* stage-1 checkpoints (the newest 2)
    GUIDED/guided_start.json                 what it started from and with (`--resume` before the first checkpoint)
    GUIDED/students/...                      stage 2: the rounds' students, as in any run folder
"""

from __future__ import annotations

from pathlib import Path

TEACHER_PREFIX = "teacher_step"
STAGE1_PREFIX = "stage1_step"


def config_path(run: str | Path) -> Path:
    """The config a run was started with."""
    return Path(run) / "config.json"


def teacher_stem(run: str | Path) -> Path:
    """The run's teacher checkpoint, without suffix."""
    return Path(run) / "teacher"


def teacher_record(run: str | Path) -> Path:
    """The record file of the run's teacher; its presence marks a folder that holds a run."""
    return teacher_stem(run).with_suffix(".json")


def has_teacher(run: str | Path) -> bool:
    """Whether the run has a finished (or imported) teacher."""
    return teacher_record(run).is_file()


def teacher_checkpoints(run: str | Path) -> Path:
    """The folder of the periodic teacher checkpoints."""
    return Path(run) / "checkpoints"


def teacher_checkpoint(run: str | Path, step: int) -> Path:
    """The periodic teacher checkpoint of one step, without suffix."""
    return teacher_checkpoints(run) / f"{TEACHER_PREFIX}{step:08d}"


def has_teacher_checkpoints(run: str | Path) -> bool:
    """Whether the run holds checkpoints of a teacher training (finished or not)."""
    folder = teacher_checkpoints(run)
    return folder.is_dir() and any(folder.glob(TEACHER_PREFIX + "*.json"))


def distill_start(run: str | Path) -> Path:
    """What a distillation started from and with (training/rounds.py `record_start`)."""
    return students_dir(run) / "distill_start.json"


def students_dir(run: str | Path) -> Path:
    """The folder of the students of the distillation rounds."""
    return Path(run) / "students"


def student_stem(run: str | Path, steps: int) -> Path:
    """The student distilled for `steps` sampling steps, without suffix."""
    return students_dir(run) / f"student_{steps:04d}steps"


def run_of_checkpoint(checkpoint: str | Path, kind: str | None) -> Path:
    """The run folder a checkpoint of this kind lies in: a student's is RUN/students/, any other's RUN itself."""
    folder = Path(checkpoint).resolve().parent
    return folder.parent if kind == "student" else folder


def student_records(run: str | Path) -> list[Path]:
    """The record files of the finished rounds' students, in name order."""
    return sorted(students_dir(run).glob("student_*steps.json"))


def saved_students(run: str | Path) -> dict[int, Path]:
    """{sampling steps: checkpoint stem} of the students of the finished rounds."""
    from .checkpoint import read_record

    found = {}
    for path in student_records(run):
        found[int(read_record(path.with_suffix(""))["sampling_steps"])] = path.with_suffix("")
    return found


def round_checkpoints(run: str | Path) -> Path:
    """The folder of the mid-round checkpoints of the distillation."""
    return students_dir(run) / "checkpoints"


def round_prefix(round_: int) -> str:
    """The name prefix of one round's mid-round checkpoints."""
    return f"round{round_:02d}_step"


def round_sample_grid(run: str | Path, round_: int, steps: int) -> Path:
    """The sample grid drawn after one round."""
    return students_dir(run) / "samples" / f"round{round_:02d}_{steps:04d}steps.png"


def log_path(run: str | Path) -> Path:
    """The run's scalar log, one JSON object per line."""
    return Path(run) / "log.jsonl"


def tensorboard_dir(run: str | Path) -> Path:
    """The run's TensorBoard folder."""
    return Path(run) / "tensorboard"


def eval_dir(run: str | Path) -> Path:
    """The default report folder of `progdistill evaluate`."""
    return Path(run) / "eval"


def guided_dir(run: str | Path) -> Path:
    """The default folder of a guided distillation of RUN's teacher."""
    return Path(run) / "guided"


def default_guided_dir(checkpoint: str | Path) -> Path:
    """Where a guided distillation of this teacher checkpoint goes when no folder is given: beside it, guided/."""
    return guided_dir(Path(checkpoint).resolve().parent)


def stage1_stem(run: str | Path) -> Path:
    """A guided distillation's stage-1 model, without suffix."""
    return Path(run) / "stage1"


def has_stage1(run: str | Path) -> bool:
    """Whether the guided distillation's stage 1 has finished."""
    return stage1_stem(run).with_suffix(".json").is_file()


def stage1_checkpoints(run: str | Path) -> Path:
    """The folder of the stage-1 checkpoints of a guided distillation."""
    return Path(run) / "checkpoints"


def is_guided_run(run: str | Path) -> bool:
    """A folder holding a guided distillation: a stage-1 model or stage-1 checkpoints."""
    return (has_stage1(run) or any(stage1_checkpoints(run).glob(STAGE1_PREFIX + "*.json"))
            or guided_start(run).is_file())


def guided_start(run: str | Path) -> Path:
    """What a guided distillation started from and with (training/guided.py), for `--resume` before stage 1's first
    checkpoint."""
    return Path(run) / "guided_start.json"
