"""MelUNet: shapes per preset, conditioning and its null substitution, save/load, training hooks."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from clipsonic.config import ConfigError
from clipsonic.errors import ClipsonicError
from clipsonic.models import UNET_PRESETS, MelUNet, MelUNetConfig
from clipsonic.models.layers import FrameAttention, timestep_embedding

COND_DIM = 32  # small CLIP stand-in: keeps the tests fast; the width is a config field like any other


def inputs(batch=2, frames=32, cond_dim=COND_DIM, in_channels=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, in_channels, 64, frames, generator=g)
    t = torch.randint(0, 4000, (batch,), generator=g)
    cond = torch.nn.functional.normalize(torch.randn(batch, cond_dim, generator=g), dim=-1)
    return x, t, cond


def randomise_zero_layers(model: MelUNet) -> MelUNet:
    """Give the zero-initialised layers random weights, so the output depends on every input."""
    torch.manual_seed(1)
    for p in model.parameters():
        if not p.detach().any():
            torch.nn.init.normal_(p, std=0.05)
    return model


def tiny(**overrides) -> MelUNet:
    torch.manual_seed(0)
    return MelUNet.from_preset("tiny", cond_dim=COND_DIM, **overrides)


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_preset_forward_shape(name):
    model = MelUNet.from_preset(name, cond_dim=COND_DIM).eval()
    with torch.no_grad():
        out = model(*inputs(batch=2, frames=32))
    assert out.shape == (2, 2, 64, 32)
    assert model.config == UNET_PRESETS[name].replace(cond_dim=COND_DIM)


def test_paper_preset_size_and_forward():
    model = MelUNet.from_preset("paper").eval()
    # improved-diffusion's ImageNet-64 UNet (128 ch, mult 1-2-3-4, 3 res-blocks, attention at
    # 16 and 8, learned sigma) has ~121M parameters; our CLIP projection replaces its class table.
    assert 115e6 < model.num_parameters() < 128e6
    assert model.config.cond_dim == 768 and model.config.learn_sigma
    with torch.no_grad():
        out = model(*inputs(batch=1, frames=16, cond_dim=768))
    assert out.shape == (1, 2, 64, 16)


@pytest.mark.parametrize(("in_channels", "learn_sigma", "expected"), [(1, True, 2), (1, False, 1), (2, True, 4)])
def test_output_channels(in_channels, learn_sigma, expected):
    model = tiny(in_channels=in_channels, learn_sigma=learn_sigma)
    out = model(*inputs(in_channels=in_channels))
    assert out.shape == (2, expected, 64, 32)
    assert model.config.out_channels == expected


def test_output_is_zero_at_construction():
    model = tiny()
    out = model(*inputs())
    assert torch.equal(out, torch.zeros_like(out))
    assert not model.conv_out.weight.any() and not model.conv_out.bias.any()


@pytest.mark.parametrize("frames", [16, 32, 128])
def test_frame_counts(frames):
    model = randomise_zero_layers(tiny()).eval()
    with torch.no_grad():
        out = model(*inputs(batch=1, frames=frames))
    assert out.shape == (1, 2, 64, frames)
    assert out.isfinite().all()


def test_bad_shapes_are_refused_with_the_fix():
    model = tiny()
    x, t, cond = inputs(frames=32)
    with pytest.raises(ClipsonicError, match="multiples of 8"):
        model(torch.randn(2, 1, 64, 20), t, cond)
    with pytest.raises(ClipsonicError, match="cond_dim=768"):
        model(x, t, torch.randn(2, 768))
    with pytest.raises(ClipsonicError, match="t of shape"):
        model(x, t[:1], cond)
    with pytest.raises(ClipsonicError, match="drop_cond"):
        model(x, t, cond, torch.tensor([1, 0]))


def test_null_substitution():
    model = randomise_zero_layers(tiny()).eval()
    x, t, cond_a = inputs(seed=0)
    _, _, cond_b = inputs(seed=1)
    everyone, nobody = torch.ones(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)
    with torch.no_grad():
        dropped_a, dropped_b = model(x, t, cond_a, everyone), model(x, t, cond_b, everyone)
        kept_a, kept_b = model(x, t, cond_a, nobody), model(x, t, cond_b, nobody)
        # One batched call serves both guidance branches: row 0 conditional, row 1 unconditional.
        mixed = model(x, t, cond_a, torch.tensor([False, True]))
    assert torch.equal(dropped_a, dropped_b)
    assert (kept_a - kept_b).abs().max() > 1e-3
    assert torch.allclose(kept_a, model(x, t, cond_a), atol=1e-6)  # None = keep every condition
    assert torch.allclose(mixed[0], kept_a[0], atol=1e-5)
    assert torch.allclose(mixed[1], dropped_a[1], atol=1e-5)


def test_gradients_reach_condition_projection_and_null_vector():
    model = randomise_zero_layers(tiny())
    x, t, cond = inputs(batch=4)
    drop = torch.tensor([True, False, True, False])
    model(x, t, cond, drop).square().mean().backward()
    assert model.cond_proj.weight.grad.abs().max() > 0
    assert model.null_cond.grad.abs().max() > 0
    model.zero_grad()
    model(x, t, cond, torch.zeros(4, dtype=torch.bool)).square().mean().backward()
    assert model.null_cond.grad is None or not model.null_cond.grad.any()  # unused when nothing is dropped


def test_save_load_round_trip(tmp_path):
    model = randomise_zero_layers(tiny(num_heads=1)).eval()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = MelUNet.from_pretrained(tmp_path).eval()
    assert loaded.config == model.config
    # on the CPU the loaded weights are channels-last (faster oneDNN convolutions); the output stays NCHW
    assert loaded.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert not model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    x, t, cond = inputs()
    drop = torch.tensor([False, True])
    with torch.no_grad():
        out = loaded(x, t, cond, drop)
        assert out.is_contiguous()
        torch.testing.assert_close(out, model(x, t, cond, drop), rtol=1e-5, atol=1e-5)
    loaded.save_pretrained(tmp_path / "again")  # saved contiguous, the same tensors
    first, again = (load_file(str(tmp_path / d / "model.safetensors")) for d in (".", "again"))
    assert list(again) == list(first) and all(torch.equal(again[k], first[k]) for k in first)


def test_load_refuses_unknown_config_key_and_missing_files(tmp_path):
    tiny().save_pretrained(tmp_path)
    config_path = tmp_path / "config.json"
    data = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**data, "num_attention_layers": 3}))
    with pytest.raises(ConfigError, match="num_attention_layers") as info:
        MelUNet.from_pretrained(tmp_path)
    assert isinstance(info.value, ClipsonicError)
    config_path.write_text(json.dumps({**data, "base_channels": 48}))  # weights no longer fit
    with pytest.raises(ClipsonicError, match="do not fit"):
        MelUNet.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ClipsonicError, match="no model.safetensors"):
        MelUNet.from_pretrained(tmp_path)


def test_config_validation():
    with pytest.raises(ConfigError, match="unknown MelUNet preset"):
        MelUNet.from_preset("huge")
    with pytest.raises(ConfigError, match="known keys"):
        MelUNet.from_preset("tiny", channels=3)
    with pytest.raises(ConfigError, match="norm_groups"):
        MelUNetConfig(base_channels=40)
    with pytest.raises(ConfigError, match="attention_levels"):
        MelUNetConfig(attention_levels=(4,))
    assert MelUNetConfig.from_dict(UNET_PRESETS["small"].to_dict()) == UNET_PRESETS["small"]


def test_timestep_embedding_closed_form():
    t = torch.tensor([0, 1, 3999])
    emb = timestep_embedding(t, 8)
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = [10000 ** (-i / 4) for i in range(4)]
    expected = [math.cos(3999 * f) for f in freqs] + [math.sin(3999 * f) for f in freqs]
    assert torch.allclose(emb[2], torch.tensor(expected), atol=1e-4)
    # every index up to 4000 gets its own vector at the tiny preset's width
    all_t = timestep_embedding(torch.arange(4000), 32)
    nearest = torch.cdist(all_t[1:], all_t[:-1]).diagonal()
    assert nearest.min() > 1e-3


def test_autocast_bf16_cpu_forward_and_backward():
    model = randomise_zero_layers(tiny())
    x, t, cond = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, cond, torch.tensor([True, False]))
    assert out.shape == (2, 2, 64, 32) and out.isfinite().all()
    out.float().square().mean().backward()
    assert model.conv_in.weight.grad.isfinite().all()


def test_gradient_checkpointing_gives_the_same_gradients():
    model = randomise_zero_layers(tiny())
    x, t, cond = inputs()
    drop = torch.tensor([True, False])
    model(x, t, cond, drop).square().mean().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing = True
    calls = []
    model.middle.register_forward_pre_hook(lambda *_: calls.append(1))
    model(x, t, cond, drop).square().mean().backward()
    assert len(calls) == 2  # the stage ran again in the backward pass: activations were not kept
    for a, p in zip(plain, model.parameters(), strict=True):
        assert torch.allclose(a, p.grad, atol=1e-6)


def test_traces_as_one_graph_under_torch_compile():
    model = randomise_zero_layers(tiny()).eval()
    x, t, cond = inputs()
    drop = torch.tensor([False, True])
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # fullgraph: a graph break fails
    with torch.no_grad():
        assert torch.allclose(compiled(x, t, cond, drop), model(x, t, cond, drop), atol=1e-5)


def test_tiny_preset_fits_a_fixed_target():
    torch.manual_seed(0)
    model = tiny()
    x, t, cond = inputs(batch=4, frames=16)
    bins = torch.linspace(0, 1, 64)[:, None]
    target = torch.sin(6 * bins + torch.linspace(0, 3, 16)[None]).expand(4, 2, 64, 16)  # smooth mel-like pattern
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(model(x, t, cond), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, losses


def sequence(cond: torch.Tensor, frames: int) -> torch.Tensor:
    """The constant sequence ``[B, frames, D]`` of ``cond [B, D]``."""
    return cond[:, None].expand(-1, frames, -1).clone()


def test_seq_cond_none_is_the_network_of_old_checkpoints(tmp_path):
    old = UNET_PRESETS["tiny"].replace(cond_dim=COND_DIM).to_dict()
    del old["seq_cond"]  # a config.json from before the field
    assert MelUNetConfig.from_dict(old).seq_cond == "none"
    with pytest.raises(ConfigError, match="seq_cond"):
        MelUNetConfig(seq_cond="frames")
    plain, film = tiny(), tiny(seq_cond="film")
    assert list(plain.state_dict()) == list(MelUNet(MelUNetConfig.from_dict(old)).state_dict())
    assert sorted(set(film.state_dict()) - set(plain.state_dict())) == ["seq_proj.bias", "seq_proj.weight"]
    randomise_zero_layers(plain).eval().save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(old))
    x, t, cond = inputs()
    with torch.no_grad():
        torch.testing.assert_close(MelUNet.from_pretrained(tmp_path)(x, t, cond), plain(x, t, cond))
    with pytest.raises(ClipsonicError, match="seq_cond='none'"):
        plain(x, t, cond, cond_seq=sequence(cond, 4))


def starting(model: MelUNet) -> MelUNet:
    """Zero again the layers through which a new model's sequence enters, as constructed."""
    for layer in ([model.seq_proj] if model.config.seq_cond == "film" else
                  [m.proj for m in model.modules() if isinstance(m, FrameAttention)]):
        for p in layer.parameters():
            torch.nn.init.zeros_(p)
    return model


