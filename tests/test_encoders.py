"""clipsonic.encoders on a tiny random CLIP built offline (tests/support/tiny_clip.py)."""

from __future__ import annotations

import json
import logging
import shutil

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from PIL import Image
from support.tiny_clip import make_tiny_clip, tiny_clip_dir  # noqa: F401

from clipsonic.encoders import load_clip
from clipsonic.errors import ClipsonicError


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir):  # noqa: F811
    return load_clip(tiny_clip_dir)


def _images(seed: int = 0) -> list:
    """Random RGB pictures of assorted sizes, half PIL, half numpy."""
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(32, 32), (48, 80), (120, 40), (7, 9)]]
    return [Image.fromarray(a) if i % 2 else a for i, a in enumerate(arrays)]


TEXTS = ["a dog barking", "rain and thunder", "a man playing the violin", "", "zebra café 123"]


def _assert_unit_rows(x: torch.Tensor, n: int, d: int) -> None:
    assert x.shape == (n, d) and x.dtype == torch.float32 and x.device.type == "cpu"
    assert not x.requires_grad
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(n), atol=1e-5, rtol=0)


def test_embeddings_have_the_model_dimension_and_unit_norm(encoder, tiny_clip_dir):  # noqa: F811
    assert encoder.dim == 32 == json.loads((tiny_clip_dir / "config.json").read_text())["projection_dim"]
    assert encoder.name == str(tiny_clip_dir) and encoder.device == torch.device("cpu")
    images, texts = encoder.encode_images(_images()), encoder.encode_texts(TEXTS)
    _assert_unit_rows(images, 4, 32)
    _assert_unit_rows(texts, len(TEXTS), 32)
    # Different inputs give different embeddings (the model is not collapsed to a constant).
    for x in (images, texts):
        assert torch.cdist(x, x)[~torch.eye(len(x), dtype=torch.bool)].min() > 1e-3
    assert encoder.encode_images([]).shape == (0, 32) and encoder.encode_texts([]).shape == (0, 32)


def test_same_input_same_output_and_batching_does_not_matter(encoder):
    images = _images(1) * 3
    one_by_one = encoder.encode_images(images, batch_size=1)
    assert torch.equal(encoder.encode_images(images, batch_size=1), one_by_one)
    torch.testing.assert_close(encoder.encode_images(images, batch_size=64), one_by_one, atol=1e-5, rtol=0)
    torch.testing.assert_close(encoder.encode_images(images, batch_size=5), one_by_one, atol=1e-5, rtol=0)
    texts = TEXTS * 3
    singles = encoder.encode_texts(texts, batch_size=1)
    torch.testing.assert_close(encoder.encode_texts(texts, batch_size=256), singles, atol=1e-5, rtol=0)
    torch.testing.assert_close(singles[:5], singles[5:10], atol=1e-5, rtol=0)


def test_pil_and_numpy_images_of_any_mode_embed_alike(encoder):
    rgb = np.random.default_rng(2).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    as_pil = Image.fromarray(rgb)
    rgba = as_pil.convert("RGBA")
    out = encoder.encode_images([rgb, as_pil, rgba, np.asfortranarray(rgb)])
    for row in out[1:]:
        torch.testing.assert_close(row, out[0], atol=1e-6, rtol=0)
    grey = encoder.encode_images([as_pil.convert("L")])  # converted to RGB, still embeds
    _assert_unit_rows(grey, 1, 32)


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32),
                                 np.zeros((8, 8, 4), np.uint8), np.zeros((0, 8, 3), np.uint8), "frame.jpg"])
def test_bad_images_are_refused_naming_their_index(encoder, bad):
    with pytest.raises(ClipsonicError, match="image 1"):
        encoder.encode_images([np.zeros((8, 8, 3), np.uint8), bad])


def test_texts_must_be_a_list_of_strings(encoder):
    with pytest.raises(ClipsonicError, match="list"):
        encoder.encode_texts("a dog barking")
    with pytest.raises(ClipsonicError, match="text 1"):
        encoder.encode_texts(["a dog", None])


def test_long_texts_are_truncated_with_one_warning(encoder, caplog):
    # "dog" is one token: 80 of them plus start/end tokens exceed the 77-token context.
    long_a, long_b = "dog " * 80 + "cat", "dog " * 80 + "piano"
    short_a, short_b = "dog " * 70 + "cat", "dog " * 70 + "piano"
    with caplog.at_level(logging.WARNING, logger="clipsonic.encoders"):
        out = encoder.encode_texts([long_a, short_a, long_b, short_b], batch_size=2)
    warnings = [r for r in caplog.records if r.name == "clipsonic.encoders"]
    assert len(warnings) == 1 and "2 of 4" in warnings[0].getMessage()
    torch.testing.assert_close(out[0], out[2])  # the differing tails were cut off
    assert (out[1] - out[3]).norm() > 1e-4  # within the context the tail still counts
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clipsonic.encoders"):
        encoder.encode_texts([short_a])
    assert not [r for r in caplog.records if r.name == "clipsonic.encoders"]


