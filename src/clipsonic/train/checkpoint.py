"""Atomic, pickle-free training checkpoints with fallback to the previous one.

Layout of ``RUN_DIR/checkpoints/step-NNNNNNN/``::

    model/config.json, model/model.safetensors   the trained weights (MelUNet.save_pretrained)
    ema/config.json,   ema/model.safetensors     their exponential moving average
    optimizer.safetensors                        AdamW state tensors, keys "state/<param>/<name>"
    optimizer.json                               its non-tensor parts (param groups, scalars)
    rank-RRRRR.safetensors                       per process: RNG states (torch generator states
                                                 are uint8 tensors); metadata "data_position" (JSON)
    state.json                                   step, world size, grad-scaler state, and the size
                                                 of every file above (written last)

A checkpoint is written into ``checkpoints/.tmp-step-NNNNNNN`` and renamed when complete, so a
run killed mid-save leaves only a temporary folder, which the next start deletes. Loading reads
JSON and safetensors only (no pickle, no code). A checkpoint whose files are missing, truncated or
unreadable is skipped with a warning in favour of the previous one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from clipsonic import __version__
from clipsonic.errors import ClipsonicError
from clipsonic.files import write_json_atomic

log = logging.getLogger(__name__)

FORMAT = "clipsonic-checkpoint"
VERSION = 1
PREFIX = "step-"
TMP_PREFIX = ".tmp-step-"
# Fault injection for tests: CLIPSONIC_FAULT=kill-in-save:STEP SIGKILLs the process halfway
# through writing that step's checkpoint (after the weights, before state.json and the rename).
FAULT_ENV = "CLIPSONIC_FAULT"


class CheckpointError(ClipsonicError):
    """A checkpoint cannot be read or none usable exists."""


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:07d}"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Finished checkpoints, newest first."""
    out = []
    for path in (Path(run_dir) / "checkpoints").glob(f"{PREFIX}*"):
        suffix = path.name[len(PREFIX):]
        if path.is_dir() and suffix.isdigit():
            out.append((int(suffix), path))
    return sorted(out, reverse=True)


def remove_stale_temporaries(run_dir: Path) -> int:
    """Delete half-written checkpoints left by a killed run; returns how many."""
    stale = [p for p in (Path(run_dir) / "checkpoints").glob(".*") if p.is_dir()]
    for path in stale:
        log.warning("removing %s: a checkpoint whose save was interrupted", path)
        shutil.rmtree(path, ignore_errors=True)
    return len(stale)


# --- optimizer state ↔ safetensors + JSON ------------------------------------------------------

