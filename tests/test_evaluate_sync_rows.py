"""The sync measure in ``clipsonic evaluate``: on a dataset with frame sequences, the IQ sets and the reconstruction get
onset F1 (against the real audio's onsets) and the audio-visual offset; a film pipeline's IQ follows the stored
sequence; a dataset without sequences reads as before."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
import soundfile
import torch
from support.eval_dataset import pipeline_refs
from support.tiny_pipeline import randomize_zero_layers, tiny_pipeline_dir  # noqa: F401  (fixture)

from clipsonic.audio import mel_spectrogram
from clipsonic.data.dataset import DatasetInfo, ShardWriter, encode_sample
from clipsonic.errors import ClipsonicError
from clipsonic.evaluate import EvalConfig, run_evaluation
from clipsonic.evaluate.generator import PipelineGenerator
from clipsonic.evaluate.run import sequence_activity
from clipsonic.evaluate.testset import load_test_clips
from clipsonic.models import MelUNet
from clipsonic.pipeline import CLIPSonicPipeline
from clipsonic.pipeline.sequence import stored_sequence

FPS, FRAMES = 8, 64  # 2.048-s clips: long enough for the offset's ±0.5 s lag window
EVENTS = (0.45, 1.05, 1.55)  # seconds: a click in the audio, a new picture in the sequence
CONFIG = EvalConfig(modes=("iq",), embedder="mel-stats", steps=1, device="cpu")


def make_sync_dataset(root, pipeline_dir, *, sequences: bool = True, clips: int = 2) -> DatasetInfo:
    """A test split of clicks at :data:`EVENTS` (16 kHz flac), with a ``seq.npy`` at :data:`FPS` whose embedding
    turns to another direction at each event (``sequences``)."""
    mel, clip = pipeline_refs(pipeline_dir)
    mel = dataclasses.replace(mel, clip_samples=FRAMES * mel.hop_length)
    rng = np.random.default_rng(0)
    n = round(mel.clip_seconds * FPS)
    root.mkdir(parents=True)
    writer = ShardWriter(root, "test", 0, max_bytes=1 << 40)
    for i in range(clips):
        wav = rng.normal(scale=0.002, size=mel.clip_samples)
        for t in EVENTS:  # a 20-ms decaying noise burst
            start = round(t * mel.sample_rate)
            wav[start:start + 320] += 0.5 * rng.normal(size=320) * np.exp(-np.arange(320) / 60)
        wav = wav.astype(np.float32)
        flac = io.BytesIO()
        soundfile.write(flac, wav, mel.sample_rate, format="FLAC", subtype="PCM_16")
        directions = rng.normal(size=(len(EVENTS) + 1, clip.dim))
        seq = directions[np.searchsorted(EVENTS, (np.arange(n) + 0.5) / FPS)]  # [N, D]
        seq /= np.linalg.norm(seq, axis=1, keepdims=True)
        writer.write(encode_sample(f"test-{i:05d}", mel_spectrogram(torch.from_numpy(wav), mel).numpy(), seq[:3],
                                   {"label": "clicks", "split": "test"}, flac=flac.getvalue(),
                                   seq=seq if sequences else None))
    info = DatasetInfo(root=root, mel=mel, clip=clip, frames_per_clip=3,
                       splits={"test": {"shards": [writer.finalize()], "clips": clips}},
                       counts={"inputs": clips, "clips": clips, "rejected": 0},
                       options={"keep_audio": True, **({"options": {"clips": {"frame_rate": FPS}}} if sequences else {})})
    info.save()
    return info


def test_stored_sequences_are_resampled_to_one_row_per_mel_frame(tiny_pipeline_dir):  # noqa: F811
    mel, _ = pipeline_refs(tiny_pipeline_dir)  # 32 mel frames a clip
    seq = torch.eye(4)[None]  # [1, N=4, D=4] at 3.90625 fps: frame i covers mel frames [8i, 8i + 8)
    rows = stored_sequence(seq, 1, 40, 3.90625, mel)  # 8 frames past the sequence hold the last
    assert rows.shape == (1, 40, 4)
    assert rows[0].argmax(-1).tolist() == [0] * 8 + [1] * 8 + [2] * 8 + [3] * 16
    with pytest.raises(ClipsonicError, match=r"sequence_embeds must be \[Q=2"):
        stored_sequence(seq, 2, 40, 3.90625, mel)
    assert sequence_activity(np.array([[1.0, 0], [1, 0], [0, 1]])).tolist() == [0.0, 0.0, 1.0]


def test_sync_columns_on_a_sequence_dataset_and_none_on_an_old_one(tiny_pipeline_dir, tmp_path):  # noqa: F811
    make_sync_dataset(tmp_path / "seq", tiny_pipeline_dir)
    ev = run_evaluation(tiny_pipeline_dir, tmp_path / "seq", tmp_path / "out", CONFIG)
    sets = {s["name"]: s for s in json.loads((tmp_path / "out" / "results.json").read_text())["sets"]}
    recon, iq = sets["reconstruction"], sets["iq/w1.5"]
    assert recon["onset_f1"] >= 0.9  # the vocoder keeps the real clicks: the ceiling
    assert 0 <= iq["onset_f1"] <= 1 and 0 <= iq["av_offset_s"] <= 0.5
    assert recon["av_offset_s"] <= 0.1  # the clicks come with the picture changes
    assert "onset_f1" not in sets["reference"]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| onset F1 ↑ | AV offset (s) ↓ |" in md and "1 − cosine between consecutive stored frame" in md
    assert "stored frame sequence" not in ev.model["iq_condition"]  # a non-film model: IQ as before

    make_sync_dataset(tmp_path / "old", tiny_pipeline_dir, sequences=False)
    run_evaluation(tiny_pipeline_dir, tmp_path / "old", tmp_path / "old_out", CONFIG)
    sets = json.loads((tmp_path / "old_out" / "results.json").read_text())["sets"]
    assert not any("onset_f1" in s or "av_offset_s" in s for s in sets)
    assert "onset F1" not in (tmp_path / "old_out" / "results.md").read_text()


def test_a_film_pipelines_iq_follows_the_stored_sequence(tiny_pipeline_dir, tmp_path):  # noqa: F811
    base = CLIPSonicPipeline.from_pretrained(tiny_pipeline_dir, device="cpu")
    with torch.random.fork_rng():
        torch.manual_seed(1)
        unet = MelUNet.from_preset("tiny", cond_dim=base.encoder.dim, seq_cond="film")
        randomize_zero_layers(unet)
    CLIPSonicPipeline(unet=unet, diffusion=base.diffusion.config, encoder=base.encoder, mel=base.mel, clip=base.clip,
                      stats=base.stats, training={"frame_rate": FPS}).save_pretrained(tmp_path / "film")
    info = make_sync_dataset(tmp_path / "seq", tiny_pipeline_dir, clips=1)
    gen = PipelineGenerator(tmp_path / "film", CONFIG)
    seen = []
    gen.pipe.unet.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs), with_kwargs=True)
    ev = run_evaluation(tmp_path / "film", info.root, tmp_path / "out", CONFIG, generator=gen)
    seq = seen[0]["cond_seq"]  # the first step's: [windows · (cond, null), 32, D]
    expected = stored_sequence(load_test_clips(info)[0].sequence[None], 1, FRAMES, FPS, info.mel)[0]  # [64, D]
    assert seq.shape == (6, 32, expected.shape[1])  # 3 windows of 32 frames (starts 0, 16, 32) × [cond; null]
    for k, start in enumerate((0, 16, 32)):  # the conditional row of each window: its part of the sequence
        assert torch.allclose(seq[2 * k], expected[start:start + 32], atol=1e-3)
    assert len({tuple(r.tolist()) for r in expected.round(decimals=3)}) == len(EVENTS) + 1  # it changes at events
    assert "stored frame sequence" in ev.model["iq_condition"]  # the cache key: not a non-film model's IQ set
    assert "onset_f1" in json.loads((tmp_path / "out" / "results.json").read_text())["sets"][-1]
    gen.pipe.training = {"frame_rate": 4}  # a model trained on 4-fps sequences would get the 8-fps frames misplaced
    with pytest.raises(ClipsonicError, match="frame sequences at 8 fps but the model .* follows frames at 4 fps"):
        gen.check_dataset(info)
