"""StampWorld: 24 concepts, each a real picture that makes a real recorded sound, rendered to videos.

A clip lays 1..``max_events`` excerpts of its concept's recordings (:mod:`.assets`) over quiet pink or
brown noise, and shows the concept's picture on a random gradient, drifting slowly; with probability
``two_source_fraction`` a second concept is heard (one quieter event) and seen (smaller, elsewhere), while
the clip keeps the first concept's label. :func:`render_stampworld` writes the layout of
:func:`clipsonic.sonicworld.world.render_world` (``manifest.csv`` for ``clipsonic preprocess``, captioned
pictures for the prior) plus, in ``world.json``, every clip's events and every asset's provenance.
Every clip is a pure function of (config, split, concept, number) and the asset files.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from clipsonic.config import Fraction, Positive
from clipsonic.errors import ClipsonicError
from clipsonic.files import atomic_output, write_bytes_atomic, write_json_atomic
from clipsonic.sonicworld.video import write_mp4
from clipsonic.sonicworld.world import TEMPLATES, VideoWorldConfig
from clipsonic.stampworld.assets import (
    CONCEPT_NAMES,
    CONCEPTS,
    StampConcept,
    asset_manifest,
    find_stamps,
    load_picture,
    load_recording,
    stamp_concept,
)

log = logging.getLogger(__name__)

EVENT_GAIN_DB = 4.0  # ± per event of the clip's concept
SECOND_GAIN_DB = (-6.0, -3.0)  # the second source's one event, relative to the concept's events
PEAK_DBFS, PEAK_JITTER_DB = -6.0, 3.0  # headroom for AAC's overshoot
NOISE_DBFS = (-45.0, -30.0)  # RMS of the background noise
FADE_S = 0.010  # raised-cosine fades at both ends of every event: excerpts cut mid-sound without clicks
SCALE = (0.45, 0.85)  # the picture's longer side, as a fraction of the frame
SECOND_SCALE = (0.25, 0.40)
DRIFT_PX_S = (1.0, 4.0)  # slow drift, as SonicWorld's
PIXEL_NOISE = 3.0  # σ of the per-frame Gaussian pixel noise, in levels
OVERSAMPLE = 4  # composite at 4× and box-downsample: sub-pixel drift and clean edges
_SPLIT_CODE = {"train": 0, "test": 1, "captions": 2}  # independent random streams


@dataclasses.dataclass(frozen=True)
class StampWorldConfig(VideoWorldConfig):
    """How much of StampWorld to render, and how."""

    # 4.096 s = 65536 samples = 128 mel frames at hop 512: the paper's 4-s clips, a multiple of 8 frames (the UNet's)
    seconds: Positive = 4.096
    two_source_fraction: Fraction = 0.15  # clips that also hear and show a second concept (label: the first)
    concepts: tuple[str, ...] = ()  # render only these concepts (and draw second sources from them); () = all

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [c for c in self.concepts if c not in CONCEPT_NAMES]
        if unknown or len(set(self.concepts)) != len(self.concepts):
            raise ClipsonicError(f"StampWorld concepts {list(self.concepts)} must be distinct names of "
                                 f"{list(CONCEPT_NAMES)}")

    @property
    def concept_names(self) -> tuple[str, ...]:
        return self.concepts or CONCEPT_NAMES


_ARTICLE = re.compile(r"\ba (?=[aeiou])")


def captions(which: StampConcept | int | str, split: str = "train") -> list[str]:
    """The concept's captions: every ``split`` template of SonicWorld × noun × sound word, in a fixed order.
    Held-out ("test") templates put training words in new orders; no test caption is a training caption."""
    if split not in TEMPLATES:
        raise ClipsonicError(f"unknown caption split {split!r}; use 'train' or 'test'")
    c = stamp_concept(which)
    return [_ARTICLE.sub("an ", t.format(noun=n, sound=s)) for t in TEMPLATES[split] for n in c.nouns for s in c.sounds]


def clip_rngs(config: StampWorldConfig, split: str, index: int,
              number: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Independent (plan, picture, sound) generators of one clip, from (seed, split, concept index, number)."""
    seeds = np.random.SeedSequence([config.seed, _SPLIT_CODE[split], index, number]).spawn(3)
    return tuple(np.random.default_rng(s) for s in seeds)


# --- sound -------------------------------------------------------------------------------------

