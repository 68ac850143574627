"""A run directory's record, ``RUN/config.json`` (clipsonic-run 2: the task, every config section, what it trains
on): read, written, resumed with changed settings, discarded by ``--restart``. The loop is train/harness.py."""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from clipsonic import __version__
from clipsonic.config import Config, ConfigError
from clipsonic.errors import ClipsonicError
from clipsonic.files import read_json, write_json_atomic
from clipsonic.train.checkpoint import find_checkpoint
from clipsonic.train.logs import MetricsLog

log = logging.getLogger(__name__)

RUN_FORMAT, RUN_VERSION = "clipsonic-run", 2
CONFIG_NAME = "config.json"
# The class of each task, imported by export_run: prior/ and vocoder/ import train/, so not the reverse.
TASKS = {"unet": "clipsonic.train.unet:UNetTask", "prior": "clipsonic.prior.train:PriorTask",
         "vocoder": "clipsonic.vocoder.task:VocoderTask", "distill": "clipsonic.train.distill:DistillTask"}
COMMANDS = {"unet": "train", "prior": "train-prior", "vocoder": "train-vocoder", "distill": "distill"}  # for messages
# What a run writes besides its export, deleted by --restart (pairs.safetensors: the prior's embedded pairs).
RUN_CONTENTS = (CONFIG_NAME, "checkpoints", "metrics.jsonl", "tensorboard", "samples", "debug", "pairs.safetensors")
EXPORTS = ("pipeline", "prior", "vocoder")  # each task's export_name: a new run may find an old one


@dataclasses.dataclass
class Run:
    """A run directory as the loop and the tasks see it (``accelerator`` is None when exporting)."""

    dir: Path
    task: str
    config: Any  # the task's config_class: every section, ``config.train`` a LoopConfig
    data: dict[str, Any]  # what the run trains on (JSON); a task may add to it in __init__
    accelerator: Any = None
    logs: MetricsLog | None = None
    created: str | None = None


def config_sections(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The config sections of a ``--config`` object (a run's config.json less its record keys)."""
    return {k: v for k, v in data.items() if k not in ("format", "version", "task", "created", "clipsonic_version",
                                                       "data")}


def read_run(run_dir: str | os.PathLike) -> Run:
    """The run in ``run_dir`` (its config.json); one line naming the version of a run written before version 2."""
    run_dir = Path(run_dir)
    path = config_path(run_dir)
    if path is None:
        raise ClipsonicError(f"{run_dir} is not a clipsonic run directory (no {CONFIG_NAME})")
    record = read_json(path, "run config")
    if not isinstance(record, dict) or (record.get("format"), record.get("version")) != (RUN_FORMAT, RUN_VERSION):
        version = record.get("version", 1) if isinstance(record, dict) else "?"
        raise ClipsonicError(f"{run_dir} is a run of {RUN_FORMAT} version {version} (written before the shared "
                             f"training loop); this clipsonic reads version {RUN_VERSION}: export it with the "
                             f"clipsonic that wrote it, or start a new run (its settings: {path})")
    if not isinstance(record.get("data"), dict):
        raise ClipsonicError(f"{path}: no \"data\" object (what the run trains on); not a run record of clipsonic")
    config = task_class(record.get("task")).config_class.from_dict(config_sections(record), source=str(path))
    return Run(dir=run_dir, task=record["task"], config=config, data=record["data"], created=record.get("created"))


def config_path(run_dir: Path) -> Path | None:
    """The run's config.json, or the train_config.json of a prior or vocoder run from before version 2."""
    return next((p for p in (run_dir / CONFIG_NAME, run_dir / "train_config.json") if p.is_file()), None)


def write_run(run: Run) -> None:
    created = run.created or datetime.datetime.now(datetime.timezone.utc).isoformat()
    write_json_atomic(run.dir / CONFIG_NAME, {"format": RUN_FORMAT, "version": RUN_VERSION, "task": run.task,
                                              "created": created, "clipsonic_version": __version__,
                                              **run.config.to_dict(), "data": run.data})


def task_class(name: str) -> Any:
    if not isinstance(name, str) or name not in TASKS:
        raise ClipsonicError(f"unknown training task {name!r}; known: {sorted(TASKS)}")
    module, attr = TASKS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def difference(key: str, old: Any, new: Any) -> str:
    """``key=old, not new``, narrowed to the first differing entry when both are dicts (``mel.fmax=…``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        inner = next((k for k in sorted(old.keys() | new.keys(), key=str) if old.get(k) != new.get(k)), None)
        if inner is not None:
            return difference(f"{key}.{inner}", old.get(inner), new.get(inner))
    return f"{key}={old!r}, not {new!r}"


def check_sections(overrides: dict[str, Any], known: dict[str, Any] | None = None) -> None:
    """Each ``--config`` section must be an object (of ``known``'s sections and keys, when given)."""
    for section, values in overrides.items():
        if not isinstance(values, dict):
            raise ConfigError(f"--config: section {section!r} must be a JSON object of settings, "
                              f"got {type(values).__name__}")
        if known is None:
            continue
        if section not in known:
            raise ConfigError(f"--config: unknown section {section!r}; this run has {', '.join(sorted(known))}")
        if unknown := sorted(set(values) - set(known[section])):
            raise ConfigError(f"--config: unknown key(s) {unknown} in section {section!r}; known keys are "
                              f"{sorted(known[section])}")


def resume_config(cls: Any, run: Run, overrides: dict[str, dict[str, Any]]) -> Config:
    """The saved config with ``overrides``: only the ``train`` section's RESUMABLE fields may differ."""
    saved = run.config.to_dict()
    resumable = type(run.config.train).RESUMABLE
    check_sections(overrides, saved)
    for section, values in overrides.items():
        for key, value in values.items():
            current = saved.get(section, {}).get(key)
            if json.loads(json.dumps(value)) == current:
                continue
            if section != "train" or key not in resumable:
                name = key if section == "train" else f"{section}.{key}"
                raise ConfigError(f"the run was trained with {name}={current!r}; resuming with {name}={value!r} would "
                                  f"not continue the same run (only {', '.join(resumable)} may change): drop the "
                                  "setting or start a new run directory")
            saved["train"][key] = value
    return cls.config_class.from_dict(saved, source=str(run.dir / CONFIG_NAME))


def discard_run(run_dir: Path) -> None:
    """--restart: delete what the run wrote (an export folder stays until the new run replaces it)."""
    for name in RUN_CONTENTS:
        remove(run_dir / name)
    log.warning("--restart: discarded the run in %s (%s)", run_dir, ", ".join(RUN_CONTENTS))


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, step: int | None = None, *,
               data: str | os.PathLike | None = None, **options: Any) -> Path:
    """Export checkpoint ``step`` (default: the newest readable) of any run to ``out`` (default RUN/<export_name>);
    ``data``: the data the task reads at export (the UNet's statistics; default the run's); ``options``: the
    task's own export options (the UNet's ``bundle_clip``)."""
    run = read_run(run_dir)
    cls, ckpt = task_class(run.task), find_checkpoint(run.dir, step)
    if ckpt is None:
        raise ClipsonicError(f"{run.dir} has no usable checkpoint to export; train first")
    return cls.export(run, ckpt, Path(out) if out is not None else run.dir / cls.export_name, data, **options)
