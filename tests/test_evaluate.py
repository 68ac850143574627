"""``clipsonic evaluate`` end to end on the tiny random pipeline and a tiny dataset with audio."""

from __future__ import annotations

import io
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from support.eval_dataset import make_eval_dataset, pipeline_refs
from support.tiny_pipeline import tiny_pipeline_dir  # noqa: F401  (fixture)

from clipsonic.cli import main as cli_main
from clipsonic.errors import ClipsonicError
from clipsonic.evaluate import EvalConfig, run_evaluation
from clipsonic.evaluate.generator import PipelineGenerator
from clipsonic.listening import make_listening_test, read_key

COLOUR_NAMES = ("red", "green", "blue")  # the tiny pipeline's stats know these labels


@pytest.fixture(scope="module")
def eval_data(tiny_pipeline_dir, tiny_clip_dir, tmp_path_factory) -> Path:  # noqa: F811
    from clipsonic.encoders import load_clip

    mel, clip = pipeline_refs(tiny_pipeline_dir)
    root = tmp_path_factory.mktemp("evaldata")
    make_eval_dataset(root, mel, clip, test_clips=3, n_classes=3, encoder=load_clip(tiny_clip_dir, device="cpu"),
                      label_names=COLOUR_NAMES)
    return root


class _StandInClap:
    """laion_clap.CLAP_Module's surface: a model with a state dict and two embedding calls."""

    def __init__(self, enable_fusion=False, device=None, amodel="HTSAT-tiny"):
        self.model = torch.nn.Linear(4, 512)

    def get_audio_embedding_from_data(self, x, use_tensor=False):
        x = np.asarray(x)
        feats = np.stack([x.mean(1), x.std(1), np.abs(x).max(1), np.abs(np.diff(x, axis=1)).mean(1)], 1)
        return torch.nn.functional.normalize(self.model(torch.from_numpy(feats).float()), dim=-1).detach().numpy()

    def get_text_embedding(self, texts, use_tensor=False):
        rows = [np.random.default_rng(sum(map(ord, t))).normal(size=512) for t in texts]
        return np.stack([r / np.linalg.norm(r) for r in rows]).astype(np.float32)


def _bytes(folder: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(folder.glob("*.wav"))]


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*.wav"))}


