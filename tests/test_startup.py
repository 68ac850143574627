"""Start-up (issue 18): ``clipsonic generate`` imports only what it uses, and a network's weights are loaded once,
memory-mapped (models/weights.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from clipsonic.errors import ClipsonicError
from clipsonic.models import MelUNet
from clipsonic.models.unet import CONFIG_NAME, WEIGHTS_NAME
from clipsonic.models.weights import load_checked

# Imported by the generate path before the CLIP loads, then by the whole generate: none of these may be (transformers
# is lazy, loaded by load_clip; it brings accelerate, scipy and torch._dynamo itself, so those are checked before it).
GENERATE = r"""
import json, sys
import clipsonic.cli
from clipsonic.cli import main
from clipsonic.export import load_stats
from clipsonic.models import MelUNet
from clipsonic.pipeline.paths import BUILTIN_DIR
from clipsonic.prior import load_prior

heavy = lambda names: sorted(n for n in names if n in sys.modules)
BEFORE_CLIP = ("accelerate", "diffusers", "matplotlib", "scipy", "transformers", "torch._dynamo")
MelUNet.from_pretrained(BUILTIN_DIR / "unet"), load_prior(BUILTIN_DIR / "prior"), load_stats(BUILTIN_DIR)
before = heavy(BEFORE_CLIP)
code = main(["-q", "generate", "--text", "a dog barking", "--seconds", "0.256", "--steps", "2", "-o", sys.argv[1]])
print(json.dumps({"before_clip": before, "after": heavy(("diffusers", "matplotlib")), "code": code}))
"""


def test_generate_imports_only_what_it_uses(tmp_path):
    """A fresh process: the CLI's imports and the built-in model's UNet, prior and stats bring none of the heavy
    packages generate does not use, and the whole `clipsonic generate` neither diffusers nor matplotlib."""
    out = tmp_path / "dog.wav"
    proc = subprocess.run([sys.executable, "-c", GENERATE, str(out)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result == {"before_clip": [], "after": [], "code": 0}
    assert out.stat().st_size > 44  # a WAV header and samples


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    """Address ranges of this process's memory mappings of ``path`` (Linux /proc)."""
    lines = Path("/proc/self/maps").read_text().splitlines()
    return [tuple(int(a, 16) for a in line.split()[0].split("-")) for line in lines if line.endswith(str(path))]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc/self/maps")
def test_unet_parameters_are_the_weight_files_memory_mapped_tensors(tmp_path):
    """load_checked copies nothing: every parameter lies in the file's (copy-on-write) mapping, with the saved
    values, and writing to one leaves the file as it was."""
    torch.manual_seed(0)
    saved = MelUNet.from_preset("tiny", cond_dim=16)
    saved.save_pretrained(tmp_path)
    weights = tmp_path / WEIGHTS_NAME

    def load() -> MelUNet:
        return load_checked(lambda: MelUNet(saved.config), weights, tmp_path / CONFIG_NAME, "UNet")

    loaded = load()
    ranges = _mapped_ranges(weights.resolve())
    assert ranges and all(any(lo <= p.data_ptr() < hi for lo, hi in ranges) for p in loaded.parameters())
    for (name, a), b in zip(saved.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with torch.no_grad():
        loaded.null_cond.add_(1.0)
    assert torch.equal(load().null_cond, saved.null_cond)
    assert torch.equal(MelUNet.from_pretrained(tmp_path).null_cond, saved.null_cond)


class _Net(nn.Module):
    def __init__(self, extra_buffer: bool = False):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        if extra_buffer:
            self.register_buffer("table", torch.arange(4.0), persistent=False)


def test_load_checked_builds_once_casts_dtypes_and_refuses_what_it_cannot_fill(tmp_path):
    """One build (on the meta device); a float16 file gives the float32 network its values; a tensor the state dict
    does not hold (a non-persistent buffer) would stay on the meta device, so it is refused by name."""
    weights = tmp_path / "net.safetensors"
    state = {k: v.half() for k, v in _Net().state_dict().items()}
    save_file(state, str(weights))
    builds = []
    net = load_checked(lambda: builds.append(1) or _Net(), weights, tmp_path / "config.json", "net")
    assert len(builds) == 1 and net.lin.weight.dtype == torch.float32 and not net.lin.weight.is_meta
    assert torch.equal(net.lin.weight, state["lin.weight"].float())
    with pytest.raises(RuntimeError, match=r"_Net: \['table'\] are not saved in its state dict"):
        load_checked(lambda: _Net(extra_buffer=True), weights, tmp_path / "config.json", "net")
    with pytest.raises(ClipsonicError, match=r"net\.safetensors: the weights do not fit config\.json \(missing"):
        load_checked(lambda: nn.Sequential(_Net(), nn.Linear(2, 2)), weights, tmp_path / "config.json", "net")
