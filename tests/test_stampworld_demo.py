"""`clipsonic demo --world stampworld --fast` on a fake stamps folder: every step, its files, resuming, the CLI."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from support.stamps import make_stamps

from clipsonic.cli import main
from clipsonic.sonicworld.demo import read_metrics
from clipsonic.stampworld.demo import StampDemoConfig, run_stampworld_demo, stamp_demo_config

MODES = ("iq", "zs", "pd", "shift", "knn")


@pytest.fixture(scope="module")
def stamps(tmp_path_factory):
    return make_stamps(tmp_path_factory.mktemp("stamps"))


@pytest.fixture(scope="module")
def fast_demo(tmp_path_factory, stamps):
    out = tmp_path_factory.mktemp("demo") / "stamp"
    assert main(["-q", "demo", "--world", "stampworld", "--stamps", str(stamps), "--fast", "--out", str(out)]) == 0
    return out


def test_fast_demo_writes_every_part(fast_demo):
    metrics = read_metrics(fast_demo)
    config = StampDemoConfig.from_dict(metrics["config"])
    assert config == stamp_demo_config(fast=True) and config.world.concepts == ("dog", "cow", "owl", "cymbal")
    assert metrics["chance"] == 0.25
    for mode in MODES:  # a table row per mode, judged by the trained judge
        row = metrics["table"][mode]
        assert row["clips"] == 8 and row["fad"] is not None and 0.0 <= row["relevance"] <= 1.0
    assert metrics["table"]["reference"]["clips"] == 8 and metrics["sweep"] == {}
    assert set(metrics["step_seconds"]) == {"world", "clip", "data", "unet", "prior", "judge", "evaluate", "gallery",
                                            "report"}
    judge = json.loads((fast_demo / "judge" / "config.json").read_text())
    assert judge["labels"] == ["dog", "cow", "owl", "cymbal"] and (fast_demo / "judge" / "model.safetensors").is_file()
    results = json.loads((fast_demo / "evaluation" / "results.json").read_text())
    assert results["classifier"] == {"name": "stampworld", "labels": 4, "chance": 0.25}
    assert metrics["modality_gap"]["images"] == 4 * 16 and set(metrics["gallery_accuracy"]) == set(MODES)


def test_report_links_the_gallery(fast_demo):
    page = (fast_demo / "report.html").read_text()
    assert "CLIPSonic on StampWorld" in page and "→ judge:" in page
    links = re.findall(r"(?:src|href)=['\"]([^'\"]+)['\"]", page)
    assert sorted(x for x in links if x.endswith(".wav")) == sorted(
        f"gallery/{m}/{c}.wav" for m in MODES for c in ("dog", "cow", "owl", "cymbal"))
    assert "modality_gap.png" in links and all((fast_demo / x).is_file() for x in links)


def test_rerun_skips_the_finished_steps(fast_demo, stamps):
    def weights():
        return {p: p.stat().st_mtime_ns for f in ("clip", "run/checkpoints", "judge", "evaluation/audio")
                for p in (fast_demo / f).rglob("*") if p.suffix in (".safetensors", ".wav")}

    def numbers(metrics):
        return {k: v for k, v in metrics.items() if k not in ("step_seconds", "wall_seconds")}

    before, kept = read_metrics(fast_demo), weights()
    assert any("judge" in str(p) for p in kept) and len([p for p in kept if p.suffix == ".wav"]) == 7 * 8
    again = run_stampworld_demo(fast_demo, stamps=stamps, fast=True)
    assert weights() == kept and numbers(read_metrics(fast_demo)) == numbers(before)
    assert again["step_seconds"]["unet"] < 1 and again["step_seconds"]["gallery"] < 1


def test_a_stopped_unet_run_is_resumed_not_taken_for_finished(fast_demo, stamps):
    """A run stopped before its last step still exports run/pipeline; the rerun must train on from the last
    checkpoint (and, resume being exact, remake the same final weights), not skip the step."""
    final = fast_demo / "run" / "checkpoints" / "step-0000040"
    ema = (final / "ema.safetensors").read_bytes()
    shutil.rmtree(final)  # as if stopped after step 20: run/pipeline is still there
    assert (fast_demo / "run" / "pipeline" / "model_index.json").is_file()
    again = run_stampworld_demo(fast_demo, stamps=stamps, fast=True)
    assert (final / "ema.safetensors").read_bytes() == ema and again["step_seconds"]["unet"] > 0.5


def test_missing_stamps_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--world", "stampworld", "--stamps", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "apt-get install tuxpaint-stamps-default" in err
    assert not out.exists()
    assert main(["demo", "--stamps", str(tmp_path), "--out", str(out)]) == 2
    assert "--world stampworld" in capsys.readouterr().err and not out.exists()


def test_world_clip_learns_every_picture_of_a_concept(stamps, monkeypatch):
    """The world-CLIP stands for CLIP's pretraining, so its training frames show the test videos' pictures too
    (a dingo for the dog); the mel model's data does not (``test_stampworld.py`` checks the splits)."""
    import numpy as np

    from clipsonic.stampworld import demo
    from clipsonic.stampworld.assets import stamp_concept

    asked = []
    real_load = demo.load_picture
    monkeypatch.setattr(demo, "load_picture", lambda root, rel: asked.append(rel) or real_load(root, rel))
    config = stamp_demo_config(fast=True)
    scene = demo.stampworld_scene(config.world, stamps)
    rng = np.random.default_rng(0)
    for k, name in enumerate(scene.names):
        asked.clear()
        frames = [scene.picture(k, rng) for _ in range(24)]
        assert frames[0].shape == (config.world.size, config.world.size, 3)
        concept = stamp_concept(name)
        assert set(asked) == set(concept.train_pictures + concept.test_pictures), name
