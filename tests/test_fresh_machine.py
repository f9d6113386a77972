"""scripts/fashion-mnist.sh, the README demo's first step on a fresh machine: installs Debian's Fashion-MNIST
package with apt where it can, and otherwise steps aside. apt-get, apt-cache, id and sudo are stubs here that
record their calls, so nothing is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fashion-mnist.sh"
NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]

pytestmark = pytest.mark.skipif(shutil.which("sh") is None or shutil.which("env") is None,
                                reason="needs a POSIX sh and env")


def stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\necho \"{name} $*\" >> \"$LOG\"\n{body}\n")
    path.chmod(0o755)


def run(tmp_path: Path, *, apt: bool = True, uid: int = 0, sudo: bool = False, known: bool = False,
        install_rc: int = 0, strict: bool = False, system_files: bool = False, cache_files: bool = False):
    """Run the script with only stubs on PATH; returns (returncode, stderr, calls)."""
    bin_dir, system, cache, log = tmp_path / "bin", tmp_path / "system", tmp_path / "cache", tmp_path / "log"
    bin_dir.mkdir()
    for tool in ("env", "true"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    stub(bin_dir, "id", f"echo {uid}")
    if apt:
        stub(bin_dir, "apt-cache", f"exit {0 if known else 100}")
        # A successful install puts the IDX files where Debian's package does.
        files = " ".join(f'"$SYSTEM/{n}.gz"' for n in NAMES)
        mkdir, touch = shutil.which("mkdir"), shutil.which("touch")
        stub(bin_dir, "apt-get", f'case "$*" in *install*) [ {install_rc} = 0 ] || exit {install_rc}; '
                                 f'{mkdir} -p "$SYSTEM" && {touch} {files};; esac; exit 0')
    if sudo:
        stub(bin_dir, "sudo", '[ "$1" = -n ] && shift; exec "$@"')
    for folder, present in ((system, system_files), (cache / "fashion-mnist", cache_files)):
        if present:
            folder.mkdir(parents=True)
            for n in NAMES:
                (folder / f"{n}.gz").touch()
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "LOG": str(log), "SYSTEM": str(system),
           "PROGDISTILL_FASHION_MNIST_SYSTEM_DIR": str(system), "PROGDISTILL_CACHE": str(cache)}
    p = subprocess.run([shutil.which("sh"), str(SCRIPT), *(["--strict"] if strict else [])], env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    calls = log.read_text().splitlines() if log.exists() else []
    return p.returncode, p.stderr, calls


@pytest.mark.parametrize("where", ["system", "cache"])
def test_present_data_installs_nothing(tmp_path, where):
    rc, err, calls = run(tmp_path, system_files=where == "system", cache_files=where == "cache")
    assert rc == 0 and "found in" in err
    assert not [c for c in calls if c.startswith("apt")]


def test_root_reads_package_lists_then_installs(tmp_path):
    rc, err, calls = run(tmp_path)  # apt does not know the package yet: a fresh machine's empty lists
    assert rc == 0, err
    apt = [c for c in calls if c.startswith("apt")]
    assert apt == ["apt-cache show dataset-fashion-mnist", "apt-get update -q",
                   "apt-get install -y -q --no-install-recommends dataset-fashion-mnist"]
    assert "installed in" in err and (tmp_path / "system" / f"{NAMES[0]}.gz").is_file()


def test_known_package_installs_without_update(tmp_path):
    rc, err, calls = run(tmp_path, known=True)
    assert rc == 0, err
    assert [c for c in calls if c.startswith("apt-get")] == [
        "apt-get install -y -q --no-install-recommends dataset-fashion-mnist"]


def test_non_root_uses_passwordless_sudo(tmp_path):
    rc, err, calls = run(tmp_path, uid=1000, sudo=True)
    assert rc == 0, err
    assert "sudo -n true" in calls
    assert "sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends " \
           "dataset-fashion-mnist" in calls


def test_non_root_without_sudo_steps_aside(tmp_path):
    rc, err, calls = run(tmp_path, uid=1000)
    assert rc == 0 and "no usable sudo" in err and "download" in err
    assert not [c for c in calls if c.startswith("apt-get")]


def test_no_apt_steps_aside(tmp_path):
    rc, err, calls = run(tmp_path, apt=False)
    assert rc == 0 and "no apt-get" in err and "download Fashion-MNIST into" in err


@pytest.mark.parametrize("strict", [False, True])
def test_failed_install(tmp_path, strict):
    rc, err, calls = run(tmp_path, install_rc=100, strict=strict)
    assert "apt-get install dataset-fashion-mnist failed" in err
    assert rc == (1 if strict else 0)

