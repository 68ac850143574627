"""Write small, real media files with PyAV for tests: videos with a known picture and sound.

Everything a test checks is decided here, so tests can compute the expected answer:

- pictures: ``colour(t)`` gives the solid RGB colour of the frame shown from time ``t``;
  the default :func:`second_colour` changes colour every whole second (palette :data:`PALETTE`);
- sound: ``tone_hz`` (one frequency, or one per channel) at amplitude :data:`AMPLITUDE`, or any
  ``audio(t) -> [channels, N]`` callable of the sample times ``t`` ``[N]`` in seconds;
- frame times: :func:`frame_times` (constant or variable frame rate).

Encoders in this PyAV wheel (18.x): video ``libx264`` (alias ``h264``), ``libvpx`` (VP8),
``libvpx-vp9``, ``mpeg4``, ``libsvtav1``, ``mjpeg``, ``prores``; audio ``aac``, ``libopus``
(alias ``opus``; 48/24/16/12/8 kHz only), ``libmp3lame`` (alias ``mp3``), ``pcm_s16le``,
``flac``, ``ac3``. No Vorbis: there is no libvorbis, and FFmpeg's own experimental ``vorbis``
encoder refuses to open. Use even pixel sizes.

Example::

    write_video(tmp_path / "a.mp4", seconds=2, fps=25, size=(64, 48))            # H.264/AAC 44.1k stereo
    write_video(tmp_path / "b.webm", seconds=2, video_codec="libvpx-vp9",
                audio_codec="libopus", sample_rate=48000)
    write_audio(tmp_path / "c.flac", seconds=1, sample_rate=22050, tone_hz=440.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# Eight colours far apart in RGB, so lossy coding never makes one look like another.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 30, 30), (30, 200, 40), (40, 60, 230), (240, 220, 40),
    (230, 40, 220), (30, 220, 220), (250, 250, 250), (20, 20, 20),
)
AMPLITUDE = 0.5  # peak of each written tone: leaves headroom for lossy codecs' overshoot

# Container chosen by file extension; the default codecs when a test does not name them.
_FORMATS = {
    ".mp4": "mp4", ".m4a": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm",
    ".avi": "avi", ".ts": "mpegts", ".wav": "wav", ".flac": "flac", ".mp3": "mp3", ".ogg": "ogg",
}
_AUDIO_ONLY_CODECS = {".wav": "pcm_s16le", ".flac": "flac", ".mp3": "libmp3lame", ".ogg": "libopus",
                      ".m4a": "aac", ".mp4": "aac", ".mkv": "flac", ".webm": "libopus"}
_PIX_FMT = {"prores": "yuv422p10le", "mjpeg": "yuvj420p"}
_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}

AudioFn = Callable[[np.ndarray], np.ndarray]
ColourFn = Callable[[float], tuple[int, int, int]]
PictureFn = Callable[[float], np.ndarray]


def second_colour(t: float) -> tuple[int, int, int]:
    """The default picture: ``PALETTE[floor(t) % 8]``, a new solid colour every second."""
    return PALETTE[int(math.floor(t + 1e-9)) % len(PALETTE)]


def frame_times(seconds: float, fps: int, vfr: bool = False) -> list[Fraction]:
    """Presentation times of the frames :func:`write_video` writes, in seconds (exact fractions).

    Constant rate: ``k / fps``. Variable rate (``vfr=True``): frames last ``1/(2 fps)`` and
    ``3/(2 fps)`` in turn, so the average rate is still ``fps`` but no two neighbours agree.
    """
    if not vfr:
        return [Fraction(k, fps) for k in range(int(round(seconds * fps)))]
    times, t, k = [], Fraction(0), 0
    while t < seconds - 1e-9:
        times.append(t)
        t += Fraction(1 if k % 2 == 0 else 3, 2 * fps)
        k += 1
    return times


def tone(freqs: float | Sequence[float], amplitude: float = AMPLITUDE) -> AudioFn:
    """``audio(t)`` for a sine per channel (one frequency: the same sine on every channel)."""
    freqs = [float(freqs)] if np.isscalar(freqs) else [float(f) for f in freqs]

    def audio(t: np.ndarray) -> np.ndarray:
        return np.stack([amplitude * np.sin(2 * np.pi * f * t) for f in freqs])

    return audio


def _signal(seconds: float, sample_rate: int, channels: int, tone_hz, audio: AudioFn | None) -> np.ndarray:
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    sig = np.asarray((audio or tone(tone_hz))(t), dtype=np.float64)
    if sig.ndim == 1:
        sig = sig[None]
    if sig.shape[0] == 1 and channels > 1:
        sig = np.repeat(sig, channels, axis=0)
    if sig.shape != (channels, n):
        raise ValueError(f"audio(t) gave shape {sig.shape}, expected ({channels}, {n})")
    return sig.astype(np.float32)


def _add_audio_stream(container, codec: str, sample_rate: int, channels: int):
    stream = container.add_stream(codec, rate=sample_rate)
    stream.layout = _LAYOUTS.get(channels) or f"{channels}c"
    return stream


def _encode_audio(container, stream, sig: np.ndarray, sample_rate: int, start: float, block: int = 1000) -> None:
    """Feed ``sig`` ``[C, N]`` in blocks; PyAV re-frames and converts to the encoder's format."""
    layout = stream.layout.name
    offset = int(round(start * sample_rate))
    for s in range(0, sig.shape[1], block):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(sig[:, s:s + block]), format="fltp", layout=layout)
        frame.sample_rate = sample_rate
        frame.pts = offset + s
        frame.time_base = Fraction(1, sample_rate)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


