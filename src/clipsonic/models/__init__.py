"""Networks. ``MelUNet``: the mel diffusion UNet conditioned on a CLIP embedding (see ``unet.py``)."""

from clipsonic.models.unet import (
    CONFIG_NAME,
    FRAME_BLOCK,
    UNET_PRESETS,
    WEIGHTS_NAME,
    MelUNet,
    MelUNetConfig,
    check_frames,
)

__all__ = ["CONFIG_NAME", "FRAME_BLOCK", "UNET_PRESETS", "WEIGHTS_NAME", "MelUNet", "MelUNetConfig", "check_frames"]
