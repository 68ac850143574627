"""Mel → waveform: a BigVGAN trained on the paper's 16 kHz / 64-band mels, or Griffin-Lim.

```python
from clipsonic.vocoder import load_vocoder, GriffinLimVocoder
vocoder = load_vocoder("runs/vocoder")       # a vocoder dir, or a train-vocoder run dir
wav = vocoder(logmel)                        # [B, 64, frames] → [B, frames * 512], float32
vocoder.check_compatible(pipeline_mel)       # VocoderError naming both configs if they differ
```
Training: :func:`train_vocoder` (``clipsonic train-vocoder``). A vocoder directory is
``config.json`` (``"type"``, ``"mel"``, hyper-parameters) + ``*.safetensors``; it is what a
pipeline keeps as its ``vocoder/`` component (:func:`attach_vocoder`).
"""

from clipsonic.vocoder.base import Vocoder, VocoderError, mel_mismatch
from clipsonic.vocoder.bigvgan import VOCODER_PRESETS, BigVGANConfig, BigVGANVocoder
from clipsonic.vocoder.discriminators import DiscriminatorConfig
from clipsonic.vocoder.griffinlim import GriffinLimConfig, GriffinLimVocoder
from clipsonic.vocoder.loading import attach_vocoder, load_vocoder, resolve_vocoder_dir, vocode_file
from clipsonic.vocoder.train import (
    TRAIN_PRESETS,
    TrainResult,
    VocoderTrainConfig,
    export_checkpoint,
    train_config_for_preset,
    train_vocoder,
)

__all__ = [
    "Vocoder", "VocoderError", "mel_mismatch",
    "BigVGANConfig", "BigVGANVocoder", "VOCODER_PRESETS",
    "GriffinLimConfig", "GriffinLimVocoder",
    "DiscriminatorConfig",
    "load_vocoder", "attach_vocoder", "resolve_vocoder_dir", "vocode_file",
    "VocoderTrainConfig", "TRAIN_PRESETS", "TrainResult", "train_config_for_preset", "train_vocoder",
    "export_checkpoint",
]
