"""Captions per label: text modes query clip i with caption i % n of its label; the manifest records it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support.eval_dataset import make_eval_dataset, pipeline_refs
from support.tiny_pipeline import tiny_pipeline_dir  # noqa: F401  (fixture)

from clipsonic.cli import main as cli_main
from clipsonic.errors import ClipsonicError
from clipsonic.evaluate import EvalConfig, load_captions, run_evaluation
from clipsonic.evaluate.testset import EvalClip, captions_digest, text_query

COLOUR_NAMES = ("red", "green", "blue")  # labels of classes 0, 1, 2: clip i has class i % 3


def _clip(label: str, index: int) -> EvalClip:
    return EvalClip(f"k{index}", label, np.zeros(4, np.float32), np.zeros((2, 2), np.float32), None, index)


def test_text_query_cycles_by_clip_index():
    captions = {"red": ["a", "b", "c"]}
    assert [text_query(_clip("red", i), "{label}!", captions) for i in range(5)] == ["a", "b", "c", "a", "b"]
    assert text_query(_clip("blue", 4), "the sound of {label}", captions) == "the sound of blue"
    assert text_query(_clip("red", 4), "{label}", None) == "red"
    assert captions_digest({"red": ["a", "b"]}) != captions_digest({"red": ["b", "a"]})


@pytest.mark.parametrize(("content", "problem"), [
    (None, "no such file"),  # the wording of clipsonic.files.read_json, the one JSON reader
    ("{red: [", "not a readable captions file"),
    ('["a red hum"]', "holds a JSON list"),
    ('{"red": "a red hum"}', "the entry of label 'red'"),
    ('{"red": []}', "the entry of label 'red'"),
    ('{"red": ["ok", 3]}', "the entry of label 'red'"),
])
def test_bad_captions_files_are_refused_in_one_line(tmp_path, content, problem):
    path = tmp_path / "captions.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ClipsonicError) as info:
        load_captions(path)
    message = str(info.value)
    assert problem in message and str(path) in message and "\n" not in message
    assert "mapping each label to a non-empty list of caption strings" in message  # the fix


def _manifest(folder: Path) -> list[str]:
    return [json.loads(line)["query"] for line in (folder / "manifest.jsonl").read_text().splitlines()]


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("*.wav"))}


def test_captions_drive_the_text_queries_and_the_cache(tiny_pipeline_dir, tmp_path, capsys):  # noqa: F811
    mel, clip = pipeline_refs(tiny_pipeline_dir)
    make_eval_dataset(tmp_path / "d", mel, clip, test_clips=4, label_names=COLOUR_NAMES)  # red green blue red
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"red": ["a red hum", "a crimson drone"], "green": ["a green chirp"]}))
    out = tmp_path / "r"
    argv = ["evaluate", "--model", str(tiny_pipeline_dir), "--data", str(tmp_path / "d"), "--out", str(out),
            "--modes", "iq,zs", "--steps", "1", "--embedder", "mel-stats", "--device", "cpu",
            "--text-template", "the sound of {label}"]
    # 1. A bad file is refused before any work, in one line.
    captions.with_name("bad.json").write_text("[]")
    assert cli_main([*argv, "--captions", str(captions.with_name("bad.json"))]) == 2
    assert "bad.json holds a JSON list" in capsys.readouterr().err and not out.exists()
    # 2. Clip i queries caption i % n of its label (red: clips 0 and 3); blue has none: the template.
    assert cli_main([*argv, "--captions", str(captions)]) == 0
    zs, iq = out / "audio" / "zs" / "w1.5", out / "audio" / "iq" / "w1.5"
    assert _manifest(zs) == ["a red hum", "a green chirp", "the sound of blue", "a crimson drone"]
    assert _manifest(iq) == ["red", "green", "blue", "red"]  # IQ has no text query: the label
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["captions"] == str(captions)
    assert any("1 clip(s) with label(s) 'blue' have no captions" in n for n in results["notes"])
    assert json.loads((zs / "settings.json").read_text())["captions"] == captions_digest(load_captions(captions))
    assert "captions" not in json.loads((iq / "settings.json").read_text())  # IQ does not depend on them
    zs_before, iq_before = _mtimes(zs), _mtimes(iq)
    # 3. New captions content regenerates the text modes only; the same content reuses everything.
    captions.write_text(json.dumps({"red": ["a scarlet buzz"], "green": ["a green chirp"], "blue": ["a blue hiss"]}))
    config = EvalConfig(modes=("iq", "zs"), steps=1, embedder="mel-stats", device="cpu",
                        text_template="the sound of {label}", captions=str(captions))
    run_evaluation(tiny_pipeline_dir, tmp_path / "d", out, config)
    assert _manifest(zs) == ["a scarlet buzz", "a green chirp", "a blue hiss", "a scarlet buzz"]
    assert _mtimes(iq) == iq_before and all(_mtimes(zs)[k] != t for k, t in zs_before.items())
    zs_before = _mtimes(zs)
    run_evaluation(tiny_pipeline_dir, tmp_path / "d", out, config)
    assert _mtimes(zs) == zs_before
