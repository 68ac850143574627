"""Networks. ``MelUNet``: the mel diffusion UNet conditioned on a CLIP embedding (see ``unet.py``)."""

from clipsonic.models.unet import (
    CONFIG_NAME,
    UNET_PRESETS,
    WEIGHTS_NAME,
    MelShapeError,
    MelUNet,
    MelUNetConfig,
    ModelLoadError,
)

__all__ = [
    "CONFIG_NAME",
    "UNET_PRESETS",
    "WEIGHTS_NAME",
    "MelShapeError",
    "MelUNet",
    "MelUNetConfig",
    "ModelLoadError",
]
