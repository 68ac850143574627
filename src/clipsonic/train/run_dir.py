"""Starting or resuming a run directory: resolve its config, check the dataset against it.

``config.json`` is the resolved :class:`RunConfig`; ``run.json`` records what the run trains on
(dataset path, mel config, CLIP model), so a resume — or an export — with another dataset is
refused when its mel config or CLIP model differs, naming both.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path
from typing import Any

from clipsonic import __version__
from clipsonic.audio import MelConfig
from clipsonic.data.dataset import DatasetError, DatasetInfo, read_dataset_info
from clipsonic.errors import ClipsonicError
from clipsonic.files import write_json_atomic
from clipsonic.train.config import ConfigFile, RunConfig, apply_resume_flags, resolve_run_config

CONFIG_NAME = "config.json"
RUN_INFO_NAME = "run.json"


class RunDirError(ClipsonicError):
    """A run directory is missing, already used, or does not fit the dataset."""


@dataclasses.dataclass
class RunSetup:
    """A run about to start: where, on what data, with which config."""

    run_dir: Path
    info: DatasetInfo
    config: RunConfig
    resume: bool

    def write(self) -> None:
        """Write ``config.json`` and ``run.json`` (rank 0 only)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config.save(self.run_dir / CONFIG_NAME)
        previous = read_run_info(self.run_dir) if (self.run_dir / RUN_INFO_NAME).is_file() else {}
        write_json_atomic(self.run_dir / RUN_INFO_NAME, {
            "dataset": str(self.info.root.resolve()),
            "mel": self.info.mel.to_dict(),
            "clip": dataclasses.asdict(self.info.clip),
            "frames": self.info.mel.clip_frames,
            "train_clips": self.info.num_clips("train"),
            "clipsonic_version": __version__,
            "created": previous.get("created") or datetime.datetime.now(datetime.timezone.utc).isoformat(),
        })


def read_run_info(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_INFO_NAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"{run_dir} is not a clipsonic run directory (no {RUN_INFO_NAME})") from None
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{path}: not valid JSON ({exc})") from None


def read_run_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise RunDirError(f"{run_dir} is not a clipsonic run directory (no {CONFIG_NAME})")
    return RunConfig.load(path)


def check_dataset_fits_run(info: DatasetInfo, run_dir: Path) -> None:
    """Refuse a dataset whose mel config, CLIP width or CLIP weights differ from the run's, naming both."""
    run = read_run_info(run_dir)
    what = f"the run in {run_dir} (trained on {run['dataset']})"
    info.check_compatible(MelConfig.from_dict(run["mel"], source=f"{run_dir}/{RUN_INFO_NAME}:mel"),
                          clip_dim=int(run["clip"]["dim"]), clip_model=None, what=what)
    if run["clip"]["fingerprint"] != info.clip.fingerprint:
        raise DatasetError(f"{info.root} was built with CLIP weights {info.clip.describe()} but {what} used "
                           f"{run['clip']['model']} (weights {run['clip']['fingerprint'][:12]}); re-run preprocess "
                           f"with --clip-model {run['clip']['model']}")


def prepare_run(data_dir: str | Path, run_dir: str | Path, *, config_file: ConfigFile | None = None,
                flags: dict[str, Any] | None = None, resume: bool = False) -> RunSetup:
    """Read the dataset, resolve (new run) or reload (resume) the config, and check they fit. Writes nothing."""
    info = read_dataset_info(data_dir)
    run_dir = Path(run_dir)
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    exists = (run_dir / CONFIG_NAME).is_file()
    if exists and not resume:
        raise RunDirError(f"{run_dir} already holds a run (config.json); pass --resume to continue it or choose another --out")
    if resume and not exists:
        raise RunDirError(f"{run_dir} holds no run to resume (no {CONFIG_NAME}); drop --resume to start a new run there")
    if resume:
        if config_file is not None:
            raise RunDirError("--config cannot be combined with --resume: a resumed run keeps its own config.json")
        check_dataset_fits_run(info, run_dir)
        config = apply_resume_flags(read_run_config(run_dir), flags)
    else:
        config = resolve_run_config(info.clip.dim, config_file, flags)
    frames, factor = info.mel.clip_frames, config.unet.downsample_factor
    if frames % factor:
        raise RunDirError(f"{info.root} has clips of {frames} mel frames but preset {config.train.preset!r} needs a "
                          f"multiple of {factor}; re-run preprocess with another --clip-seconds or use another preset")
    if not info.shard_paths("train"):
        raise DatasetError(f"{info.root}: the train split has no shards; re-run preprocess")
    return RunSetup(run_dir=run_dir, info=info, config=config, resume=resume)
