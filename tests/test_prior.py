"""Priors: our PriorNet/DiffusionPrior, Karlo-style PriorTransformer directories, loading and attaching."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from support.media_files import truncate
from support.tiny_clip import make_tiny_clip
from support.tiny_pipeline import make_tiny_pipeline

from clipsonic.encoders import ClipModelRef
from clipsonic.errors import ClipsonicError
from clipsonic.prior import (
    DiffusionPrior,
    PriorConfig,
    PriorNet,
    attach_prior,
    check_same_clip,
    load_prior,
    prior_preset,
)

DIM = 32


def _our_prior(clip: ClipModelRef, seed: int = 0, steps: int = 8) -> DiffusionPrior:
    config = PriorConfig(network=prior_preset("tiny", clip.dim), steps=steps)
    torch.manual_seed(seed)
    return DiffusionPrior(PriorNet(config.network), config, clip)


def _gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir):
    from clipsonic.encoders import load_clip

    return load_clip(tiny_clip_dir, device="cpu")


@pytest.fixture(scope="module")
def bare_pipeline(tmp_path_factory, tiny_clip_dir):
    """A tiny pipeline without a prior; tests attach to copies of it."""
    return make_tiny_pipeline(tmp_path_factory.mktemp("bare") / "pipe", tiny_clip_dir, with_prior=False)


@pytest.fixture
def pipe_dir(bare_pipeline, tmp_path):
    return shutil.copytree(bare_pipeline, tmp_path / "pipe")


@pytest.fixture(scope="module")
def clip_ref(encoder, tiny_clip_dir):
    return ClipModelRef(model=str(tiny_clip_dir), dim=encoder.dim, fingerprint=encoder.fingerprint)


def test_prior_net_null_condition_ignores_the_text():
    net = PriorNet(prior_preset("tiny", DIM)).eval()
    x, t = torch.randn(2, DIM), torch.tensor([10, 500])
    a, b = torch.nn.functional.normalize(torch.randn(2, 2, DIM), dim=-1)
    drop = torch.ones(2, dtype=torch.bool)
    assert net(x, t, a).shape == (2, DIM)
    assert not torch.allclose(net(x, t, a), net(x, t, b))
    assert torch.equal(net(x, t, a, drop), net(x, t, b, drop))
    with pytest.raises(ValueError, match="PriorNet expects"):
        net(torch.randn(2, DIM + 1), t, a)


def test_our_prior_is_seeded_per_row_and_survives_save_load(tmp_path, clip_ref):
    prior = _our_prior(clip_ref)
    text = torch.nn.functional.normalize(torch.randn(3, DIM), dim=-1)
    batch = prior.sample([], text, generators=_gens(5, 6, 7), guidance_scale=2.0)
    assert batch.shape == (3, DIM) and torch.allclose(batch.norm(dim=-1), torch.ones(3))
    alone = prior.sample([], text[1:2], generators=_gens(6), guidance_scale=2.0)
    assert torch.allclose(batch[1], alone[0], atol=1e-5)
    other_seed = prior.sample([], text[1:2], generators=_gens(8), guidance_scale=2.0)
    assert not torch.allclose(alone, other_seed, atol=1e-3)
    prior.save_pretrained(tmp_path / "p")
    loaded = load_prior(tmp_path / "p")
    assert isinstance(loaded, DiffusionPrior) and loaded.clip == clip_ref
    assert torch.equal(loaded.sample([], text, generators=_gens(5, 6, 7), guidance_scale=2.0), batch)


def test_check_same_clip_uses_fingerprints_then_names():
    a = ClipModelRef("openai/clip-vit-large-patch14", 768, "aaaa")
    check_same_clip(ClipModelRef("/local/copy", 768, "aaaa"), a)  # same weights, other name: fine
    check_same_clip(ClipModelRef("openai/clip-vit-large-patch14", 768, ""), a)  # name only (Karlo)
    for bad in (ClipModelRef("x", 512, "aaaa"), ClipModelRef("openai/clip-vit-large-patch14", 768, "bbbb"),
                ClipModelRef("laion/other", 768, "")):
        with pytest.raises(ClipsonicError, match=a.model):
            check_same_clip(bad, a)


# --- Karlo-style diffusers PriorTransformer -------------------------------------------------------

def _write_karlo(root, *, clip_mean=None, clip_std=None, seed=0):
    """A raw Karlo download layout: prior/ (PriorTransformer) + prior_scheduler/ (UnCLIPScheduler)."""
    from diffusers import PriorTransformer, UnCLIPScheduler

    torch.manual_seed(seed)
    model = PriorTransformer(num_attention_heads=2, attention_head_dim=8, num_layers=1, embedding_dim=DIM,
                             num_embeddings=77, additional_embeddings=4)
    with torch.no_grad():
        model.clip_mean.copy_(clip_mean if clip_mean is not None else torch.randn(1, DIM) * 0.1)
        model.clip_std.copy_(clip_std if clip_std is not None else torch.ones(1, DIM))
    model.save_pretrained(root / "prior", safe_serialization=True)
    UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample", clip_sample_range=5.0
                    ).save_pretrained(root / "prior_scheduler")
    return root


def test_karlo_prior_loads_samples_and_applies_its_standardisation(tmp_path, encoder, tiny_clip_dir):
    texts = ["a dog barking", "rain on a roof"]
    emb = encoder.encode_texts(texts)
    karlo = load_prior(_write_karlo(tmp_path / "karlo"), clip_model=str(tiny_clip_dir))
    assert karlo.type_name == "karlo" and karlo.clip.dim == DIM and karlo.clip.fingerprint == ""
    out = karlo.sample(texts, emb, encoder, generators=_gens(1, 2), steps=4)
    assert out.shape == (2, DIM) and torch.allclose(out.norm(dim=-1), torch.ones(2))
    again = karlo.sample(texts[1:], emb[1:], encoder, generators=_gens(2), steps=4)
    assert torch.allclose(out[1], again[0], atol=1e-5)  # per-row generators, also through UnCLIPScheduler.step
    unguided = karlo.sample(texts, emb, encoder, generators=_gens(1, 2), steps=4, guidance_scale=1.0)
    assert not torch.allclose(out, unguided, atol=1e-4)
    # clip_std = 0: whatever the chain does, x · std + mean = mean, so every sample is normalize(mean)
    mean = torch.randn(1, DIM)
    fixed = load_prior(_write_karlo(tmp_path / "k0", clip_mean=mean, clip_std=torch.zeros(1, DIM)))
    assert torch.allclose(fixed.sample(texts, emb, encoder, steps=3),
                          torch.nn.functional.normalize(mean, dim=-1).expand(2, -1), atol=1e-6)


def test_karlo_prior_refuses_pickles_and_wrong_token_width(tmp_path, encoder, tiny_clip_dir):
    root = _write_karlo(tmp_path / "karlo")
    for f in (root / "prior").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ClipsonicError, match="safetensors"):
        load_prior(root)
    wide = make_tiny_clip(tmp_path / "wide_clip", projection_dim=DIM, width=48)
    from clipsonic.encoders import load_clip

    karlo = load_prior(_write_karlo(tmp_path / "k2"))
    with pytest.raises(ClipsonicError, match="width"):
        karlo.sample(["a dog"], torch.zeros(1, DIM), load_clip(wide, device="cpu"))


def test_karlo_prior_refuses_corrupt_weights_and_a_config_they_do_not_fit(tmp_path):
    """One line naming the file; a config.json asking for other sizes is refused from the safetensors header, before
    diffusers allocates the network."""
    root = _write_karlo(tmp_path / "karlo")
    weights = next((root / "prior").glob("*.safetensors"))
    truncate(weights)
    with pytest.raises(ClipsonicError, match=f"{weights}: not a readable safetensors file"):
        load_prior(root)
    root = _write_karlo(tmp_path / "k2")
    config = json.loads((root / "prior" / "config.json").read_text())
    (root / "prior" / "config.json").write_text(json.dumps({**config, "embedding_dim": 2**20}))
    with pytest.raises(ClipsonicError, match="PriorTransformer weights do not fit its config.json"):
        load_prior(root)
    (root / "prior" / "config.json").write_text("[1]")
    with pytest.raises(ClipsonicError, match="not a prior directory"):
        load_prior(root)


def test_load_prior_refuses_a_folder_that_is_not_a_prior(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text('{"type": "something"}')
    with pytest.raises(ClipsonicError, match="not a prior directory"):
        load_prior(tmp_path / "x")
    with pytest.raises(ClipsonicError, match="no such"):
        load_prior(tmp_path / "missing")


# --- attaching ------------------------------------------------------------------------------------

def test_attach_our_prior_then_pd_mode_works(tmp_path, pipe_dir, clip_ref):
    from clipsonic.export import read_model_index
    from clipsonic.pipeline import CLIPSonicPipeline

    pipe = CLIPSonicPipeline.from_pretrained(pipe_dir, device="cpu")
    assert "pd" not in pipe.modes and pipe.default_mode("text") == "knn"
    with pytest.raises(ClipsonicError, match="prior"):
        pipe(text="a dog", mode="pd", num_inference_steps=2, seed=0)
    _our_prior(clip_ref).save_pretrained(tmp_path / "prior")
    attach_prior(pipe_dir, tmp_path / "prior")
    assert read_model_index(pipe_dir).components["prior"] == "prior"
    assert "prior" in (pipe_dir / "README.md").read_text().split("present:")[1].split(";")[0]
    pipe = CLIPSonicPipeline.from_pretrained(pipe_dir, device="cpu")
    assert pipe.default_mode("text") == "pd"
    out = pipe(text="a dog barking", num_inference_steps=2, seed=0)
    assert out.mode == "pd" and out.audios.shape == (1, 32 * 512)


def test_attach_refuses_a_prior_of_another_clip_and_changes_nothing(tmp_path, pipe_dir, tiny_clip_dir):
    before = (pipe_dir / "model_index.json").read_text()
    _our_prior(ClipModelRef("openai/clip-vit-base-patch32", DIM, "0123456789abcdef")).save_pretrained(tmp_path / "prior")
    with pytest.raises(ClipsonicError, match="openai/clip-vit-base-patch32.*" + str(tiny_clip_dir)):
        attach_prior(pipe_dir, tmp_path / "prior")
    assert (pipe_dir / "model_index.json").read_text() == before and not (pipe_dir / "prior").exists()
    # a raw Karlo prior is named ViT-L/14 unless told otherwise
    _write_karlo(tmp_path / "karlo")
    with pytest.raises(ClipsonicError, match="clip-vit-large-patch14"):
        attach_prior(pipe_dir, tmp_path / "karlo")


def test_attach_a_raw_karlo_prior_converts_it(tmp_path, pipe_dir, tiny_clip_dir):
    from clipsonic.pipeline import CLIPSonicPipeline

    attach_prior(pipe_dir, _write_karlo(tmp_path / "karlo"), clip_model=str(tiny_clip_dir))
    config = json.loads((pipe_dir / "prior" / "config.json").read_text())
    assert config["type"] == "karlo" and config["clip_model"]["model"] == str(tiny_clip_dir)
    assert (pipe_dir / "prior" / "transformer" / "config.json").is_file()
    pipe = CLIPSonicPipeline.from_pretrained(pipe_dir, device="cpu")
    out = pipe(text=["a dog", "rain"], mode="pd", num_inference_steps=2, prior_steps=3, seed=0)
    assert out.audios.shape == (2, 32 * 512)
