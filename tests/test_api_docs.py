"""docs/api.md is true: its examples run, in order, as one script; the public names it lists exist; the deprecated
alias works and warns."""

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import progdistill

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
FASHION = Path(os.environ.get("PROGDISTILL_FASHION_MNIST_SYSTEM_DIR", "/usr/share/datasets/fashion-mnist"))


def _examples() -> str:
    return "\n".join(re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S))


@pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").exists()
                    and not (FASHION / "train-images-idx3-ubyte").exists(),
                    reason="the image example reads Fashion-MNIST (scripts/fashion-mnist.sh installs it)")
def test_api_examples_run(tmp_path):
    script = tmp_path / "examples.py"
    script.write_text(_examples())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PROGDISTILL_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout.splitlines()
    assert out[0] == "['student_0004steps', 'student_0002steps', 'student_0001steps']"
    assert out[1] == "torch.Size([1000, 2])"
    assert "power of two" in out[3]
    assert out[4] == "1" and out[5] == "teacher"
    assert (tmp_path / "runs" / "api" / "eval" / "report.json").is_file()


def test_every_public_name_is_documented_and_loads():
    text = DOC.read_text()
    for name in progdistill.__all__:
        assert f"`{name}" in text, name
        assert getattr(progdistill, name) is not None
    with pytest.raises(AttributeError):
        progdistill.no_such_name


def test_deprecated_generate_alias_warns_and_works():
    from progdistill import sampling
    from progdistill.evaluation import sampling as old

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert old.generate is sampling.generate
    assert any(issubclass(w.category, DeprecationWarning) and "progdistill.sampling.generate" in str(w.message)
               for w in caught)
