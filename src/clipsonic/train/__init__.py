"""Training the mel diffusion model: ``train`` (the loop), configs, checkpoints, export.

    from clipsonic.train import train, export_run, TrainConfig
    run_dir = train("data/mine", "runs/a", flags={"preset": "tiny", "max_steps": 1000})
    export_run(run_dir)            # → runs/a/pipeline (also done at the end of training)
"""

from clipsonic.train.checkpoint import CheckpointError, list_checkpoints, load_latest_checkpoint
from clipsonic.train.config import (
    ConfigFile,
    RunConfig,
    TrainConfig,
    read_config_file,
    resolve_run_config,
)
from clipsonic.train.export import compute_dataset_stats, export_run
from clipsonic.train.logs import read_metrics
from clipsonic.train.loop import Trainer, TrainingError, train
from clipsonic.train.run_dir import RunDirError

__all__ = [
    "CheckpointError",
    "ConfigFile",
    "RunConfig",
    "RunDirError",
    "TrainConfig",
    "Trainer",
    "TrainingError",
    "compute_dataset_stats",
    "export_run",
    "list_checkpoints",
    "load_latest_checkpoint",
    "read_config_file",
    "read_metrics",
    "resolve_run_config",
    "train",
]
