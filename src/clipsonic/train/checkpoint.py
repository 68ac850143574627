"""Atomic, pickle-free checkpoints of any task: ``RUN/checkpoints/step-NNNNNNN/``::

    <module>.safetensors     one per Task.modules() entry (e.g. model, ema; generator, discriminator)
    optimizers.safetensors   every optimizer's state tensors, keyed "<optimizer>/<param>/<name>"
    rank-RRRRR.safetensors   per process: its RNG states (uint8 tensors); metadata "position" (JSON)
    state.json               {"format": "clipsonic-checkpoint", "version": 2, "task", "step", "world_size",
                              "modules", "optimizers" (param groups, scalars), "files" (name → size), "extra"}

Written into ``.tmp-step-NNNNNNN`` (deleted by the next start if a save is killed) and renamed when
complete, state.json last. A checkpoint is verified before use (sizes, headers, finite tensors); a corrupt one
is skipped with a warning for the previous one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from clipsonic import __version__
from clipsonic.errors import ClipsonicError
from clipsonic.files import fsync_dir, fsync_tree, inside, read_json, write_json_atomic

log = logging.getLogger(__name__)

FORMAT, VERSION = "clipsonic-checkpoint", 2
NAME = re.compile(r"^step-(\d+)$")
# Fault injection for tests: CLIPSONIC_FAULT=kill-in-save:STEP SIGKILLs the main process halfway
# through writing that step's checkpoint (after the weights, before state.json and the rename).
FAULT_ENV = "CLIPSONIC_FAULT"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Finished checkpoints as (step, folder), newest first."""
    root = Path(run_dir) / "checkpoints"
    found = [(int(m[1]), p) for p in root.glob("step-*") if p.is_dir() and (m := NAME.match(p.name))]
    return sorted(found, reverse=True)


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete the half-written checkpoints a killed run left."""
    for path in (Path(run_dir) / "checkpoints").glob(".*"):
        log.warning("removing %s: a checkpoint whose save was interrupted", path)
        shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(run_dir: Path, step: int, accelerator, *, task: str, modules: dict[str, nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer], generators: dict[str, torch.Generator],
                    position: dict[str, Any], extra: dict[str, Any], keep_last: int) -> Path:
    """Write ``checkpoints/step-NNNNNNN`` atomically; every process calls this together (``extra``: the main's)."""
    main, rank = accelerator.is_main_process, accelerator.process_index
    root = Path(run_dir) / "checkpoints"
    tmp, final = root / f".tmp-step-{step:07d}", root / f"step-{step:07d}"
    accelerator.wait_for_everyone()
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    # Torch's global CPU/CUDA RNG states (dropout draws from them) and the task's generators, as uint8 tensors.
    rng = {"torch_cpu": torch.get_rng_state(), **{f"gen_{name}": g.get_state() for name, g in generators.items()}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng.update({f"torch_cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(rng, str(tmp / f"rank-{rank:05d}.safetensors"), metadata={"position": json.dumps(position)})
    accelerator.wait_for_everyone()
    if main:
        for name, module in modules.items():
            save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
                      str(tmp / f"{name}.safetensors"))
        tensors: dict[str, torch.Tensor] = {}
        metas = {name: _flatten_optimizer(optimizer.state_dict(), name, tensors)
                 for name, optimizer in optimizers.items()}
        save_file(tensors, str(tmp / "optimizers.safetensors"))
        if os.environ.get(FAULT_ENV) == f"kill-in-save:{step}":
            log.warning("%s=kill-in-save:%d: killing this process (fault injection)", FAULT_ENV, step)
            os.kill(os.getpid(), signal.SIGKILL)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        write_json_atomic(tmp / "state.json", {
            "format": FORMAT, "version": VERSION, "task": task, "step": step,
            "world_size": accelerator.num_processes, "clipsonic_version": __version__, "modules": sorted(modules),
            "optimizers": metas, "files": files, "extra": extra})
        fsync_tree(tmp)
        if final.exists():  # a re-save of the same step (after a resume from an older one): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
        for _, old in list_checkpoints(run_dir)[keep_last:]:  # renamed away first: never a half-deleted one
            trash = old.with_name(f".delete-{old.name}")
            os.replace(old, trash)
            shutil.rmtree(trash, ignore_errors=True)
        log.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def _flatten_optimizer(state_dict: dict[str, Any], name: str, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Move ``optimizer.state_dict()``'s tensors into ``tensors`` ("name/param/key"); returns the JSON-able rest."""
    scalars: dict[str, dict[str, Any]] = {}
    for param, entries in state_dict["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{name}/{param}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(param), {})[key] = value
    return {"scalars": scalars, "param_groups": state_dict["param_groups"]}


@dataclasses.dataclass
class Checkpoint:
    """A verified checkpoint; module and optimizer tensors are read (to the CPU) on demand."""

    path: Path
    state: dict[str, Any]  # state.json
    rank: int  # the process it is read for
    rng: dict[str, torch.Tensor] | None  # this process's; None when the checkpoint had fewer processes
    position: dict[str, Any]  # this process's (else process 0's) data position

    @property
    def step(self) -> int:
        return int(self.state["step"])

    def module(self, name: str) -> dict[str, torch.Tensor]:
        return load_file(str(self.path / f"{name}.safetensors"))

    def optimizer(self, name: str) -> dict[str, Any]:
        """Inverse of the flattening in :func:`save_checkpoint`: an ``optimizer.state_dict()``."""
        meta, state = self.state["optimizers"][name], {}
        with safe_open(str(self.path / "optimizers.safetensors"), "pt") as fh:
            for key in fh.keys():
                owner, param, entry = key.split("/", 2)
                if owner == name:
                    state.setdefault(int(param), {})[entry] = fh.get_tensor(key)
        for param, entries in meta["scalars"].items():
            state.setdefault(int(param), {}).update(entries)
        groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
        return {"state": state, "param_groups": groups}

    def restore(self, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                generators: dict[str, torch.Generator], scaler: torch.amp.GradScaler | None) -> int:
        """Load the weights, optimizer states, fp16 scaler and this process's RNG states saved by
        :func:`save_checkpoint` into a task's (prepared) ones; returns the step."""
        try:
            for name, module in modules.items():
                module.load_state_dict(self.module(name))
            for name, optimizer in optimizers.items():
                optimizer.load_state_dict(self.optimizer(name))
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:  # load_state_dict's are several lines
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ClipsonicError(f"{self.path} does not fit this run's networks ({first}); move it aside to resume "
                                 "from the one before, or pass --restart to start over") from None
        if self.state["extra"].get("scaler") and scaler is not None:
            scaler.load_state_dict(self.state["extra"]["scaler"])
        if self.rng is not None:
            torch.set_rng_state(self.rng["torch_cpu"])
            cuda = sorted((int(k.rsplit("_", 1)[1]), v) for k, v in self.rng.items() if k.startswith("torch_cuda_"))
            if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all([v for _, v in cuda])
            for name, g in generators.items():
                g.set_state(self.rng[f"gen_{name}"])
        else:
            log.warning("checkpoint %s has no state for process %d (saved with %d processes): its random draws "
                        "restart and its data restart at the epoch of process 0", self.path, self.rank,
                        self.state["world_size"])
        log.info("resumed from %s (step %d)", self.path, self.step)
        return self.step


def _problem(path: Path) -> str | None:
    """What is wrong with a checkpoint's files (None: nothing); raises for a checkpoint of another version."""
    try:
        state = read_json(path / "state.json", "checkpoint state")
    except ClipsonicError as exc:
        return str(exc)
    if not isinstance(state, dict):
        return f"{path / 'state.json'}: not a JSON object"
    if state.get("format") != FORMAT or state.get("version") != VERSION:
        what = f"{state['format']} version {state.get('version')}" if "format" in state else "an unversioned checkpoint"
        raise ClipsonicError(f"{path} is {what}, written before clipsonic's shared training harness; this clipsonic "
                             f"reads {FORMAT} version {VERSION}: export it with the clipsonic that wrote it, or start "
                             "a new run")
    fields = {"step": int, "world_size": int, "modules": list, "optimizers": dict, "files": dict, "extra": dict}
    if wrong := [key for key, kind in fields.items() if not isinstance(state.get(key), kind)]:
        return f"{path / 'state.json'}: missing or malformed {', '.join(wrong)}"
    if state["step"] != int(NAME.match(path.name)[1]):
        return f"{path / 'state.json'}: records step {state['step']}, not the folder's"
    for name, size in state["files"].items():
        try:
            file = inside(path, name, "checkpoint file")
        except ClipsonicError as exc:
            return str(exc)
        if not file.is_file() or file.stat().st_size != size:
            return f"{file}: missing or truncated (expected {size} bytes)"
        try:
            with safe_open(str(file), "pt") as fh:
                # a NaN/inf weight or moment would poison every later step: verify before use
                bad = next((k for k in fh.keys() if not _finite(fh.get_tensor(k))), None)
        except Exception as exc:  # safetensors raises its own SafetensorError
            return f"{file}: unreadable ({exc})"
        if bad is not None:
            return f"{file}: tensor {bad!r} holds NaN or infinite values"
    return None


def _finite(tensor: torch.Tensor) -> bool:
    return not tensor.is_floating_point() or bool(torch.isfinite(tensor).all())


def _open(path: Path, rank: int) -> Checkpoint:
    """A verified checkpoint with process ``rank``'s RNG (None if it had fewer processes) and data position."""
    own = path / f"rank-{rank:05d}.safetensors"
    with safe_open(str(own if own.is_file() else path / "rank-00000.safetensors"), "pt") as fh:
        position = json.loads((fh.metadata() or {})["position"])
        rng = {k: fh.get_tensor(k) for k in fh.keys()} if own.is_file() else None
    if not isinstance(position, dict):
        raise ValueError("its data position is not a JSON object")
    return Checkpoint(path, read_json(path / "state.json"), rank, rng, position)


def find_checkpoint(run_dir: Path, step: int | None = None, rank: int = 0) -> Checkpoint | None:
    """The newest checkpoint that verifies (or exactly ``step``'s; corrupt ones are skipped with a warning),
    with process ``rank``'s RNG and data position."""
    every = list_checkpoints(run_dir)
    found = [(s, p) for s, p in every if step is None or s == step]
    if step is not None and not found:
        raise ClipsonicError(f"{run_dir} has no checkpoint of step {step} (has {[s for s, _ in every] or 'none'})")
    for i, (_, path) in enumerate(found):
        problem = _problem(path)
        if problem is None:
            try:
                return _open(path, rank)
            except Exception as exc:  # no rank file, no or bad "position" metadata (SafetensorError, KeyError, …)
                problem = f"{path}: unreadable process state ({type(exc).__name__}: {exc})"
        if step is not None:
            raise ClipsonicError(problem)
        fallback = f"falling back to {found[i + 1][1].name}" if i + 1 < len(found) else "no older checkpoint left"
        log.warning("skipping corrupt checkpoint: %s; %s", problem, fallback)
    return None
