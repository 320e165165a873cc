"""scripts/gpu_check.py runs on CPU with --tiny (the same code a GPU session runs at full size)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.py"


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_check_tiny_on_cpu(tmp_path, dtype):
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--dtype", dtype, "--rows", "8", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["pass"] and report["shape"] == "tiny" and report["dtype"] == dtype
    exact = report["exact"]
    assert exact["golden_vs_wrapper"]["top1_agreement"] == 1.0
    if dtype == "float32":
        # In fp32 every path computes the same numbers up to summation order: no argmax flips.
        assert exact["golden_vs_wrapper"]["max_abs_logit_diff"] < 1e-4
        assert exact["cached_vs_full"]["max_abs_logit_diff"] < 1e-4
        assert exact["engine_greedy_vs_full_argmax"] == 1.0
    assert report["speed"]["batch1"]["rows"] == 7 and report["speed"]["batch1"]["rows_per_s"] > 0
    assert report["memory"]["parameters"] > 0
