"""Relevance accuracy: a classifier judges the audio every set wrote; the report carries the numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
from support.eval_dataset import make_eval_dataset, pipeline_refs
from support.tiny_pipeline import tiny_pipeline_dir  # noqa: F401  (fixture)

from clipsonic.cli import main as cli_main
from clipsonic.evaluate import EvalConfig, run_evaluation
from clipsonic.evaluate.relevance import judge_files, relevance_accuracy
from clipsonic.sonicworld import CONCEPT_NAMES, CONCEPTS, OracleClassifier
from clipsonic.sonicworld.world import synthesize

COLOUR_NAMES = ("red", "green", "blue")  # labels of classes 0, 1, 2 of the test split


class _ToneClassifier:
    """Labels a clip by its dominant frequency: class c of the eval dataset is a tone at 220 · 1.5^c Hz.

    ``answers`` maps a class to the label to say (missing: no answer); by default it is exact.
    """

    name = "tone"

    def __init__(self, answers: dict[int, str] | None = None, labels: tuple[str, ...] = COLOUR_NAMES):
        self.answers = dict(enumerate(COLOUR_NAMES)) if answers is None else answers
        self.labels = labels
        self.calls: list[tuple[tuple[int, ...], int]] = []

    def classify(self, audio: np.ndarray, sample_rate: int) -> list[str | None]:
        assert audio.ndim == 2 and audio.dtype == np.float32
        self.calls.append((audio.shape, sample_rate))
        spectrum = np.abs(np.fft.rfft(audio, axis=1))
        peak = np.fft.rfftfreq(audio.shape[1], 1 / sample_rate)[spectrum.argmax(axis=1)]
        classes = np.rint(np.log(np.maximum(peak, 1.0) / 220.0) / np.log(1.5)).astype(int)
        return [self.answers.get(int(c)) for c in classes]


def test_relevance_accuracy_counts_no_answer_as_wrong():
    rel = relevance_accuracy(["a", None, "b", "a", "a"], ["a", "a", "b", "b", "a"])
    assert rel.accuracy == pytest.approx(3 / 5) and rel.clips == 5
    assert rel.by_label == {"a": pytest.approx(2 / 3), "b": 0.5}
    assert relevance_accuracy([], []).accuracy is None


def test_judge_files_reads_the_written_audio(tmp_path):
    rate, files = 16000, []
    for i, c in enumerate([0, 1, 2, 2]):  # a tone per class; the last file shorter (zero-padded in its batch)
        t = np.arange(rate if i < 3 else rate // 2) / rate
        soundfile.write(tmp_path / f"{i}.wav", 0.3 * np.sin(2 * np.pi * 220 * 1.5**c * t), rate)
        files.append(tmp_path / f"{i}.wav")
    classifier = _ToneClassifier(answers={0: "red", 1: "red", 2: "blue"})  # hears green as red
    rel = judge_files(classifier, files, ["red", "green", "blue", "blue"], batch_size=3, sample_rate=rate)
    assert rel.accuracy == 0.75 and rel.by_label == {"blue": 1.0, "green": 0.0, "red": 1.0}
    assert classifier.calls == [((3, rate), rate), ((1, rate // 2), rate)]


def _width(png: Path) -> int:
    from PIL import Image

    with Image.open(png) as image:
        return image.size[0]


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*.wav"))}


def test_relevance_column_from_the_written_audio(tiny_pipeline_dir, tmp_path):  # noqa: F811
    mel, clip = pipeline_refs(tiny_pipeline_dir)
    make_eval_dataset(tmp_path / "d", mel, clip, test_clips=4, label_names=COLOUR_NAMES)  # red green blue red
    config = EvalConfig(modes=("zs",), sweep=(0.0,), steps=1, embedder="mel-stats", device="cpu")
    out = tmp_path / "r"
    # 1. Exact on real audio: the reference set scores 1, per label too.
    exact = _ToneClassifier()
    ev = run_evaluation(tiny_pipeline_dir, tmp_path / "d", out, config, classifier=exact)
    sets = {s.name: s for s in ev.sets}
    assert sets["reference"].relevance == 1.0 and sets["reference"].relevance_clips == 4
    assert sets["reference"].relevance_by_label == {"blue": 1.0, "green": 1.0, "red": 1.0}
    for s in ev.sets:  # every set is judged, generated ones included
        assert s.relevance is not None and 0 <= s.relevance <= 1 and s.relevance_clips == 4, s.name
    assert ev.classifier == {"name": "tone", "labels": 3, "chance": pytest.approx(1 / 3)}
    md = (out / "results.md").read_text()
    assert "chance level 1/3 = 0.333" in md and "| FAD ↓ | CLAP score ↑ | relevance ↑ | clips |" in md
    row = next(line for line in md.splitlines() if line.startswith("| Real audio"))
    assert row.endswith("| – | 1.000 | 4 |")  # no CLAP score, relevance 1, 4 clips
    assert "(FAD / CLAP score / relevance)" in md
    assert _width(out / "guidance_sweep.png") == 2 * 520  # FAD and relevance panels (no CLAP)
    before = _mtimes(out / "audio")

    # 2. A known mix: it hears green as red and does not know blue (left out, noted).
    confused = _ToneClassifier(answers={0: "red", 1: "red"}, labels=("red", "green"))
    ev = run_evaluation(tiny_pipeline_dir, tmp_path / "d", out, config, classifier=confused)
    assert _mtimes(out / "audio") == before  # the classifier only scores: no audio regenerated
    reference = next(s for s in ev.sets if s.name == "reference")
    assert reference.relevance == pytest.approx(2 / 3) and reference.relevance_clips == 3
    assert reference.relevance_by_label == {"green": 0.0, "red": 1.0}
    assert any("1 clip(s)" in n and "'blue'" in n and "left out of relevance" in n for n in ev.notes)
    results = json.loads((out / "results.json").read_text())
    saved = {s["name"]: s for s in results["sets"]}
    assert saved["reference"]["relevance_by_label"] == {"green": 0.0, "red": 1.0}
    assert results["classifier"]["chance"] == 0.5 and "left out of relevance" in (out / "results.md").read_text()

    # 3. Without a classifier the report has no relevance column.
    ev = run_evaluation(tiny_pipeline_dir, tmp_path / "d", out, config)
    assert ev.classifier is None and all(s.relevance is None for s in ev.sets)
    assert "relevance ↑" not in (out / "results.md").read_text()
    assert _width(out / "guidance_sweep.png") == 520


def test_unknown_classifier_lists_the_choices(tiny_pipeline_dir, tmp_path, capsys):  # noqa: F811
    """``--classifier NAME`` is resolved by the CLI (evaluate takes the classifier object)."""
    mel, clip = pipeline_refs(tiny_pipeline_dir)
    make_eval_dataset(tmp_path / "d", mel, clip, test_clips=2)
    code = cli_main(["evaluate", "--model", str(tiny_pipeline_dir), "--data", str(tmp_path / "d"), "--out",
                     str(tmp_path / "r"), "--embedder", "mel-stats", "--device", "cpu", "--classifier", "nope"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown classifier 'nope'; choose one of sonicworld" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()  # refused before any work


def test_sonicworld_oracle_names_its_answers(monkeypatch):
    """``OracleClassifier.classify``: concept indices → names, -1 → no answer, audio resampled to 16 kHz."""
    seen = {}
    oracle = OracleClassifier()

    def classify_audio(audio, sample_rate=16000):
        seen["shape"], seen["rate"] = audio.shape, sample_rate
        return np.array([1, -1, 0])

    monkeypatch.setattr(oracle, "classify_audio", classify_audio)
    assert list(oracle.labels) == list(CONCEPT_NAMES) and oracle.name == "sonicworld"
    assert oracle.classify(np.zeros((3, 8000), np.float32), 8000) == [CONCEPT_NAMES[1], None, CONCEPT_NAMES[0]]
    assert seen == {"shape": (3, 16000), "rate": 16000}


def test_sonicworld_oracle_judges_its_own_sounds():
    """The real oracle as a classifier: exact on SonicWorld sounds (here at 22.05 kHz), silent → no answer."""
    classifier = OracleClassifier()
    rng = np.random.default_rng(0)
    audio = np.stack([synthesize(c.f0, c.timbre, c.rhythm, 22050, rng, sample_rate=22050) for c in CONCEPTS])
    names = [c.name for c in CONCEPTS]
    assert relevance_accuracy(classifier.classify(audio, 22050), names).accuracy == 1.0
    assert classifier.classify(np.zeros((1, 16000), np.float32), 16000) == [None]
