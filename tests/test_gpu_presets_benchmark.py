"""benchmarks/gpu_presets.py runs on a CPU with tiny settings and reports both phases of both presets."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_presets.py"


def test_gpu_presets_benchmark_smoke_run_on_cpu(tmp_path: Path, capsys) -> None:
    spec = importlib.util.spec_from_file_location("gpu_presets", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # type: ignore[union-attr]
    out = tmp_path / "figures.json"
    assert bench.main(["--device", "cpu", "--steps", "1", "--warmup", "1", "--batch-size", "2", "--scale", "0.25",
                       "--workers", "0", "--backbone", "tiny", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "40x@150 + 20x@75 px" in printed and "56 px crops" in printed and printed.count("ratio") == 2
    figures = json.loads(out.read_text())
    assert [r["preset"] for r in figures["results"]] == ["dmsl", "magnifier"]
    for r in figures["results"]:
        for phase in ("pipeline", "ceiling"):
            assert r[phase]["timed_samples"] == 2 and r[phase]["samples_per_s"] > 0 and r[phase]["peak_mib"] > 0
