"""The prepared GPU check (benchmarks/gpu_check.py) runs end to end on the CPU with every size shrunk, so the one
command a GPU session runs cannot rot between sessions."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "gpu_check.json").read_text())
    sections = res["sections"]
    assert {k: v["status"] for k, v in sections.items()} == {
        k: "ok" for k in ("env", "throughput", "latency", "agreement", "e2e", "profile")}
    thr = sections["throughput"]
    assert thr["teacher_ours"] > 0 and thr["teacher_plain"] > 0 and thr["distill_ours"] > 0
    assert thr["flops_per_image_train"] > 2 * thr["flops_per_image_forward"] > 0
    assert {(r["batch"], r["steps"]) for r in sections["latency"]["rows"]} == {(1, 1), (1, 4), (2, 1), (2, 4)}
    for name in ("teacher", "distill"):
        agr = sections["agreement"][name]
        assert len(agr["loss_fp32"]) == len(agr["loss_bf16"]) == res["sizes"]["agree_steps"]
    e2e = sections["e2e"]
    assert all(p["rc"] == 0 for p in e2e["phases"].values()) and list(e2e["phases"]) == [
        "train", "distill", "evaluate", "export"]
    assert {r["metric"] for r in e2e["evaluate_rows"]} == {"teacher_rms", "teacher_psnr", "student_updates",
                                                           "images_seen", "teacher_evals", "self_evals",
                                                           "forward_equivalent"}
    assert e2e["exported_pipeline"]["finite"]
    for name in ("gpu_check.md", "gpu_check.log", "profile_train.txt", "e2e_report.md", "e2e_samples_1step.png"):
        assert (out / name).is_file(), name


def test_gpu_check_records_a_failed_section_and_goes_on(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))

    def boom(*a, **k):
        raise RuntimeError("planted failure")

    monkeypatch.setattr(gpu_check, "section_latency", boom)
    rc = gpu_check.main(["--out", str(tmp_path), "--dry-run", "--sections", "env,latency,agreement"])
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert rc == 1
    assert res["sections"]["latency"]["status"] == "failed" and "planted failure" in res["sections"]["latency"]["error"]
    assert res["sections"]["agreement"]["status"] == "ok" and res["sections"]["env"]["status"] == "ok"