class _PipeWriter:
    """A write-only file object: the muxer cannot seek back to fill in duration or an index."""

    def __init__(self, path: Path):
        self._fh = open(path, "wb")

    def write(self, data) -> int:
        return self._fh.write(data)

    def close(self) -> None:
        self._fh.close()


def write_video(
    path: str | Path,
    *,
    seconds: float,
    fps: int = 25,
    size: tuple[int, int] = (64, 48),
    video_codec: str = "libx264",
    audio_codec: str | None = "aac",
    sample_rate: int = 44100,
    channels: int = 2,
    tone_hz: float | Sequence[float] = 440.0,
    audio: AudioFn | None = None,
    colour: ColourFn = second_colour,
    picture: PictureFn | None = None,
    vfr: bool = False,
    gop: int | None = None,
    audio_start: float = 0.0,
    streamable: bool = False,
    faststart: bool = False,
) -> Path:
    """Write a video file with a known picture and sound; the container follows the extension.

    Args:
        path: ``.mp4 .mov .mkv .webm .avi .ts`` (format by extension).
        seconds: length of both tracks.
        fps: frame rate (average rate when ``vfr``); frames are at :func:`frame_times`.
        size: ``(width, height)`` in pixels; keep both even for 4:2:0 codecs.
        video_codec: an encoder name (see module docstring).
        audio_codec: an encoder name, or ``None`` for a silent video without an audio stream.
        sample_rate, channels: of the audio track (1, 2, or 6 = 5.1).
        tone_hz: sine frequency, or one per channel, at amplitude :data:`AMPLITUDE`; ignored
            when ``audio`` is given.
        audio: ``audio(t) -> [channels, N]`` (or ``[N]`` for every channel) of sample times ``t``.
        colour: ``colour(t) -> (r, g, b)``, the solid colour of the frame that starts at ``t``.
        picture: ``picture(t) -> uint8 [height, width, 3]`` RGB image of the frame at ``t``;
            replaces ``colour`` when given.
        vfr: variable frame rate (see :func:`frame_times`).
        gop: keyframe interval in frames (for libx264 also disables scene-cut keyframes, so the
            colour changes do not become keyframes); ``None`` = the encoder's default.
        audio_start: the audio track's first sample is stamped at this time (a non-zero start pts).
        streamable: write as into a pipe (no seeking back): Matroska/WebM then carry no duration.
        faststart: mp4/mov only: put the index (moov) before the media data.

    Returns:
        ``Path(path)``.
    """
    path = Path(path)
    fmt = _FORMATS[path.suffix.lower()]
    target = _PipeWriter(path) if streamable else str(path)
    options = {"movflags": "faststart"} if faststart else {}
    if fmt == "avi":
        # AVI cannot store negative timestamps; FFmpeg's default fix shifts every stream by the
        # MP3 encoder delay, which lands the video one frame late. Keep the frames where we put them.
        options["avoid_negative_ts"] = "disabled"
    container = av.open(target, "w", format=fmt, options=options)
    try:
        times = frame_times(seconds, fps, vfr)
        tb = Fraction(1, 2 * fps) if vfr else Fraction(1, fps)
        v_options = {}
        if gop and video_codec in ("libx264", "h264"):
            v_options["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0"
        v = container.add_stream(video_codec, rate=fps, options=v_options)
        v.width, v.height = size
        v.pix_fmt = _PIX_FMT.get(video_codec, "yuv420p")
        v.codec_context.time_base = tb
        if gop:
            v.codec_context.gop_size = gop
        a = _add_audio_stream(container, audio_codec, sample_rate, channels) if audio_codec else None
        sig = _signal(seconds, sample_rate, channels, tone_hz, audio) if a else None
        image = np.empty((size[1], size[0], 3), np.uint8)
        for t in times:
            image[...] = picture(float(t)) if picture else colour(float(t))
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = int(t / tb)
            frame.time_base = tb
            for packet in v.encode(frame):
                container.mux(packet)
        for packet in v.encode(None):
            container.mux(packet)
        if a is not None:
            _encode_audio(container, a, sig, sample_rate, audio_start)
    finally:
        container.close()
        if streamable:
            target.close()
    return path


def write_audio(
    path: str | Path,
    *,
    seconds: float,
    sample_rate: int = 44100,
    channels: int = 1,
    codec: str | None = None,
    tone_hz: float | Sequence[float] = 440.0,
    audio: AudioFn | None = None,
) -> Path:
    """Write an audio-only file (``.wav .flac .mp3 .ogg .m4a``, or ``.mkv/.webm/.mp4`` without video).

    ``codec`` defaults by extension: wav → pcm_s16le, flac → flac, mp3 → libmp3lame,
    ogg → libopus (Opus needs 48/24/16/12/8 kHz; use flac-in-ogg, ``codec="flac"``, for others),
    m4a/mp4 → aac. Sound as in :func:`write_video`. Returns ``Path(path)``.
    """
    path = Path(path)
    codec = codec or _AUDIO_ONLY_CODECS[path.suffix.lower()]
    container = av.open(str(path), "w", format=_FORMATS[path.suffix.lower()])
    try:
        stream = _add_audio_stream(container, codec, sample_rate, channels)
        _encode_audio(container, stream, _signal(seconds, sample_rate, channels, tone_hz, audio), sample_rate, 0.0)
    finally:
        container.close()
    return path


def write_frameless_video(path: str | Path, *, audio_seconds: float | None = 1.0, sample_rate: int = 44100,
                          tone_hz: float = 440.0) -> Path:
    """A file whose video stream (H.264, 64×48) holds no frame at all, plus an audio track of
    ``audio_seconds`` (``None``: no audio). What FFmpeg writes depends on the container: Matroska
    keeps the empty video stream beside the audio; mp4/mov drop it (the file reads as audio-only,
    and without audio as a file with no stream and no timestamps). Returns ``Path(path)``.
    """
    path = Path(path)
    container = av.open(str(path), "w", format=_FORMATS[path.suffix.lower()])
    try:
        v = container.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = _add_audio_stream(container, "aac", sample_rate, 2) if audio_seconds is not None else None
        container.start_encoding()  # write the header even when no packet ever comes
        if a is not None:
            _encode_audio(container, a, _signal(audio_seconds, sample_rate, 2, tone_hz, None), sample_rate, 0.0)
        for packet in v.encode(None):
            container.mux(packet)
    finally:
        container.close()
    return path


def truncate(path: str | Path, fraction: float = 0.5) -> Path:
    """Cut a file to ``fraction`` of its bytes in place (a download that stopped half-way)."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


# --- what tests of clipsonic.media measure -------------------------------------------------------

# name → writer kwargs: each container with its usual codecs.
VIDEOS = {
    "h264_aac.mp4": dict(video_codec="libx264", audio_codec="aac", sample_rate=44100, channels=2),
    "vp9_opus.webm": dict(video_codec="libvpx-vp9", audio_codec="libopus", sample_rate=48000, channels=2),
    "h264_flac.mkv": dict(video_codec="libx264", audio_codec="flac", sample_rate=22050, channels=1),
    "mpeg4_mp3.avi": dict(video_codec="mpeg4", audio_codec="libmp3lame", sample_rate=44100, channels=2),
    "h264_pcm.mov": dict(video_codec="libx264", audio_codec="pcm_s16le", sample_rate=48000, channels=2),
}


def video_cache(root: Path) -> Callable[..., Path]:
    """``get(name)``: a 2-s file of VIDEOS (or a custom one: ``get(name, **kwargs)``), written once under ``root``."""
    made: dict[str, Path] = {}

    def get(name: str, **kwargs) -> Path:
        if name not in made:
            made[name] = write_video(root / name, **{"seconds": 2, **VIDEOS.get(name, {}), **kwargs})
        return made[name]

    return get


def peak_hz(x: np.ndarray, rate: int) -> float:
    """Frequency of the strongest spectral peak, refined by parabolic interpolation."""
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    k = int(np.argmax(spec[1:-1])) + 1
    a, b, c = np.log(spec[k - 1:k + 2] + 1e-12)
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * rate / len(x)


def amplitude_at(x: np.ndarray, rate: int, hz: float) -> float:
    """Amplitude of the sine at ``hz`` (Hann-windowed DFT, exact for whole-bin frequencies)."""
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    k = int(round(hz * len(x) / rate))
    return float(spec[k - 1:k + 2].max() / (np.hanning(len(x)).sum() / 2))


def close_colour(picture: np.ndarray, rgb, tol: int = 16) -> bool:
    return bool(np.abs(picture.astype(int) - np.array(rgb)).max() <= tol)


def clicks_at(*seconds: float) -> Callable[[np.ndarray], np.ndarray]:
    """An ``audio(t)`` of single-sample clicks (0.9) at ``seconds``."""
    def audio(t):
        x = np.zeros_like(t)
        rate = round(1 / (t[1] - t[0]))
        for s in seconds:
            x[round(s * rate)] = 0.9
        return x
    return audio


def onset(x: np.ndarray, rate: int) -> float:
    """Seconds at which a silent signal first reaches 20% of full tone level."""
    return int(np.argmax(np.abs(x) > 0.2 * AMPLITUDE)) / rate