def test_evaluate_end_to_end(tiny_pipeline_dir, eval_data, tmp_path, monkeypatch, capsys):  # noqa: F811
    out = tmp_path / "report"
    # 1. Every mode at the table's w, through the CLI, with the weight-free embedder.
    code = cli_main(["evaluate", "--model", str(tiny_pipeline_dir), "--data", str(eval_data), "--out", str(out),
                     "--embedder", "mel-stats", "--steps", "2", "--device", "cpu", "--seed", "7"])
    assert code == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["table"] == ["iq/w1.5", "zs/w1.5", "pd/w1.5", "shift/w1.5", "knn/w1.5", "reconstruction", "reference"]
    sets = {s["name"]: s for s in results["sets"]}
    for name in results["table"][:-1]:
        assert sets[name]["clips"] == 3 and sets[name]["fad"] is not None and sets[name]["fad"] > 0, name
    assert sets["reference"]["fad"] is None and sets["reference"]["clips"] == 3
    assert any("rank-deficient" in p for p in sets["pd/w1.5"]["problems"])  # 3 embeddings, 128 dimensions
    md = (out / "results.md").read_text()
    for title in ("CLIPSonic-IQ", "CLIPSonic-ZS", "CLIPSonic-PD", "modality-gap", "nearest image", "reconstruction"):
        assert title in md and title in printed
    assert "NOT comparable" in md and "IQ conditions on the stored middle-frame" in md
    assert not (out / "guidance_sweep.png").exists()
    for folder in ("reference", "reconstruction", "iq/w1.5", "pd/w1.5", "knn/w1.5"):
        wavs = sorted((out / "audio" / folder).glob("*.wav"))
        assert [p.stem for p in wavs] == ["test-00000", "test-00001", "test-00002"], folder
        manifest = [json.loads(line) for line in (out / "audio" / folder / "manifest.jsonl").read_text().splitlines()]
        assert [m["query"] for m in manifest] == list(COLOUR_NAMES)
    # different modes (different conditions) give different audio for the same seed
    a, b = (out / "audio" / "zs/w1.5" / "test-00000.wav").read_bytes(), (out / "audio" / "pd/w1.5" / "test-00000.wav").read_bytes()
    assert a != b
    # IQ is the pipeline conditioned on the clip's stored middle-frame embedding, with seed + clip index
    from clipsonic.data.dataset import read_dataset_info
    from clipsonic.evaluate.testset import load_test_clips
    from clipsonic.pipeline import CLIPSonicPipeline

    clips = load_test_clips(read_dataset_info(eval_data))
    direct = CLIPSonicPipeline.from_pretrained(tiny_pipeline_dir, device="cpu")(  # one batch, as evaluate's
        image_embeds=np.stack([c.image_embedding for c in clips]), guidance_scale=1.5, num_inference_steps=2,
        seed=[7, 8, 9]).audios[1]
    saved, _ = soundfile.read(out / "audio" / "iq/w1.5" / "test-00001.wav", dtype="float32")
    np.testing.assert_allclose(saved, direct / max(1.0, np.abs(direct).max()), atol=2 / 32768)
    before = _mtimes(out / "audio")

    # 2. A sweep of 3 w for two modes, plus the CLAP score (a stand-in for laion-clap's module):
    #    cached sets are not regenerated, the plot is drawn.
    monkeypatch.setitem(sys.modules, "laion_clap", types.SimpleNamespace(CLAP_Module=_StandInClap))
    torch.save({"state_dict": torch.nn.Linear(4, 512).state_dict()}, tmp_path / "630k-audioset-best.pt")
    config = EvalConfig(modes=("iq", "zs"), guidance_scale=1.5, sweep=(0.0, 1.5, 3.0), steps=2, embedder="mel-stats",
                        clap_weights=str(tmp_path / "630k-audioset-best.pt"), seed=7, device="cpu")
    ev = run_evaluation(tiny_pipeline_dir, eval_data, out, config)
    after = _mtimes(out / "audio")
    for name in ("reference", "reconstruction", "iq/w1.5", "zs/w1.5"):
        for wav in (p for p in before if p.startswith(name)):
            assert after[wav] == before[wav], f"{wav} was regenerated"
    assert {s.name for s in ev.sets} >= {"iq/w0", "iq/w3", "zs/w0", "zs/w3"}
    # w = 0 is the unconditional model: the same audio whatever the query, for the same seeds
    assert _bytes(out / "audio" / "iq/w0") == _bytes(out / "audio" / "zs/w0")
    assert _bytes(out / "audio" / "iq/w3") != _bytes(out / "audio" / "zs/w3")
    assert (out / "guidance_sweep.png").read_bytes()[:4] == b"\x89PNG"
    for s in ev.sets:
        assert s.clap is not None and -1 <= s.clap <= 1, s.name
    md = (out / "results.md").read_text()
    assert "w = 0 | w = 1.5 | w = 3" in md and "LAION-CLAP" in md

    # 3. The generated sets are listening-test systems as they are.
    make_listening_test({"IQ": out / "audio" / "iq/w1.5", "ZS": out / "audio" / "zs/w1.5",
                         "Real": out / "audio" / "reference"}, tmp_path / "lt")
    assert len(read_key(tmp_path / "lt")["trials"]) == 9


def test_evaluate_unlabelled_split_runs_iq_only(tiny_pipeline_dir, tmp_path):  # noqa: F811
    mel, clip = pipeline_refs(tiny_pipeline_dir)
    make_eval_dataset(tmp_path / "d", mel, clip, test_clips=2, labels=False)
    ev = run_evaluation(tiny_pipeline_dir, tmp_path / "d", tmp_path / "r",
                        EvalConfig(steps=1, embedder="mel-stats", device="cpu"))
    assert sorted(s.mode for s in ev.sets) == ["iq", "reconstruction", "reference"]
    assert any("no labels" in n and "zs, pd, shift, knn skipped" in n for n in ev.notes)
    assert "no labels" in (tmp_path / "r" / "results.md").read_text()


def test_evaluate_refuses_bad_inputs(tiny_pipeline_dir, tmp_path, capsys):  # noqa: F811
    mel, clip = pipeline_refs(tiny_pipeline_dir)
    make_eval_dataset(tmp_path / "noaudio", mel, clip, test_clips=2, audio=False)
    with pytest.raises(ClipsonicError, match="--keep-audio"):
        run_evaluation(tiny_pipeline_dir, tmp_path / "noaudio", tmp_path / "r", EvalConfig(embedder="mel-stats", device="cpu"))
    make_eval_dataset(tmp_path / "othermel", mel.replace(n_mels=80), clip, test_clips=2)
    with pytest.raises(ClipsonicError, match="different mel config"):
        run_evaluation(tiny_pipeline_dir, tmp_path / "othermel", tmp_path / "r", EvalConfig(embedder="mel-stats", device="cpu"))
    make_eval_dataset(tmp_path / "ok", mel, clip, test_clips=2)
    code = cli_main(["evaluate", "--model", str(tiny_pipeline_dir), "--data", str(tmp_path / "ok"), "--out",
                     str(tmp_path / "r"), "--embedder", "vggish", "--embedder-weights", str(tmp_path / "none.safetensors")])
    assert code == 2 and "none.safetensors does not exist" in capsys.readouterr().err
    code = cli_main(["evaluate", "--model", str(tiny_pipeline_dir), "--data", str(tmp_path / "ok"), "--out",
                     str(tmp_path / "r"), "--modes", "iq,xyz"])
    assert code == 2 and "unknown mode" in capsys.readouterr().err
    code = cli_main(["evaluate", "--model", str(tiny_pipeline_dir), "--data", str(tmp_path / "ok"), "--out",
                     str(tmp_path / "r"), "--embedder", "mel-stats", "--sampler", "euler-magic", "--device", "cpu"])
    assert code == 2 and "unknown sampler 'euler-magic'" in capsys.readouterr().err
    assert not (tmp_path / "r" / "audio").exists()  # refused before any audio was written