def flatten_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``optimizer.state_dict()`` → (tensors keyed ``state/<param>/<name>``, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param, entries in state_dict["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"state/{param}/{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(param), {})[name] = value
    return tensors, {"scalars": scalars, "param_groups": state_dict["param_groups"]}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer_state`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, param, name = key.split("/", 2)
        state.setdefault(int(param), {})[name] = value
    for param, entries in meta["scalars"].items():
        state.setdefault(int(param), {}).update(entries)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


# --- RNG states ---------------------------------------------------------------------------------

def capture_rng(generators: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    """Global torch CPU/CUDA RNG states (dropout draws from them) and our named generators, as uint8 tensors."""
    states = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states.update({f"torch_cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    states.update({f"gen_{name}": g.get_state() for name, g in generators.items()})
    return states


def restore_rng(states: dict[str, torch.Tensor], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(states["torch_cpu"])
    cuda = sorted((int(k.rsplit("_", 1)[1]), v) for k, v in states.items() if k.startswith("torch_cuda_"))
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([v for _, v in cuda])
    for name, g in generators.items():
        g.set_state(states[f"gen_{name}"])


# --- saving -------------------------------------------------------------------------------------

@dataclasses.dataclass
class RankState:
    """What each process contributes to a checkpoint."""

    rng: dict[str, torch.Tensor]
    data_position: dict[str, Any]


def save_checkpoint(run_dir: Path, step: int, *, rank: int, world_size: int, barrier: Callable[[], None],
                    rank_state: RankState, write_main: Callable[[Path], dict[str, Any]] | None,
                    keep_last: int) -> Path:
    """Write ``checkpoints/step-NNNNNNN`` atomically; every process calls this together.

    Rank 0 passes ``write_main(tmp_dir) -> extra state`` that writes the weights and optimizer;
    every rank writes its own ``rank-RRRRR.safetensors``. Returns the final directory.
    """
    from safetensors.torch import save_file

    root = Path(run_dir) / "checkpoints"
    tmp, final = root / f"{TMP_PREFIX}{step:07d}", root / checkpoint_name(step)
    barrier()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    save_file(rank_state.rng, str(tmp / f"rank-{rank:05d}.safetensors"),
              metadata={"data_position": json.dumps(rank_state.data_position)})
    barrier()
    if rank == 0:
        assert write_main is not None
        extra = write_main(tmp)
        _fault_point("kill-in-save", step)
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        write_json_atomic(tmp / "state.json", {"format": FORMAT, "version": VERSION, "step": step,
                                              "world_size": world_size, "clipsonic_version": __version__,
                                              "files": files, **extra})
        _fsync_tree(tmp)
        if final.exists():  # a re-save of the same step (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        prune_checkpoints(run_dir, keep_last)
        log.info("saved checkpoint %s", final)
    barrier()
    return final


def prune_checkpoints(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints (renamed away first: never a half-deleted one)."""
    for _, path in list_checkpoints(run_dir)[keep_last:]:
        trash = path.with_name(f".delete-{path.name}")
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)


def _fault_point(name: str, step: int) -> None:
    if os.environ.get(FAULT_ENV) == f"{name}:{step}":
        log.warning("%s=%s: killing this process (fault injection)", FAULT_ENV, os.environ[FAULT_ENV])
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    for path in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        _fsync_dir(path)


# --- loading ------------------------------------------------------------------------------------

@dataclasses.dataclass
class Checkpoint:
    """A loaded checkpoint (tensors on CPU)."""

    path: Path
    step: int
    state: dict[str, Any]  # state.json
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # an optimizer.state_dict()
    rng: dict[str, torch.Tensor] | None  # this rank's, None when the checkpoint had fewer processes
    data_position: dict[str, Any] | None


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Check that every file state.json lists exists with its size and has a readable safetensors header."""
    from safetensors import safe_open

    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable state.json ({exc})") from None
    if state.get("format") != FORMAT or state.get("version") != VERSION:
        raise CheckpointError(f"{path}: not a {FORMAT} v{VERSION} checkpoint")
    for name, size in state["files"].items():
        file = path / name
        if not file.is_file() or file.stat().st_size != size:
            raise CheckpointError(f"{file}: missing or truncated (expected {size} bytes)")
        if file.suffix == ".safetensors":
            try:
                with safe_open(str(file), "pt"):
                    pass
            except Exception as exc:  # safetensors raises its own SafetensorError
                raise CheckpointError(f"{file}: unreadable ({exc})") from None
    return state


def load_checkpoint(path: Path, rank: int) -> Checkpoint:
    """Read one checkpoint directory (JSON and safetensors only)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    state = verify_checkpoint(path)
    try:
        optimizer = unflatten_optimizer_state(load_file(str(path / "optimizer.safetensors")),
                                              json.loads((path / "optimizer.json").read_text()))
        rank_file = path / f"rank-{rank:05d}.safetensors"
        rng = position = None
        if rank_file.is_file():
            rng = load_file(str(rank_file))
            with safe_open(str(rank_file), "pt") as fh:
                position = json.loads(fh.metadata()["data_position"])
        return Checkpoint(path=path, step=int(state["step"]), state=state,
                          model=load_file(str(path / "model" / "model.safetensors")),
                          ema=load_file(str(path / "ema" / "model.safetensors")),
                          optimizer=optimizer, rng=rng, data_position=position)
    except CheckpointError:
        raise
    except Exception as exc:  # a corrupt file surfaces as SafetensorError, OSError, KeyError, JSON errors
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None


def checkpoints_at(run_dir: Path, step: int | None = None) -> list[tuple[int, Path]]:
    """``list_checkpoints``, or only the one of ``step`` (:class:`CheckpointError` naming the steps there are)."""
    found = list_checkpoints(run_dir)
    if step is not None:
        found = [(s, p) for s, p in found if s == step]
        if not found:
            raise CheckpointError(f"{run_dir} has no checkpoint of step {step} "
                                  f"(has {[s for s, _ in list_checkpoints(run_dir)] or 'none'})")
    return found


def load_latest_checkpoint(run_dir: Path, rank: int, step: int | None = None) -> Checkpoint | None:
    """The newest readable checkpoint (or exactly ``step``); corrupt ones are skipped with a warning."""
    found = checkpoints_at(run_dir, step)
    for i, (_, path) in enumerate(found):
        try:
            return load_checkpoint(path, rank)
        except CheckpointError as exc:
            if step is not None:
                raise
            fallback = f"falling back to {found[i + 1][1].name}" if i + 1 < len(found) else "no older checkpoint left"
            log.warning("skipping corrupt checkpoint: %s; %s", exc, fallback)
    return None
