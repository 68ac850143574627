"""Training checkpoints: safetensors for every tensor, JSON for the rest, written atomically.

A checkpoint is a directory ``checkpoints/step-NNNNNNNN/``::

    generator.safetensors       generator weights in training form (weight norm kept)
    discriminator.safetensors   MPD + second discriminator
    optimizers.safetensors      AdamW moments and step counts ("g.state.<param>.<name>", "d.…")
    state.json                  step, optimizer hyper-parameters, AMP scaler, validation history

It is written to ``checkpoints/.tmp-…`` and renamed into place only when complete, so a run killed
at any moment leaves either the previous checkpoints or the new one, never half of one. No
pickles: loading runs no code from the run directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

from clipsonic.vocoder.base import VocoderError

STEP_DIR = re.compile(r"^step-(\d{8})$")
STATE_NAME = "state.json"


def optimizer_to_flat(state_dict: dict[str, Any], prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON-able metadata."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in state_dict["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}state.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    meta = {"param_groups": state_dict["param_groups"], "scalars": scalars,
            "params": sorted(int(p) for p in state_dict["state"])}
    return tensors, json.loads(json.dumps(meta))


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Inverse of :func:`optimizer_to_flat`."""
    state: dict[int, dict[str, Any]] = {pid: dict(meta["scalars"].get(str(pid), {})) for pid in meta["params"]}
    for key, value in tensors.items():
        if key.startswith(f"{prefix}state."):
            pid, name = key[len(prefix) + len("state."):].split(".", 1)
            state.setdefault(int(pid), {})[name] = value
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(root: Path, step: int, generator: torch.nn.Module, discriminator: torch.nn.Module,
                    optimizers: dict[str, torch.optim.Optimizer], state: dict[str, Any], keep_last: int) -> Path:
    """Write ``root/step-NNNNNNNN`` atomically, then delete all but the newest ``keep_last``."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_file(_cpu(generator.state_dict()), str(tmp / "generator.safetensors"))
        save_file(_cpu(discriminator.state_dict()), str(tmp / "discriminator.safetensors"))
        tensors, metas = {}, {}
        for prefix, optimizer in optimizers.items():
            t, metas[prefix] = optimizer_to_flat(optimizer.state_dict(), f"{prefix}.")
            tensors.update(t)
        save_file(tensors, str(tmp / "optimizers.safetensors"))
        (tmp / STATE_NAME).write_text(json.dumps({**state, "step": step, "optimizers": metas}, indent=1))
        for f in tmp.iterdir():
            _fsync(f)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint directories, oldest first (temporary ones are never listed)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """``{"generator", "discriminator": state dicts, "optimizers": {prefix: state dict}, "state": dict}``."""
    from safetensors.torch import load_file

    try:
        state = json.loads((path / STATE_NAME).read_text())
        opt_tensors = load_file(str(path / "optimizers.safetensors"))
        return {
            "generator": load_file(str(path / "generator.safetensors")),
            "discriminator": load_file(str(path / "discriminator.safetensors")),
            "optimizers": {p: optimizer_from_flat(opt_tensors, m, f"{p}.") for p, m in state["optimizers"].items()},
            "state": state,
        }
    except (OSError, KeyError, ValueError) as exc:
        raise VocoderError(f"{path}: unreadable checkpoint ({exc}); delete it to resume from the one before") from None


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
