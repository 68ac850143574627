"""benchmarks/gpu.sh, the GPU run of docs/benchmarks.md: its --tiny mode (CPU, tiny sizes) runs here so the script
cannot rot before a GPU session runs it at full size."""

import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_gpu  # noqa: E402

# preprocess: load_clip, CLIP model alone, encode_images, mel on the CPU (no GPU row on a CPU); one row per batch
ROWS = {"preprocess": 4, "generate": len(bench_gpu.TINY.batches), "distilled": len(bench_gpu.TINY.batches),
        "train": 1, "train-compile": 1}


@pytest.mark.slow
def test_gpu_script_tiny_writes_every_row_with_positive_numbers(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--tiny", "--out", str(tmp_path)],
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["errors"] == {} and report["tiny"] and report["device"].startswith("CPU")
    rows = report["rows"]
    assert Counter(r["section"] for r in rows) == ROWS
    for r in rows:
        assert r["values"] and all(math.isfinite(v) and v > 0 for v in r["values"].values()), r
        assert r["row"] in proc.stdout  # printed as it was measured
    # guided rows run 2 UNet passes per step (one batch of 2B), the distilled rows one per step
    passes = {r["section"]: r["values"]["unet_passes_per_clip"] for r in rows if "unet_passes_per_clip" in r["values"]}
    assert passes == {"generate": 2 * bench_gpu.TINY.steps, "distilled": bench_gpu.DISTILLED_STEPS}
    table = [line for line in (tmp_path / "gpu.md").read_text().splitlines() if line.startswith("| ")]
    assert len(table) == 2 + len(rows)  # the header and its rule, then one line per row
    assert all(f"| {r['section']} | {r['row']} | " in "\n".join(table) for r in rows)


def test_a_failing_section_keeps_the_other_rows_and_exits_1(tmp_path, monkeypatch, capsys):
    def fails(self):
        raise RuntimeError("CUDA out of memory")

    def one_row(self):
        self.report.add("distilled", "stand-in row", s_per_clip=0.5)

    monkeypatch.setattr(bench_gpu.Bench, "generate", fails)
    monkeypatch.setattr(bench_gpu.Bench, "distilled", one_row)
    assert bench_gpu.main(["--tiny", "--out", str(tmp_path), "--sections", "generate", "distilled"]) == 1
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["errors"] == {"generate": "RuntimeError: CUDA out of memory"}
    assert [r["row"] for r in report["rows"]] == ["stand-in row"]  # the section after the failure still ran
    markdown = (tmp_path / "gpu.md").read_text()
    assert "| distilled | stand-in row | 0.5 s/clip |" in markdown and "generate: FAILED" in markdown
    assert "generate: FAILED (RuntimeError: CUDA out of memory)" in capsys.readouterr().out
