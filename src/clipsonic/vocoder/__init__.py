"""Mel → waveform: a BigVGAN trained on the paper's 16 kHz / 64-band mels, or Griffin-Lim.

```python
vocoder = load_vocoder("runs/vocoder")       # a vocoder folder, or a train-vocoder run folder
wav = vocoder(logmel)                        # [B, 64, frames] → [B, frames * 512], float32
vocoder.check_compatible(pipeline_mel)       # ClipsonicError naming both configs if they differ
```
Training (``train_vocoder``, a task of the shared loop) is ``task.py``; see docs/architecture.md for the map.
"""

from clipsonic.vocoder.discriminators import DiscriminatorConfig
from clipsonic.vocoder.task import VocoderTrainConfig, train_vocoder
from clipsonic.vocoder.vocoders import (
    VOCODER_PRESETS,
    BigVGANConfig,
    BigVGANVocoder,
    GriffinLimConfig,
    GriffinLimVocoder,
    Vocoder,
    attach_vocoder,
    load_vocoder,
    vocode_file,
)

__all__ = ["Vocoder", "BigVGANConfig", "BigVGANVocoder", "VOCODER_PRESETS", "GriffinLimConfig", "GriffinLimVocoder",
           "DiscriminatorConfig", "load_vocoder", "attach_vocoder", "vocode_file", "VocoderTrainConfig",
           "train_vocoder"]
