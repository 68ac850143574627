"""Deterministic mp4 files for the rendered worlds: H.264 + AAC whose bytes depend only on the inputs."""

from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np

from clipsonic.files import atomic_output


def rgb_to_yuv420p(image: np.ndarray) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` → planar BT.601 limited-range 4:2:0 ``[3H/2, W]`` (FFmpeg's layout).
    Done here, in numpy, so the pixels x264 sees do not depend on swscale's version or CPU paths."""
    rgb = image.astype(np.float64)
    y = 16 + rgb @ np.array([65.481, 128.553, 24.966]) / 255
    cb = 128 + rgb @ np.array([-37.797, -74.203, 112.0]) / 255
    cr = 128 + rgb @ np.array([112.0, -93.786, -18.214]) / 255
    h, w = y.shape

    def half(plane: np.ndarray) -> np.ndarray:  # 2×2 means: [H, W] → [H/2 * W/2] rows of the plane
        return plane.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)).reshape(h // 4, w)

    planes = np.concatenate([y, half(cb), half(cr)])
    return np.clip(np.rint(planes), 0, 255).astype(np.uint8)


def write_mp4(path: str | os.PathLike, frames: np.ndarray, audio: np.ndarray, fps: int,
              sample_rate: int = 16000) -> None:
    """Write H.264 (yuv420p) + AAC (mono) mp4, atomically. Same inputs give the same bytes."""
    with atomic_output(path) as tmp, av.open(str(tmp), "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        # Byte-identical re-renders: one thread, and no macroblock-tree rate control, whose
        # output varied from run to run on identical input (libx264 core 165 in PyAV 18).
        video = container.add_stream("libx264", rate=fps, options={"x264-params": "mbtree=0"})
        video.codec_context.thread_count = 1
        video.width, video.height = frames.shape[2], frames.shape[1]
        video.pix_fmt = "yuv420p"
        video.codec_context.time_base = Fraction(1, fps)
        sound = container.add_stream("aac", rate=sample_rate)
        sound.layout = "mono"
        sound.codec_context.bit_rate = 64000  # keeps the band up to ~7.5 kHz at 16 kHz mono
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(image), format="yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        # one frame of the whole clip: PyAV cuts it into the encoder's 1024-sample frames
        frame = av.AudioFrame.from_ndarray(np.asarray(audio, np.float32)[None], format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = sample_rate, 0, Fraction(1, sample_rate)
        container.mux(sound.encode(frame))
        container.mux(sound.encode(None))
