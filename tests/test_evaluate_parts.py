"""Evaluation building blocks: reading the test split, the caches, mode resolution, the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
from support.eval_dataset import LABELS, make_eval_dataset
from support.tiny_pipeline import tiny_pipeline_dir  # noqa: F401

from clipsonic.audio import MelConfig
from clipsonic.data.dataset import read_dataset_info
from clipsonic.embedders.vggish import MelStatsEmbedder
from clipsonic.encoders import ClipModelRef
from clipsonic.errors import ClipsonicError
from clipsonic.evaluate.cache import EmbeddingCache, open_set_dir, record_wavs, verified_wavs
from clipsonic.evaluate.config import EvalConfig
from clipsonic.evaluate.report import Evaluation, SetResult, format_markdown, write_report
from clipsonic.evaluate.run import resolve_modes
from clipsonic.evaluate.testset import load_test_clips, pick_indices

MEL = MelConfig(clip_samples=32 * 512)
CLIP = ClipModelRef("tiny/clip", 16, "0" * 16)


def test_pick_indices_spreads_over_the_split():
    assert pick_indices(10, None) == list(range(10))
    assert pick_indices(10, 3) == [0, 4, 9]  # linspace(0, 9, 3) = 0, 4.5→4, 9
    assert pick_indices(4, 10) == [0, 1, 2, 3]
    with pytest.raises(ClipsonicError):
        pick_indices(4, 0)


def test_load_test_clips_reads_labels_frames_mels_and_audio(tmp_path):
    info = make_eval_dataset(tmp_path / "data", MEL, CLIP, test_clips=5)
    clips = load_test_clips(read_dataset_info(tmp_path / "data"), "test", num_clips=3)
    assert [c.key for c in clips] == ["test-00000", "test-00002", "test-00004"]
    assert [c.index for c in clips] == [0, 2, 4]  # split positions: they seed each clip
    assert [c.label for c in clips] == [LABELS[0], LABELS[2], LABELS[1]]
    c = clips[0]
    assert c.image_embedding.shape == (16,) and np.linalg.norm(c.image_embedding) == pytest.approx(1, abs=1e-2)
    assert c.logmel.shape == (64, 32) and c.audio.shape == (MEL.clip_samples,) and c.audio.dtype == np.float32
    assert np.abs(c.audio).max() > 0.1
    with pytest.raises(ClipsonicError, match="no 'valid' split"):
        load_test_clips(info, "valid")


def test_unlabelled_split_without_audio(tmp_path):
    make_eval_dataset(tmp_path / "d", MEL, CLIP, test_clips=2, labels=False, audio=False)
    clips = load_test_clips(read_dataset_info(tmp_path / "d"))
    assert all(c.label is None and c.audio is None for c in clips)
    notes: list[str] = []
    assert resolve_modes((), ("iq", "zs", "shift"), clips, notes) == ["iq"]
    assert "no labels" in notes[-1] and "zs, shift" in notes[-1]
    with pytest.raises(ClipsonicError, match="no mode left"):
        resolve_modes(("zs",), ("iq", "zs"), clips, [])


def test_resolve_modes_defaults_and_refusals(tmp_path):
    make_eval_dataset(tmp_path / "d", MEL, CLIP, test_clips=2)
    clips = load_test_clips(read_dataset_info(tmp_path / "d"))
    notes: list[str] = []
    assert resolve_modes((), ("iq", "zs", "shift", "knn"), clips, notes) == ["iq", "zs", "shift", "knn"]
    assert notes == ["mode pd skipped: the model does not support it"]
    with pytest.raises(ClipsonicError, match=r"cannot run mode\(s\) \['pd'\]"):
        resolve_modes(("iq", "pd"), ("iq", "zs"), clips, [])


def test_eval_config_validates():
    assert EvalConfig(guidance_scale=1.5, sweep=(0, 3, 1.5)).guidance_scales == (0.0, 1.5, 3.0)
    with pytest.raises(ValueError, match="unknown mode"):
        EvalConfig(modes=("xyz",))
    with pytest.raises(ValueError, match="label"):
        EvalConfig(text_template="a photo")
    with pytest.raises(ValueError, match="num_clips must be >= 2"):
        EvalConfig(num_clips=1)
    for bad in (dict(sweep=(1.0, float("nan"))), dict(guidance_scale=-0.5), dict(batch_size=0), dict(steps=0),
                dict(seed=2**64), dict(text_template="{label} of {kind}"), dict(clap_template="{label")):
        with pytest.raises(ValueError):
            EvalConfig(**bad)


def test_set_dir_is_cleared_when_settings_change(tmp_path):
    folder = tmp_path / "pd" / "w1.5"
    open_set_dir(folder, {"steps": 10})
    (folder / "a.wav").write_bytes(b"x")
    open_set_dir(folder, {"steps": 10})
    assert (folder / "a.wav").exists()
    open_set_dir(folder, {"steps": 20})
    assert not (folder / "a.wav").exists()
    assert json.loads((folder / "settings.json").read_text()) == {"format": "clipsonic-eval-set", "version": 2, "steps": 20}


def test_embedding_cache_keys_on_content(tmp_path):
    wav = (0.2 * np.sin(np.arange(20000) / 5)).astype(np.float32)
    soundfile.write(tmp_path / "a.wav", wav, 16000)
    cache = EmbeddingCache(tmp_path / "emb", MelStatsEmbedder())
    first = cache.audio(tmp_path / "a.wav")
    again = cache.audio(tmp_path / "a.wav")
    assert (cache.misses, cache.hits) == (1, 1)
    np.testing.assert_array_equal(first, again)
    soundfile.write(tmp_path / "a.wav", wav * 0.5, 16000)  # new content under the same name
    assert not np.array_equal(cache.audio(tmp_path / "a.wav"), first) and cache.misses == 2


def test_damaged_cached_embeddings_are_computed_again(tmp_path, caplog):
    wav = (0.2 * np.sin(np.arange(20000) / 5)).astype(np.float32)
    soundfile.write(tmp_path / "a.wav", wav, 16000)
    cache = EmbeddingCache(tmp_path / "emb", MelStatsEmbedder())
    first = cache.audio(tmp_path / "a.wav")
    (npy,) = (tmp_path / "emb").rglob("*.npy")
    for damage in (npy.read_bytes()[:100], b"", npy.read_bytes()[:-8]):  # cut in the header, empty, cut in the data
        npy.write_bytes(damage)
        np.testing.assert_array_equal(cache.audio(tmp_path / "a.wav"), first)
        assert "damaged cached embedding" in caplog.text and npy.read_bytes() != damage
        caplog.clear()
    np.save(npy, np.zeros((2, 3), np.float32))  # another embedder's shape
    np.testing.assert_array_equal(cache.audio(tmp_path / "a.wav"), first)
    assert cache.misses == 5 and cache.hits == 0


def test_wavs_are_reused_only_when_size_and_hash_match(tmp_path, caplog):
    folder = tmp_path / "set"
    open_set_dir(folder, {})
    for name in ("a", "b", "c", "d"):
        soundfile.write(folder / f"{name}.wav", np.full(800, 0.1, np.float32), 16000)
    record_wavs(folder, [folder / "a.wav", folder / "b.wav", folder / "c.wav"])  # d: written, never recorded
    (folder / "b.wav").write_bytes((folder / "b.wav").read_bytes()[:500])  # cut short
    data = bytearray((folder / "c.wav").read_bytes())
    data[-1] ^= 1  # same size, other content
    (folder / "c.wav").write_bytes(bytes(data))
    assert verified_wavs(folder) == {"a.wav"}
    assert "3 cached wav(s) do not match" in caplog.text
    assert sorted(p.name for p in folder.glob("*.wav")) == ["a.wav"]  # the others are regenerated


def _evaluation(sweep: bool, clap: bool) -> Evaluation:
    sets = [SetResult("reference", "reference", None, clips=4, clap=0.31 if clap else None),
            SetResult("reconstruction", "reconstruction", None, clips=4, fad=0.6, clap=0.2 if clap else None)]
    for mode in ("iq", "zs", "pd"):
        for w in ((0.0, 1.5, 3.0) if sweep else (1.5,)):
            sets.append(SetResult(f"{mode}/w{w:g}", mode, w, clips=4, fad=2.0 + w + len(mode),
                                  clap=0.25 + 0.01 * w if clap else None))
    sets[-1].problems.append("4 embeddings for 128 dimensions: rank-deficient")
    return Evaluation(config=EvalConfig(modes=("iq", "zs", "pd"), sweep=(0, 3) if sweep else ()).to_dict(),
                      model={"path": "m"}, dataset={"path": "d", "split": "test", "clips": 4},
                      embedder={"name": "mel-stats", "comparable": False, "description": "mel-stats (sanity)"},
                      clap={"description": "LAION-CLAP"} if clap else None, sets=sets, notes=["a note"])


def test_markdown_table_has_every_row_at_the_table_w():
    text = format_markdown(_evaluation(sweep=True, clap=True))
    table = text.split("| System |")[1].split("\n\n")[0]
    for title in ("CLIPSonic-IQ", "CLIPSonic-ZS", "CLIPSonic-PD", "reconstruction", "Real audio"):
        assert title in table
    assert "| CLIPSonic-PD (text, diffusion prior) | 6.50 ⚠ | 0.265 | 4 |" not in table  # w=3 row not in table
    assert "| CLIPSonic-ZS (text, zero-shot) | 5.50 | 0.265 | 4 |" in table
    assert "w = 0 | w = 1.5 | w = 3" in text and "a note" in text and "rank-deficient" in text


def test_report_files_and_plot(tmp_path):
    written = write_report(_evaluation(sweep=True, clap=True), tmp_path)
    assert [p.name for p in written] == ["results.json", "results.md", "guidance_sweep.png"]
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["format"] == "clipsonic-evaluation" and len(data["sets"]) == 11
    assert data["table"] == ["iq/w1.5", "zs/w1.5", "pd/w1.5", "reconstruction", "reference"]
    assert (tmp_path / "guidance_sweep.png").read_bytes()[:4] == b"\x89PNG"
    out2 = tmp_path / "nosweep"
    assert [p.name for p in write_report(_evaluation(sweep=False, clap=False), out2)] == ["results.json", "results.md"]
    assert "not computed" in (out2 / "results.md").read_text()


def test_long_test_clips_are_made_the_way_long_says(tiny_pipeline_dir):  # noqa: F811
    from clipsonic.evaluate.generator import PipelineGenerator

    made = {}
    for long in (None, "single"):
        gen = PipelineGenerator(tiny_pipeline_dir, EvalConfig(long=long, steps=2, device="cpu"))
        gen.seconds = 2.048  # test clips twice the model's training length (check_dataset sets this)
        made[long] = gen.generate("zs", [], ["a dog"], 1.5, [0])[0]
        assert ("long" in gen.settings()) == (long is not None)  # a default run keeps earlier caches' keys
    expected = gen.pipe(text="a dog", mode="zs", guidance_scale=1.5, num_inference_steps=2, seed=[0], seconds=2.048,
                        long="single").audios[0]
    assert np.array_equal(made["single"], expected) and not np.allclose(made[None], made["single"])
