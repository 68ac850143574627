"""Networks. ``MelUNet``: the mel diffusion UNet conditioned on a CLIP embedding (see ``unet.py``)."""

from clipsonic.models.unet import UNET_PRESETS, MelUNet, MelUNetConfig

__all__ = ["UNET_PRESETS", "MelUNet", "MelUNetConfig"]
