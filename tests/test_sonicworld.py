"""clipsonic.sonicworld: the world's sounds, pictures and videos, its oracle, and its CLIP."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipsonic.data.sources import collect_sources
from clipsonic.encoders import load_clip
from clipsonic.errors import ClipsonicError
from clipsonic.media import load_audio, load_frames, probe
from clipsonic.sonicworld import (
    CONCEPT_NAMES,
    CONCEPTS,
    OracleClassifier,
    WorldClipConfig,
    WorldConfig,
    captions,
    make_clip,
    modality_gap,
    render_world,
    train_world_clip,
)
from clipsonic.sonicworld.clip import contrastive_loss
from clipsonic.sonicworld.world import TIMBRES, synthesize

TINY = WorldConfig(seed=7, train_videos_per_concept=2, test_videos_per_concept=1, caption_images_per_concept=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return render_world(tmp_path_factory.mktemp("world"), TINY)


@pytest.fixture(scope="module")
def oracle():
    return OracleClassifier()


# --- the world -----------------------------------------------------------------------------

def test_clips_are_a_function_of_the_seed():
    frames, audio = make_clip(TINY, "train", 3, 1)
    again = make_clip(TINY, "train", 3, 1)
    assert np.array_equal(frames, again[0]) and np.array_equal(audio, again[1])
    other = make_clip(TINY.replace(seed=8), "train", 3, 1)
    assert not np.array_equal(frames, other[0]) and not np.array_equal(audio, other[1])
    assert frames.shape == (TINY.num_frames, 64, 64, 3) and frames.dtype == np.uint8
    assert audio.shape == (49152,) and audio.dtype == np.float32


def test_rendering_twice_gives_identical_files(world, tmp_path):
    again = render_world(tmp_path, TINY)
    names = sorted(p.relative_to(world.parent) for p in world.parent.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    for name in names:  # mp4 bytes included
        assert (world.parent / name).read_bytes() == (again.parent / name).read_bytes(), name
    assert not [p for p in tmp_path.rglob(".*")], "temporary files were left behind"


def test_videos_are_h264_aac_with_the_clip_inside(world):
    path = world.parent / "videos" / "train" / "yellow_star_1.mp4"
    info = probe(path)
    assert (info.has_video, info.has_audio, info.video_codec, info.audio_codec) == (True, True, "h264", "aac")
    assert (info.video_width, info.video_height, info.video_fps, info.audio_sample_rate) == (64, 64, 8.0, 16000)
    assert 3.07 <= info.duration <= 3.2
    frames, audio = make_clip(TINY, "train", CONCEPT_NAMES.index("yellow_star"), 1)
    decoded = load_frames(path, [0.0, 2.0])
    assert np.abs(decoded[0].astype(int) - frames[0]).mean() < 8  # lossy, but the same picture
    assert np.abs(decoded[1].astype(int) - frames[16]).mean() < 8
    sound = load_audio(path)
    assert len(sound) == len(audio)
    middle = slice(4000, -4000)  # away from the codec's start-up and tail
    assert np.abs(sound[middle] - audio[middle]).max() < 0.05


def test_manifest_is_a_preprocess_source(world):
    items, problems = collect_sources(world)
    assert problems == [] and len(items) == 8 * 3
    assert {it.label for it in items} == set(CONCEPT_NAMES)
    assert sum(it.split == "test" for it in items) == 8 and all(it.path.is_file() for it in items)
    table = json.loads((world.parent / "world.json").read_text())
    assert WorldConfig.from_dict(table["config"]) == TINY and len(table["concepts"]) == 8
    pictures = sorted((world.parent / "captions").glob("*.png"))
    assert len(pictures) == 8
    assert pictures[0].with_suffix(".txt").read_text().splitlines() == captions(pictures[0].stem[:-2], "train")


def test_held_out_captions_are_new_sentences_of_known_words():
    vocabulary = {w for c in CONCEPTS for t in captions(c, "train") for w in t.split()}
    for c in CONCEPTS:
        train, test = captions(c, "train"), captions(c.name, "test")
        assert len(test) >= 12 and not set(train) & set(test)
        assert all(set(t.split()) <= vocabulary for t in test)
        # every caption names its own concept and no other
        for text in train + test:
            assert [o.name for o in CONCEPTS if any(re.search(rf"\b{n}\b", text) for n in o.nouns)] == [c.name]
    with pytest.raises(ClipsonicError, match="unknown concept"):
        captions("purple_cow")


def test_sounds_follow_the_spec():
    for k, c in enumerate(CONCEPTS):
        audio = make_clip(WorldConfig(seed=k), "train", k, 0)[1]
        peak_db = 20 * np.log10(np.abs(audio).max())
        assert -9.5 < peak_db < -2.5
        spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
        freqs = np.fft.rfftfreq(len(audio), 1 / 16000)
        strongest = freqs[spectrum.argmax()]
        assert abs(np.log(strongest / c.f0)) <= np.log(1.031), (c.name, strongest)
        # present in every 64-ms window: no frame more than 20 dB below the loudest
        frames = audio[: len(audio) // 1024 * 1024].reshape(-1, 1024)
        rms = np.sqrt((frames ** 2).mean(axis=1))
        assert 20 * np.log10(rms.min() / rms.max()) > -20
    assert all(max(a for _, a in p) == p[0][1] for p in TIMBRES.values())  # fundamental strongest
    assert len({c.timbre for c in CONCEPTS}) == 8 and len({(c.colour, c.shape) for c in CONCEPTS}) == 8
    rng = np.random.default_rng(0)
    assert synthesize(500.0, "reed", "pulse3", 100, rng).shape == (100,)


# --- the oracle (the rest lives in test_sonicworld_oracle.py) -------------------------------

def test_oracle_names_sound_decoded_from_videos(world, oracle):
    items, _ = collect_sources(world)
    audio = np.stack([load_audio(it.path) for it in items])
    labels = np.array([CONCEPT_NAMES.index(it.label) for it in items])
    assert (oracle.classify_mels(oracle.mels(audio)) == labels).mean() >= 0.99


# --- the world-CLIP ------------------------------------------------------------------------

def test_world_clip_saves_a_loadable_clip(tmp_path):
    small = WorldClipConfig(steps=3, per_concept=2, width=32, layers=1, heads=2, projection_dim=16)
    out = train_world_clip(tmp_path / "clip", TINY, small)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    encoder = load_clip(out, device="cpu")
    assert encoder.dim == 16 and encoder.max_text_tokens == 32
    texts = encoder.encode_texts(captions(0, "test")[:3])
    images = encoder.encode_images([make_clip(TINY, "test", 0, 0)[0][0]])
    assert texts.shape == (3, 16) and images.shape == (1, 16)
    torch.testing.assert_close(torch.cat([texts, images]).norm(dim=-1), torch.ones(4))
    report = modality_gap(encoder, TINY)
    assert 0 <= report["zero_shot_accuracy"] <= 1 and report["mean_gap_distance"] >= 0
    assert encoder.tokenizer.tokenize("the buzzing blue box") == ["the</w>", "buzzing</w>", "blue</w>", "box</w>"]


def test_the_image_term_asks_a_concepts_pictures_to_sit_together():
    labels = torch.tensor([0, 0, 1, 1])
    texts = torch.eye(4)[[0, 0, 1, 1]]  # one caption direction per concept
    # images ranked right against the captions either way; apart: a concept's two pictures on unrelated axes
    together = F.normalize(torch.eye(4)[[0, 0, 1, 1]] + 0.01 * torch.eye(4), dim=-1)
    apart = F.normalize(torch.eye(4)[[0, 0, 1, 1]] + 2.0 * torch.eye(4)[[2, 3, 2, 3]], dim=-1)
    for images in (together, apart):  # the image-caption term alone does not tell the two apart
        assert contrastive_loss(images, texts, labels, 100.0).item() < 1.0
    with_term = {name: contrastive_loss(x, texts, labels, 100.0, image_weight=1.0).item()
                 for name, x in (("together", together), ("apart", apart))}
    assert with_term["apart"] > with_term["together"] + 5, with_term
    assert not np.isnan(with_term["together"])  # the masked self-pairs do not poison the mean


@pytest.mark.slow
def test_default_world_clip_names_held_out_captions(tmp_path, world):
    out = train_world_clip(tmp_path / "clip", TINY)
    report = modality_gap(load_clip(out, device="cpu"), TINY)
    assert report["zero_shot_accuracy"] >= 0.9 and report["caption_accuracy"] >= 0.9
    # a modality gap as real CLIP's: captions rank their images first, yet sit far from them
    # (measured: paired cosine 0.41, image-image 0.99, gap distance 1.0)
    assert report["text_image_cosine_same_concept"] > report["text_image_cosine_other_concept"] + 0.1
    assert report["text_image_cosine_same_concept"] < report["image_image_cosine_within_concept"] - 0.3
    assert report["mean_gap_distance"] > 0.5
    # frames decoded from the H.264 videos embed like rendered ones
    items, _ = collect_sources(world)
    frames = [load_frames(it.path, [1.0])[0] for it in items]
    decoded = modality_gap(load_clip(out, device="cpu"), TINY, images=frames,
                           labels=[CONCEPT_NAMES.index(it.label) for it in items])
    assert decoded["zero_shot_accuracy"] >= 0.9
