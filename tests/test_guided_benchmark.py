"""The guided benchmark's --teacher-rows-from reuses an earlier run's teacher rows only when that run's teacher is
byte-identical and its evaluation settings are the same (otherwise the reused rows would be of another teacher)."""

import importlib.util
import json
from argparse import Namespace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("guided_bench", ROOT / "benchmarks" / "guided_fashion_mnist.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

SETTINGS = {"ws": "0,2", "num": 10, "steps": "1,2", "teacher_steps": 8}


def _prev(tmp_path: Path, teacher: bytes = b"weights", steps=(1, 2, 8)) -> Path:
    prev = tmp_path / "prev"
    (prev / "run").mkdir(parents=True)
    (prev / "run" / "teacher.safetensors").write_bytes(teacher)
    rows = [{"sampler": "data", "steps": 0, "w": None, "metric": "class_accuracy", "value": 0.9}]
    rows += [{"sampler": s, "steps": k, "w": w, "metric": "frechet_classifier", "value": float(k + w)}
             for s in ("teacher_ddim", "student") for k in steps for w in (0.0, 2.0)]
    (prev / "report.json").write_text(json.dumps(rows))
    (prev / "goals.json").write_text(json.dumps({"settings": SETTINGS}))
    return prev


def _run(tmp_path: Path, teacher: bytes = b"weights") -> Path:
    run = tmp_path / "new" / "run"
    run.mkdir(parents=True)
    (run / "teacher.safetensors").write_bytes(teacher)
    return run


def test_reuses_teacher_and_data_rows_only(tmp_path):
    rows = bench.reusable_teacher_rows(_prev(tmp_path), _run(tmp_path), Namespace(**SETTINGS), [0.0, 2.0], [1, 2])
    assert {r["sampler"] for r in rows} == {"teacher_ddim", "data"}
    assert len([r for r in rows if r["sampler"] == "teacher_ddim"]) == 6


@pytest.mark.parametrize("case, message", [
    ("teacher", "not byte-identical"),
    ("num", "other num"),
    ("missing", "no teacher rows"),
    ("empty", "no report.json"),
])
def test_refuses_rows_of_another_evaluation(tmp_path, case, message):
    prev = _prev(tmp_path, steps=(1, 2) if case == "missing" else (1, 2, 8))
    run = _run(tmp_path, b"other weights" if case == "teacher" else b"weights")
    settings = {**SETTINGS, "num": 20} if case == "num" else SETTINGS
    if case == "empty":
        (prev / "report.json").unlink()
    with pytest.raises(SystemExit, match=message):
        bench.reusable_teacher_rows(prev, run, Namespace(**settings), [0.0, 2.0], [1, 2])
