"""Loading a network's safetensors weights, once and memory-mapped: the network is built on the meta device (no
memory, no init), its names and shapes are checked against the file's header, so a config.json whose sizes are absurd
or belong to another model is refused in one line before anything is allocated; then the file's memory-mapped tensors
become its parameters (no random init, no second copy). A corrupt or truncated file is one line naming it.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from clipsonic.errors import ClipsonicError

M = TypeVar("M", bound=nn.Module)


def read_shapes(path: str | os.PathLike, what: str) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape from the header of the safetensors file ``path`` (the ``what``'s weights)."""
    try:
        with safe_open(str(path), "pt") as fh:
            return {name: tuple(fh.get_slice(name).get_shape()) for name in fh.keys()}
    except FileNotFoundError:
        raise ClipsonicError(f"{path}: no such file (the {what}'s weights); re-export or re-download it") from None
    except (SafetensorError, OSError) as exc:
        raise ClipsonicError(f"{path}: not a readable safetensors file ({exc}); the {what}'s weights are corrupt "
                             "or truncated: re-export or re-download them") from None


def mismatch(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> str | None:
    """What differs between two name → shape maps (a few names of each kind), or None when they agree."""
    missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    shapes = [f"{k} {list(found[k])} vs {list(expected[k])}" for k in sorted(expected.keys() & found.keys())
              if found[k] != expected[k]]
    parts = [f"{label} {items[:3]}" for label, items in (("missing", missing), ("unexpected", unexpected),
                                                         ("shapes differ (file vs config):", shapes)) if items]
    return "; ".join(parts) or None


def meta_shapes(build: Callable[[], M]) -> tuple[M, dict[str, tuple[int, ...]]]:
    """``build()`` on the meta device (no memory, no init cost) and its state dict's name → shape."""
    with torch.device("meta"):
        skeleton = build()
    return skeleton, {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}


def check_fits(build: Callable[[], M], weights: str | os.PathLike, config: str | os.PathLike, what: str) -> M:
    """Refuse (one line) the weights at ``weights`` unless their header has exactly the names and shapes of the
    network ``build()`` makes from ``config``; returns that network, built on the meta device."""
    found = read_shapes(weights, what)
    skeleton, expected = meta_shapes(build)
    if problem := mismatch(expected, found):
        raise ClipsonicError(f"{weights}: the weights do not fit {Path(config).name} ({problem}); the two files "
                             f"come from different {what}s: re-export the {what}")
    return skeleton


def load_into(model: M, weights: str | os.PathLike, what: str, *, assign: bool = False) -> M:
    """``model`` with the (checked) weights at ``weights`` loaded; safetensors only, so no code runs. ``assign``: the
    file's memory-mapped tensors (copy-on-write) become the parameters, cast to the model's dtypes where they differ."""
    try:
        state = load_file(str(weights))  # memory-mapped: pages are read when first used
        if assign:
            dtypes = {name: t.dtype for name, t in model.state_dict().items()}
            state = {name: t.to(dtypes.get(name, t.dtype)) for name, t in state.items()}
        model.load_state_dict(state, assign=assign)
    except (SafetensorError, OSError, RuntimeError) as exc:  # dtype trouble or a file changed since the header read
        raise ClipsonicError(f"{weights}: cannot load the {what}'s weights ({str(exc).splitlines()[0]})") from None
    return model


def load_checked(build: Callable[[], M], weights: str | os.PathLike, config: str | os.PathLike, what: str) -> M:
    """``build()`` with the weights at ``weights`` loaded, once they fit it (:func:`check_fits`): built once, on the
    meta device, it takes the file's tensors as its own (nothing initialised, nothing copied)."""
    model = load_into(check_fits(build, weights, config, what), weights, what, assign=True)
    if left := [name for name, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta]:
        raise RuntimeError(f"{type(model).__name__}: {left[:3]} are not saved in its state dict, so load_checked "
                           "cannot fill them; register them as persistent buffers")
    return model


def check_shared_shapes(build: Callable[[], nn.Module], files: list[Path], what: str) -> None:
    """For third-party checkpoints (transformers' CLIP, diffusers' PriorTransformer) that their library loads: refuse
    unreadable ``files``, or tensors whose shapes differ from those of ``build()`` (on the meta device, before the
    library allocates anything). Only names both share are compared: hub checkpoints carry a few buffers under
    names that changed between library releases."""
    found = {name: shape for path in files for name, shape in read_shapes(path, what).items()}
    expected = meta_shapes(build)[1]
    common = expected.keys() & found.keys()
    problem = mismatch({n: expected[n] for n in common}, {n: found[n] for n in common}) if common else None
    if problem or not common:
        raise ClipsonicError(f"{files[0].parent}: the {what} weights do not fit its config.json "
                             f"({problem or 'no tensor names in common'}); save or download the complete model again")