@pytest.mark.parametrize("seq_cond", ["film", "xattn"])
@pytest.mark.parametrize(("overrides", "n"), [({}, 1), ({}, 5), ({}, 40), ({"patch_size": 1}, 3)])
def test_sequence_models_have_the_shapes_and_start_as_the_global_model(seq_cond, overrides, n):
    model = starting(randomise_zero_layers(tiny(seq_cond=seq_cond, **overrides))).eval()  # a new model is the global one
    x, t, cond = inputs(frames=32)
    seq = torch.randn(2, n, COND_DIM)
    with torch.no_grad():
        out = model(x, t, cond, cond_seq=seq)
        assert out.shape == (2, 2, 64, 32)
        torch.testing.assert_close(out, model(x, t, cond), rtol=1e-5, atol=1e-5)
    with pytest.raises(ClipsonicError, match=rf"cond_seq of shape \[2, N, {COND_DIM}\]"):
        model(x, t, cond, cond_seq=seq[:, :, :8])


def test_film_changes_the_output_where_the_sequence_changes():
    model = randomise_zero_layers(tiny(seq_cond="film")).eval()
    x, t, cond = inputs(frames=128)
    constant = sequence(cond, 8)
    changed = constant.clone()  # another embedding in the last quarter (rows 6, 7: mel frames 96-127)
    other = torch.randn(COND_DIM, generator=torch.Generator().manual_seed(5))
    changed[:, 6:] = torch.nn.functional.normalize(other, dim=0)
    with torch.no_grad():
        base = model(x, t, cond, cond_seq=constant)
        torch.testing.assert_close(base, model(x, t, cond), rtol=1e-5, atol=1e-5)  # None = the constant sequence
        change = (model(x, t, cond, cond_seq=changed) - base).square().sum(dim=(0, 1, 2))  # [128] per mel frame
    assert change.sum() > 1e-3
    # measured 0.84; the rest spreads through the 3×3 convolutions of the coarse levels (8 mel frames per step)
    assert change[96:].sum() / change.sum() > 0.8


