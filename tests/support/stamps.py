"""A fake Tux Paint stamps folder for StampWorld tests: every asset path of the table, as tiny real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
from PIL import Image, ImageDraw

from clipsonic.stampworld.assets import asset_paths
from clipsonic.stampworld.judge import TRAIN_OUTSIDERS


def make_stamps(root: Path) -> Path:
    """Write under ``root`` (returned) every asset of :data:`clipsonic.stampworld.CONCEPTS`: PNGs with a distinct
    opaque ellipse on transparency, and 0.3-s distinct chirps at 44.1 kHz (the fire truck's 5 s, longer than a clip,
    as the real siren is); and the judge's outsider recordings, chirps too."""
    outsiders = [(rel, "recording", None, None) for rel in TRAIN_OUTSIDERS]
    for k, (rel, kind, _, _) in enumerate(asset_paths() + outsiders):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "picture":
            image = Image.new("RGBA", (24 + k % 7, 18), (0, 0, 0, 0))
            ImageDraw.Draw(image).ellipse([2, 2, 20, 15], fill=(40 + 5 * k, 255 - 5 * k, 90, 255))
            image.save(path)
        elif not path.exists():
            seconds = 5.0 if "firetruck" in rel else 0.3
            t = np.arange(int(seconds * 44100)) / 44100
            chirp = 0.8 * np.sin(2 * np.pi * (300 + 40 * k) * t * (1 + t)) * np.hanning(len(t))
            soundfile.write(path, chirp, 44100, format="OGG", subtype="VORBIS")
    return root
