"""The training loop (harness.py) and its UNet task (unet.py); the prior and vocoder tasks use the same loop.

    from clipsonic.train import train, export_run
    run_dir = train("data/mine", "runs/a", {"train": {"preset": "tiny", "max_steps": 1000}})
    export_run(run_dir)            # → runs/a/pipeline (also done at the end of training)
"""

from clipsonic.train.checkpoint import list_checkpoints
from clipsonic.train.logs import read_metrics
from clipsonic.train.run_dir import export_run, read_run
from clipsonic.train.unet import TrainConfig, resolve_run_config, train

__all__ = ["TrainConfig", "export_run", "list_checkpoints", "read_metrics", "read_run", "resolve_run_config", "train"]