def _fade(length: int, sample_rate: int) -> np.ndarray:
    """Raised-cosine ramps of :data:`FADE_S` (at most half the event) at both ends: ``[length]``."""
    ramp = min(int(round(FADE_S * sample_rate)), length // 2)
    gain = np.ones(length)
    if ramp:
        up = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
        gain[:ramp], gain[length - ramp:] = up, up[::-1]
    return gain


def event_audio(stamps: str | os.PathLike, event: dict, sample_rate: int = 16000) -> np.ndarray:
    """What one event adds to its clip, from its entry in ``events``: float64 ``[round(seconds * rate)]``,
    starting at ``onset_s``. A clip's audio is the sum of its events plus the background noise."""
    x = load_recording(Path(stamps), event["recording"], sample_rate)
    offset, length = round(event["offset_s"] * sample_rate), round(event["seconds"] * sample_rate)
    return 10 ** (event["gain_db"] / 20) * (x[offset:offset + length] * _fade(length, sample_rate))


def background_noise(num_samples: int, rng: np.random.Generator, sample_rate: int = 16000) -> np.ndarray:
    """Pink (1/f power) or brown (1/f²) noise at :data:`NOISE_DBFS` RMS, the colour and level drawn from ``rng``:
    float64 ``[num_samples]``. Shaped in the frequency domain; below 20 Hz the spectrum is flat (no DC drift)."""
    exponent = (0.5, 1.0)[rng.integers(2)]  # amplitude ∝ f^-exponent
    level = rng.uniform(*NOISE_DBFS)
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    spectrum *= np.maximum(np.fft.rfftfreq(num_samples, 1 / sample_rate), 20.0) ** -exponent
    noise = np.fft.irfft(spectrum, num_samples)
    noise -= noise.mean()
    return noise * (10 ** (level / 20) / max(float(np.sqrt(np.mean(noise**2))), 1e-12))


def _draw_events(concepts: list[StampConcept], rng: np.random.Generator, stamps: Path,
                 config: StampWorldConfig) -> list[dict]:
    """Events with their relative gains (dB, applied to the peak-normalised recording): 1..max_events of
    ``concepts[0]``, kept while their lengths sum to at most the clip (so long recordings do not pile up; the
    first always stays, a random excerpt if longer than the clip), then one of ``concepts[1]`` if given."""
    n, rate = config.num_samples, config.sample_rate
    plan = [concepts[0]] * int(rng.integers(1, config.max_events + 1)) + concepts[1:2]
    events, total = [], 0
    for k, c in enumerate(plan):
        second = k > 0 and c is not concepts[0]
        rel = c.recordings[rng.integers(len(c.recordings))]
        x = load_recording(stamps, rel, rate)
        length = min(len(x), n)
        offset, onset = int(rng.integers(len(x) - length + 1)), int(rng.integers(n - length + 1))
        gain = rng.uniform(*SECOND_GAIN_DB) if second else rng.uniform(-EVENT_GAIN_DB, EVENT_GAIN_DB)
        if k > 0 and not second and total + length > n:
            continue
        total += 0 if second else length
        gain -= 20 * np.log10(max(float(np.abs(x).max()), 1e-6))  # relative to the recording's peak
        events.append({"concept": c.name, "recording": rel, "onset_s": onset / rate, "seconds": length / rate,
                       "offset_s": offset / rate, "gain_db": float(gain)})
    return events


def make_sound(concepts: list[StampConcept], rng: np.random.Generator, stamps: Path,
               config: StampWorldConfig) -> tuple[np.ndarray, list[dict]]:
    """The clip's audio float32 ``[num_samples]`` and its events, with their final gains: the events' sum peaks
    at :data:`PEAK_DBFS` ± :data:`PEAK_JITTER_DB`, and the background noise is added on top."""
    n, rate = config.num_samples, config.sample_rate
    events = _draw_events(concepts, rng, stamps, config)
    target_db = PEAK_DBFS + rng.uniform(-PEAK_JITTER_DB, PEAK_JITTER_DB)
    shift = target_db - 20 * np.log10(max(float(np.abs(_sum_events(stamps, events, n, rate)).max()), 1e-12))
    for e in events:
        e["gain_db"] = float(e["gain_db"] + shift)
    # again from the final gains, so that event_audio reproduces each event exactly
    return (_sum_events(stamps, events, n, rate) + background_noise(n, rng, rate)).astype(np.float32), events


def _sum_events(stamps: Path, events: list[dict], num_samples: int, sample_rate: int) -> np.ndarray:
    """The events laid at their onsets: float64 ``[num_samples]``."""
    mix = np.zeros(num_samples)
    for e in events:
        start = round(e["onset_s"] * sample_rate)
        piece = event_audio(stamps, e, sample_rate)
        mix[start:start + len(piece)] += piece
    return mix


# --- pictures ----------------------------------------------------------------------------------

def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A vertical gradient between two random colours with a mild smooth texture, drawn at the frame's ``size`` and
    repeated to the oversampled side (it is smooth: the box downsample gives it back): float32 ``[side, side, 3]``."""
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    coarse = Image.fromarray(rng.normal(0.0, 8.0, (8, 8)).astype(np.float32))  # mode "F"
    texture = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC))[..., None]
    small = np.clip(top * (1 - t) + bottom * t + texture, 0, 255).astype(np.float32)
    return small.repeat(OVERSAMPLE, axis=0).repeat(OVERSAMPLE, axis=1)


def _sprite(picture: Image.Image, longest: int, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """The picture scaled (aspect kept) so its longer side is ``longest`` px: premultiplied RGB float32
    ``[h, w, 3]`` and alpha ``[h, w, 1]`` in [0, 1]. Resized premultiplied, so no dark fringes."""
    if flip:
        picture = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    factor = longest / max(picture.size)
    size = (max(1, round(picture.width * factor)), max(1, round(picture.height * factor)))
    rgba = np.asarray(picture.convert("RGBa").resize(size, Image.Resampling.LANCZOS), np.float32)
    rgba = np.clip(rgba, 0, 255)
    alpha = rgba[..., 3:] / 255
    return np.minimum(rgba[..., :3], 255 * alpha), alpha


@dataclasses.dataclass(frozen=True)
class _Layer:
    """A sprite and its path: top-left corner (px, of the oversampled frame) at time t is start + velocity·t,
    clipped so the sprite stays inside the frame."""

    rgb: np.ndarray
    alpha: np.ndarray
    start: np.ndarray  # [2] (x, y)
    velocity: np.ndarray  # [2] px/s

    def corner(self, t: float, side: int) -> tuple[int, int]:
        h, w = self.alpha.shape[:2]
        x, y = np.clip(self.start + self.velocity * t, 0, [side - w, side - h])
        return int(round(x)), int(round(y))


def _layer(picture: Image.Image, scale: tuple[float, float], rng: np.random.Generator, side: int,
           away_from: _Layer | None = None) -> _Layer:
    """A randomly scaled, flipped and placed sprite; ``away_from``: the best of 8 positions, farthest from it."""
    rgb, alpha = _sprite(picture, max(1, round(rng.uniform(*scale) * side)), bool(rng.integers(2)))
    h, w = alpha.shape[:2]
    candidates = rng.uniform(0, 1, (8, 2)) * [side - w, side - h]
    start = candidates[0]
    if away_from is not None:
        other = away_from.start + np.array(away_from.alpha.shape[1::-1]) / 2
        start = candidates[np.argmax(np.linalg.norm(candidates + [w / 2, h / 2] - other, axis=1))]
    angle, speed = rng.uniform(0, 2 * np.pi), rng.uniform(*DRIFT_PX_S) * OVERSAMPLE  # px/s of the final frame
    return _Layer(rgb, alpha, start, speed * np.array([np.cos(angle), np.sin(angle)]))


def render_frames(pictures: list[Image.Image], rng: np.random.Generator, size: int = 64,
                  times: np.ndarray | None = None) -> np.ndarray:
    """Frames ``[T, size, size, 3]`` uint8 at ``times`` (seconds; default ``[0]``) of ``pictures[0]`` (45-85 % of
    the frame) and, if given, ``pictures[1]`` (25-40 %, behind it and away from it) on a random background.
    Per video: background, scales, flips, positions, drifts; per frame: Gaussian pixel noise."""
    times = np.zeros(1) if times is None else np.asarray(times, dtype=np.float64)
    side = size * OVERSAMPLE
    background = _background(rng, size)
    main = _layer(pictures[0], SCALE, rng, side)
    layers = [main] if len(pictures) == 1 else [_layer(pictures[1], SECOND_SCALE, rng, side, away_from=main), main]
    frames = np.empty((len(times), size, size, 3), np.uint8)
    for i, t in enumerate(times):
        canvas = background.copy()
        for layer in layers:  # "over" compositing, back to front
            x, y = layer.corner(t, side)
            h, w = layer.alpha.shape[:2]
            region = canvas[y:y + h, x:x + w]
            region *= 1 - layer.alpha
            region += layer.rgb
        clean = canvas.reshape(size, OVERSAMPLE, size, OVERSAMPLE, 3).mean(axis=(1, 3))  # box downsample
        frames[i] = np.clip(np.rint(clean + rng.normal(0.0, PIXEL_NOISE, clean.shape)), 0, 255).astype(np.uint8)
    return frames


# --- clips and files ---------------------------------------------------------------------------

def _plan(config: StampWorldConfig, split: str, index: int, rng: np.random.Generator) -> list[tuple[StampConcept, str]]:
    """The clip's (concept, picture) pairs: its own concept first, then perhaps a second source."""
    c = CONCEPTS[index]
    own = c.pictures(split)
    pairs = [(c, own[rng.integers(len(own))])]
    others = [n for n in config.concept_names if n != c.name]
    two, pick = rng.uniform() < config.two_source_fraction, rng.integers(max(1, len(others)))
    if split != "captions" and two and others:
        second = stamp_concept(others[pick])
        pictures = second.pictures(split)
        pairs.append((second, pictures[rng.integers(len(pictures))]))
    return pairs


def make_clip(config: StampWorldConfig, split: str, index: int, number: int,
              stamps: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Clip ``number`` of concept ``index`` (of :data:`CONCEPTS`) in ``split``: frames ``[T, H, W, 3]`` uint8,
    audio float32 ``[N]`` and its events ``[{"concept", "recording", "picture", "onset_s", "seconds",
    "offset_s", "gain_db"}]`` (clip time; :func:`event_audio` rebuilds each). ``stamps``: see :func:`find_stamps`."""
    if split not in ("train", "test"):
        raise ClipsonicError(f"unknown StampWorld split {split!r}; use 'train' or 'test'")
    stamps = Path(stamps)
    plan_rng, picture_rng, sound_rng = clip_rngs(config, split, int(index), int(number))
    pairs = _plan(config, split, int(index), plan_rng)
    frames = render_frames([load_picture(stamps, rel) for _, rel in pairs], picture_rng, config.size,
                           np.arange(config.num_frames) / config.fps)
    audio, events = make_sound([c for c, _ in pairs], sound_rng, stamps, config)
    shown = {c.name: rel for c, rel in pairs}
    return frames, audio, [{**e, "picture": shown[e["concept"]]} for e in events]


def caption_picture(config: StampWorldConfig, index: int, number: int, stamps: str | os.PathLike) -> np.ndarray:
    """Captioned picture ``number`` of concept ``index``: one frame ``[H, W, 3]`` uint8 of a training picture."""
    plan_rng, picture_rng, _ = clip_rngs(config, "captions", index, number)
    (_, rel), = _plan(config, "captions", index, plan_rng)
    return render_frames([load_picture(Path(stamps), rel)], picture_rng, config.size)[0]


def render_stampworld(out_dir: str | os.PathLike, config: StampWorldConfig | None = None,
                      stamps: str | os.PathLike | None = None,
                      progress: Callable[[int, int], None] | None = None) -> Path:
    """Write StampWorld under ``out_dir`` and return the path of its ``manifest.csv``. The layout is
    :func:`clipsonic.sonicworld.world.render_world`'s: ``videos/{train,test}/<concept>_<i>.mp4``,
    ``manifest.csv`` (path,label,split), ``captions/<concept>_<i>.png`` + ``.txt`` (training captions), and
    ``world.json`` with the config, the concepts, the assets' provenance and every clip's events.
    ``progress(done, total)`` is called after each file."""
    config, progress = config or StampWorldConfig(), progress or (lambda done, total: None)
    stamps, out, began = find_stamps(stamps), Path(out_dir), time.perf_counter()
    indices = [CONCEPT_NAMES.index(n) for n in config.concept_names]
    videos = [(s, i, n) for s in ("train", "test") for i in indices
              for n in range(config.train_videos_per_concept if s == "train" else config.test_videos_per_concept)]
    pictures = [(i, n) for i in indices for n in range(config.caption_images_per_concept)]
    total, rows, clips = len(videos) + len(pictures), ["path,label,split"], {}
    for split, index, number in videos:
        rel = f"videos/{split}/{CONCEPT_NAMES[index]}_{number}.mp4"
        frames, audio, clips[rel] = make_clip(config, split, index, number, stamps)
        write_mp4(out / rel, frames, audio, fps=config.fps, sample_rate=config.sample_rate)
        rows.append(f"{rel},{CONCEPT_NAMES[index]},{split}")
        progress(len(rows) - 1, total)
    for done, (index, number) in enumerate(pictures, len(videos) + 1):
        path = out / "captions" / f"{CONCEPT_NAMES[index]}_{number}.png"
        with atomic_output(path) as tmp:
            Image.fromarray(caption_picture(config, index, number, stamps)).save(tmp, format="PNG")
        write_bytes_atomic(path.with_suffix(".txt"), ("\n".join(captions(index, "train")) + "\n").encode())
        progress(done, total)
    write_bytes_atomic(out / "manifest.csv", ("\n".join(rows) + "\n").encode())
    write_json_atomic(out / "world.json", {
        "format": "clipsonic-stampworld", "version": 1, "config": config.to_dict(),
        "concepts": [dataclasses.asdict(CONCEPTS[i]) for i in indices], "assets": asset_manifest(stamps),
        "clips": clips})
    log.info("StampWorld: %d videos and %d captioned pictures of %d concepts in %s (%.1f s)", len(videos),
             len(pictures), len(indices), out, time.perf_counter() - began)
    return out / "manifest.csv"