def test_frame_attention_hears_the_sequence_and_takes_none_as_the_constant_one():
    model = randomise_zero_layers(tiny(seq_cond="xattn")).eval()
    x, t, cond = inputs(frames=64)
    other = torch.nn.functional.normalize(torch.randn(2, 3, COND_DIM, generator=torch.Generator().manual_seed(5)), dim=-1)
    with torch.no_grad():
        base = model(x, t, cond, cond_seq=sequence(cond, 8))
        torch.testing.assert_close(base, model(x, t, cond), rtol=1e-5, atol=1e-5)  # None = the constant sequence
        assert (model(x, t, cond, cond_seq=torch.cat([sequence(cond, 5), other], dim=1)) - base).abs().max() > 1e-3
    film_names = set(tiny(seq_cond="film").state_dict())
    assert {"seq_proj.weight", "seq_proj.bias"} < set(model.state_dict()) and len(model.state_dict()) > len(film_names)


def test_a_sequence_and_its_per_mel_frame_repetition_condition_alike():
    # training passes N stored rows, a video query one row per mel frame (clipsonic.pipeline.sequence): every level
    # must see the same condition from both, the steps of the rows (area resampling) and not ramps between them
    model = randomise_zero_layers(tiny(seq_cond="film")).eval()
    x, t, cond = inputs(frames=64)
    seq = torch.nn.functional.normalize(torch.randn(2, 8, COND_DIM, generator=torch.Generator().manual_seed(3)), dim=-1)
    with torch.no_grad():
        rows, per_frame = model(x, t, cond, cond_seq=seq), model(x, t, cond, cond_seq=seq.repeat_interleave(8, dim=1))
    torch.testing.assert_close(per_frame, rows, atol=1e-5, rtol=0)
    assert (rows - model(x, t, cond)).abs().max() > 1e-3  # and the sequence matters


@pytest.mark.parametrize("seq_cond", ["film", "xattn"])
def test_drop_cond_drops_the_whole_sequence(seq_cond):
    model = randomise_zero_layers(tiny(seq_cond=seq_cond)).eval()
    x, t, cond = inputs()
    seq_a, seq_b = torch.randn(2, 4, COND_DIM), torch.randn(2, 7, COND_DIM)
    everyone = torch.ones(2, dtype=torch.bool)
    with torch.no_grad():
        dropped = model(x, t, cond, everyone, cond_seq=seq_a)
        torch.testing.assert_close(dropped, model(x, t, torch.randn(2, COND_DIM), everyone, cond_seq=seq_b))
        torch.testing.assert_close(dropped, model(x, t, cond, everyone), rtol=1e-5, atol=1e-5)
        kept = model(x, t, cond, ~everyone, cond_seq=seq_a)
        assert (kept - model(x, t, cond, ~everyone, cond_seq=seq_b)).abs().max() > 1e-3
        mixed = model(x, t, cond, torch.tensor([False, True]), cond_seq=seq_a)
    torch.testing.assert_close(mixed[0], kept[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[1], dropped[1], rtol=1e-5, atol=1e-5)