def test_text_token_states_are_what_the_embedding_pools(encoder):
    pooled, states, mask = encoder.text_token_states(["a dog barking", "rain"])
    assert pooled.shape == (2, 32) and states.shape == (2, 77, 32) and mask.shape == (2, 77)
    assert pooled.dtype == states.dtype == torch.float32 and mask.dtype == torch.bool
    # Start token + words + end token are real; the rest is padding.
    assert mask.sum(dim=1).tolist() == [5, 3] and mask[:, 0].all() and not mask[:, 6:].any()
    torch.testing.assert_close(torch.nn.functional.normalize(pooled, dim=-1),
                               encoder.encode_texts(["a dog barking", "rain"]))
    assert (pooled.norm(dim=-1) - 1).abs().max() > 1e-3  # returned unnormalised
    # The pooled embedding is the projected end-token state.
    text_projection = encoder.model.text_projection.weight.float()
    torch.testing.assert_close(states[0, 4] @ text_projection.T, pooled[0], atol=1e-5, rtol=1e-4)


def test_fingerprint_is_stable_across_loads_and_dtypes_and_tracks_the_weights(encoder, tiny_clip_dir, tmp_path):  # noqa: F811
    fp = encoder.fingerprint
    assert len(fp) == 16 and int(fp, 16) >= 0
    half = load_clip(tiny_clip_dir, dtype="bfloat16")
    assert half.model.dtype == torch.bfloat16 and half.fingerprint == fp
    low = half.encode_images(_images())
    assert low.dtype == torch.float32  # outputs are float32 whatever the compute dtype
    assert torch.nn.functional.cosine_similarity(low, encoder.encode_images(_images())).min() > 0.98
    other = load_clip(make_tiny_clip(tmp_path / "seed1", seed=1))
    assert other.fingerprint != fp
    assert not torch.allclose(other.encode_texts(TEXTS), encoder.encode_texts(TEXTS), atol=1e-3)


def test_openai_repo_layout_loads_the_same(encoder, tiny_clip_dir, tmp_path):  # noqa: F811
    """openai/clip-vit-large-patch14 stores its image processor in the old feature-extractor form."""
    legacy = shutil.copytree(tiny_clip_dir, tmp_path / "legacy")
    config = json.loads((legacy / "preprocessor_config.json").read_text())
    for key in ("image_processor_type", "rescale_factor", "do_rescale", "do_convert_rgb"):
        config.pop(key)
    config.update(size=32, crop_size=32, feature_extractor_type="CLIPFeatureExtractor")
    (legacy / "preprocessor_config.json").write_text(json.dumps(config))
    images = _images(3)
    torch.testing.assert_close(load_clip(legacy).encode_images(images), encoder.encode_images(images))


def test_hub_id_in_the_local_cache_loads_offline(encoder, tiny_clip_dir, tmp_path, monkeypatch):  # noqa: F811
    repo = tmp_path / "hub" / "models--tiny-org--tiny-clip"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_clip_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cached = load_clip("tiny-org/tiny-clip")
    assert cached.name == "tiny-org/tiny-clip" and cached.fingerprint == encoder.fingerprint
    torch.testing.assert_close(cached.encode_texts(TEXTS), encoder.encode_texts(TEXTS))


def test_unknown_hub_id_offline_says_what_to_download(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ClipsonicError) as err:
        load_clip("openai/clip-vit-large-patch14")
    message = str(err.value)
    assert "hf download openai/clip-vit-large-patch14" in message and "--local-dir DIR" in message
    assert "pass DIR" in message and "\n" not in message


def _without(src, tmp_path, name):
    out = shutil.copytree(src, tmp_path / f"no-{name}")
    (out / name).unlink()
    return out


@pytest.mark.parametrize("case, expected", [
    ("empty", "no config.json"),
    ("bert", "does not hold a CLIP model .*model_type is 'bert'"),
    ("no-weights", "missing its weights"),
    ("no-processor", "preprocessor_config.json"),
    ("no-tokenizer", "tokenizer"),
    ("missing", "does not exist"),
    ("corrupt-weights", "model.safetensors: not a readable safetensors file .* re-export or re-download"),
])
def test_directories_that_are_not_clip_models_are_refused_by_name(case, expected, tiny_clip_dir, tmp_path):  # noqa: F811
    if case == "empty":
        directory = tmp_path / "empty"
        directory.mkdir()
    elif case == "bert":
        directory = tmp_path / "bert"
        directory.mkdir()
        (directory / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    elif case == "no-weights":
        directory = _without(tiny_clip_dir, tmp_path, "model.safetensors")
    elif case == "no-processor":
        directory = _without(tiny_clip_dir, tmp_path, "preprocessor_config.json")
    elif case == "no-tokenizer":
        directory = _without(tiny_clip_dir, tmp_path, "merges.txt")
    elif case == "corrupt-weights":
        directory = shutil.copytree(tiny_clip_dir, tmp_path / "corrupt")
        weights = directory / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        directory = tmp_path / "nowhere" / "clip"
    with pytest.raises(ClipsonicError, match=expected) as err:
        load_clip(directory)
    assert str(directory) in str(err.value)