class _NaNForFirstClip(PipelineGenerator):
    """A model that breaks on one clip: its audio comes back NaN."""

    def generate(self, mode, clips, queries, guidance, seeds):
        audios = super().generate(mode, clips, queries, guidance, seeds)
        return [np.full_like(a, np.nan) if c.key == "test-00000" else a for a, c in zip(audios, clips, strict=True)]


def test_nan_audio_is_left_out_and_reported(tiny_pipeline_dir, tmp_path):  # noqa: F811
    mel, clip = pipeline_refs(tiny_pipeline_dir)
    make_eval_dataset(tmp_path / "d", mel, clip, test_clips=3)
    config = EvalConfig(modes=("zs",), steps=1, embedder="mel-stats", device="cpu")
    ev = run_evaluation(tiny_pipeline_dir, tmp_path / "d", tmp_path / "r", config,
                        generator=_NaNForFirstClip(tiny_pipeline_dir, config))
    zs = next(s for s in ev.sets if s.mode == "zs")
    assert zs.excluded == ["test-00000"] and zs.clips == 2 and zs.fad is not None
    assert not (tmp_path / "r" / "audio" / "zs" / "w1.5" / "test-00000.wav").exists()
    assert json.loads((tmp_path / "r" / "results.json").read_text())["sets"][2]["excluded"] == ["test-00000"]


def test_clap_as_fad_embedder_reuses_one_model(tmp_path, monkeypatch):
    from clipsonic.evaluate.run import _embedders

    monkeypatch.setitem(sys.modules, "laion_clap", types.SimpleNamespace(CLAP_Module=_StandInClap))
    torch.save({"state_dict": torch.nn.Linear(4, 512).state_dict()}, tmp_path / "clap.pt")
    fad, clap = _embedders(EvalConfig(embedder="clap", clap_weights=str(tmp_path / "clap.pt"), device="cpu"))
    assert fad is clap and fad.name == "clap"
    fad, clap = _embedders(EvalConfig(embedder="mel-stats", device="cpu"))
    assert fad.name == "mel-stats" and clap is None


def test_damaged_caches_are_regenerated_and_scores_do_not_change(tiny_pipeline_dir, eval_data, tmp_path,  # noqa: F811
                                                                 caplog):
    """A cached wav cut short (a full disk, a copy stopped half way) used to be reused and move the FAD; a cut
    cached embedding used to be a traceback. Both are made again, with a warning, and every number stays."""
    config = EvalConfig(modes=("iq",), steps=1, embedder="mel-stats", device="cpu")
    first = {s.name: s.fad for s in run_evaluation(tiny_pipeline_dir, eval_data, tmp_path / "r", config).sets
             if s.fad is not None}
    assert sorted(first) == ["iq/w1.5", "reconstruction"]
    audio = tmp_path / "r" / "audio"
    wavs = {p: p.read_bytes() for p in (audio / "iq" / "w1.5" / "test-00001.wav", audio / "reference" / "test-00000.wav")}
    for path, data in wavs.items():
        path.write_bytes(data[:len(data) // 3])
    npy = sorted((tmp_path / "r" / "embeddings").rglob("*.npy"))
    npy[0].write_bytes(npy[0].read_bytes()[:90])
    again = {s.name: s.fad for s in run_evaluation(tiny_pipeline_dir, eval_data, tmp_path / "r", config).sets
             if s.fad is not None}
    # the same seeds: the same audio and scores, up to the float noise of a batch of one instead of three
    assert again == pytest.approx(first, rel=1e-4)
    for path, data in wavs.items():
        assert path.stat().st_size == len(data)
        np.testing.assert_allclose(soundfile.read(path)[0], soundfile.read(io.BytesIO(data))[0], atol=1e-3)
    assert "do not match their recorded size and SHA-256" in caplog.text and "damaged cached embedding" in caplog.text
