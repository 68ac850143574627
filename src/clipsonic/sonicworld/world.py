"""SonicWorld: eight concepts, each a coloured shape that makes one kind of sound, rendered to videos.

A sound is an ``f0``, a :data:`TIMBRES` entry and a :data:`RHYTHMS` envelope that never falls below
:data:`ENVELOPE_FLOOR` (the pitch shows in every mel frame), jittered per clip. :func:`render_world`
writes H.264 + AAC mp4 videos with a ``manifest.csv`` for ``clipsonic preprocess``, a ``world.json``
and captioned pictures for the prior. Every clip is a pure function of (seed, split, concept, index).
With ``WorldConfig(events=True)`` a clip is timed events instead (:mod:`.events`): its concept (and sometimes
a second one) sounds and is seen only during them, and ``world.json`` records every clip's events.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from clipsonic.config import Config, Fraction, NonNegativeInt, Positive, PositiveInt, Seed
from clipsonic.errors import ClipsonicError
from clipsonic.files import atomic_output, write_bytes_atomic, write_json_atomic
from clipsonic.sonicworld.events import event_gain, opacity, plan_events
from clipsonic.sonicworld.video import write_mp4

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
F0_JITTER = 0.03  # ±3 %: far less than the ≥ 40 % steps between the concepts' fundamentals
GAIN_JITTER_DB = 3.0
PEAK_DBFS = -6.0  # headroom for AAC's overshoot
NOISE_DBFS = -40.0  # RMS of the white noise floor
EVENT_NOISE_DBFS = -60.0  # event clips: the floor between events, far under the tone (sharp onsets)
SECOND_GAIN_DB = (-6.0, -3.0)  # event clips: the second concept's tone, relative to the clip's concept
ENVELOPE_FLOOR = 0.2  # the "off" level of pulses: -14 dB, audible in every frame
RAMP_S = 0.010  # pulse edges: 10-ms raised-cosine ramps (no clicks)
PULSE_ON = 0.6  # pulses: the fraction of each period at full level
TREMOLO_DEPTH = 0.6  # tremolo: gain swings between 1 and 1 - depth
MAX_PARTIAL_HZ = 7500.0  # partials above this are dropped (below 8 kHz Nyquist, inside AAC's band)
_SPLIT_CODE = {"train": 0, "test": 1, "captions": 2, "clip": 3}  # independent random streams


@dataclasses.dataclass(frozen=True)
class Concept:
    """One thing of the world: how it looks, how it sounds, and what people call it."""

    name: str
    colour: tuple[int, int, int]
    shape: str
    f0: float  # Hz, nominal fundamental
    timbre: str  # key of TIMBRES
    rhythm: str  # key of RHYTHMS
    nouns: tuple[str, ...]  # each names colour and shape, so a caption alone picks the concept
    sounds: tuple[str, ...]  # sound words (participles)


# Fundamentals ≥ 1.4× apart; high fundamentals get timbres whose partials stay below 7.5 kHz.
CONCEPTS: tuple[Concept, ...] = (
    Concept("red_circle", (225, 30, 30), "circle", 180.0, "saw", "steady",
            ("red circle", "red ball", "red disc"), ("humming", "droning")),
    Concept("blue_square", (40, 70, 235), "square", 250.0, "square", "pulse2",
            ("blue square", "blue box", "blue block"), ("buzzing", "throbbing")),
    Concept("green_triangle", (30, 195, 50), "triangle", 350.0, "reed", "pulse3",
            ("green triangle", "green pyramid", "green wedge"), ("honking", "tooting")),
    Concept("yellow_star", (240, 220, 40), "star", 500.0, "bright", "pulse5",
            ("yellow star", "golden star", "yellow sparkle"), ("rattling", "twinkling")),
    Concept("magenta_cross", (225, 40, 225), "cross", 700.0, "hollow", "tremolo6",
            ("magenta cross", "pink cross", "purple plus"), ("warbling", "wobbling")),
    Concept("cyan_ring", (30, 215, 225), "ring", 1000.0, "soft", "steady",
            ("cyan ring", "turquoise ring", "cyan hoop"), ("whistling", "singing")),
    Concept("orange_diamond", (250, 140, 20), "diamond", 1400.0, "bell", "pulse4",
            ("orange diamond", "orange rhombus", "orange gem"), ("ringing", "chiming")),
    Concept("white_stripes", (245, 245, 245), "stripes", 2000.0, "sine", "tremolo3",
            ("white stripes", "white lines", "white bars"), ("squeaking", "peeping")),
)
CONCEPT_NAMES = tuple(c.name for c in CONCEPTS)

# Held-out templates reuse only words of the training templates, so every test caption is made of
# training words in a new order; no test caption equals a training caption (tested).
TEMPLATES = {"train": ("a {noun} {sound}", "the {sound} {noun}", "a {noun} that is {sound}",
                       "the sound of a {sound} {noun}", "a video of a {noun} {sound}", "the {noun} is {sound}",
                       "{sound} {noun}"),
             "test": ("the {noun} that is {sound}", "a video of the {sound} {noun}", "a {sound} {noun}",
                      "the sound of the {noun} {sound}")}


@dataclasses.dataclass(frozen=True)
class VideoWorldConfig(Config):
    """What a rendered world's videos are (SonicWorld's and StampWorld's): how many, how long, how big."""

    seed: Seed = 0
    train_videos_per_concept: NonNegativeInt = 24
    test_videos_per_concept: NonNegativeInt = 4
    # 3.072 s = 49152 samples = 96 mel frames at hop 512: a multiple of 8 frames, as the UNet needs.
    seconds: Positive = 3.072
    fps: PositiveInt = 8  # slow drift needs few frames; CLIPSonic samples one frame per clip anyway
    size: PositiveInt = 64  # square frames; even, for 4:2:0 chroma
    sample_rate: PositiveInt = SAMPLE_RATE
    caption_images_per_concept: NonNegativeInt = 4
    max_events: PositiveInt = 3  # events of the concept per clip: 1..max_events
    two_source_fraction: Fraction = 0.2  # clips with a second concept's sound and picture (label: the first)

    def __post_init__(self) -> None:
        if self.size < 16 or self.size % 2:
            raise ClipsonicError(f"{type(self).__name__} size must be an even number ≥ 16 pixels, got {self.size}")

    @property
    def num_samples(self) -> int:
        return int(round(self.seconds * self.sample_rate))

    @property
    def num_frames(self) -> int:
        """Frames covering the whole sound (the last one may outlast it by under a frame)."""
        return math.ceil(self.seconds * self.fps - 1e-9)


@dataclasses.dataclass(frozen=True)
class WorldConfig(VideoWorldConfig):
    """How much of SonicWorld to render, and how."""

    # Event clips (opt-in): the sound and the object only during 1..max_events events per concept, on the frame grid.
    events: bool = False
    event_seconds: tuple[float, float] = (0.25, 0.75)  # an event's length, rounded inwards to whole frames

    def __post_init__(self) -> None:
        super().__post_init__()
        lo, hi = self.event_frames
        if self.events and not 1 <= lo <= hi <= int(self.seconds * self.fps + 1e-9) - 1:
            raise ClipsonicError(f"event_seconds {list(self.event_seconds)} must hold a whole frame ({1 / self.fps:g} s) "
                             f"and leave the first frame of the {self.seconds} s clip free; widen it or lengthen the clip")

    @property
    def event_frames(self) -> tuple[int, int]:
        """The shortest and longest event in whole video frames."""
        lo, hi = self.event_seconds
        return math.ceil(lo * self.fps - 1e-9), math.floor(hi * self.fps + 1e-9)


def concept(which: Concept | int | str) -> Concept:
    """A concept by itself, its index, or its name."""
    if isinstance(which, str) and which in CONCEPT_NAMES:
        which = CONCEPT_NAMES.index(which)
    if isinstance(which, (int, np.integer)) and 0 <= which < len(CONCEPTS):
        return CONCEPTS[int(which)]
    if isinstance(which, Concept):
        return which
    raise ClipsonicError(f"unknown concept {which!r}; use an index 0-{len(CONCEPTS) - 1} "
                         f"or one of {list(CONCEPT_NAMES)}")


def captions(which: Concept | int | str, split: str = "train") -> list[str]:
    """The concept's captions: every ``split`` template × noun × sound word, in a fixed order."""
    if split not in TEMPLATES:
        raise ClipsonicError(f"unknown caption split {split!r}; use 'train' or 'test'")
    c = concept(which)
    return [t.format(noun=n, sound=s) for t in TEMPLATES[split] for n in c.nouns for s in c.sounds]


def clip_rng(config: WorldConfig, split: str, index: int, number: int,
             streams: int = 2) -> tuple[np.random.Generator, ...]:
    """Independent (picture, sound[, events]) generators of one clip, from (seed, split, concept, number).
    A stream does not depend on how many are asked for (SeedSequence children are numbered)."""
    seeds = np.random.SeedSequence([config.seed, _SPLIT_CODE[split], index, number]).spawn(streams)
    return tuple(np.random.default_rng(s) for s in seeds)


# --- sounds ------------------------------------------------------------------------------------

# name -> ((frequency ratio, amplitude), ...); the fundamental (ratio 1) is the strongest partial.
TIMBRES: dict[str, tuple[tuple[float, float], ...]] = {
    "sine": ((1, 1.0),), "soft": ((1, 1.0), (2, 0.5), (3, 0.25)),
    "square": tuple((k, 1 / k) for k in (1, 3, 5, 7)), "saw": tuple((k, 1 / k) for k in range(1, 7)),
    "bright": ((1, 1.0), (2, 0.8), (3, 0.7), (4, 0.6)), "reed": tuple((k, 1 / k**2) for k in (1, 3, 5, 7)),
    "bell": ((1, 1.0), (2.76, 0.5), (5.40, 0.3)),  # inharmonic, like a struck bar
    "hollow": ((1, 1.0), (3, 0.5), (5, 0.3)),  # 1, 0, .5, 0, .3: odd partials only
}

# name -> (kind, rate Hz): "steady", "pulse" (on/off) or "tremolo" (a sinusoid); rates ≥ 1 Hz so the
# pattern shows within a 1.024-s window.
RHYTHMS: dict[str, tuple[str, float]] = {
    "steady": ("steady", 0.0), "pulse2": ("pulse", 2.0), "pulse3": ("pulse", 3.0), "pulse4": ("pulse", 4.0),
    "pulse5": ("pulse", 5.0), "tremolo3": ("tremolo", 3.0), "tremolo6": ("tremolo", 6.0),
}


def envelope(rhythm: str, t: np.ndarray, phase: float) -> np.ndarray:
    """Gain in [ENVELOPE_FLOOR or 1 - TREMOLO_DEPTH, 1] at times ``t`` ``[N]``; ``phase`` in [0, 1) periods."""
    kind, rate = RHYTHMS[rhythm]
    if kind == "steady":
        return np.ones_like(t)
    cycles = t * rate + phase
    if kind == "tremolo":
        return 1.0 - TREMOLO_DEPTH * 0.5 * (1.0 - np.cos(2 * np.pi * cycles))
    period = 1.0 / rate
    u = (cycles % 1.0) * period  # seconds into the current period
    # raised-cosine ramps up over [0, RAMP_S] and down over [on - RAMP_S, on]
    rise = np.clip(u / RAMP_S, 0.0, 1.0)
    fall = np.clip((PULSE_ON * period - u) / RAMP_S, 0.0, 1.0)
    shape = 0.5 - 0.5 * np.cos(np.pi * np.minimum(rise, fall))
    return ENVELOPE_FLOOR + (1.0 - ENVELOPE_FLOOR) * shape


def synthesize(f0: float, timbre: str, rhythm: str, num_samples: int, rng: np.random.Generator, *,
               sample_rate: int = SAMPLE_RATE, jitter: bool = True) -> np.ndarray:
    """One clip: float32 ``[num_samples]`` peaking near :data:`PEAK_DBFS` (± the gain jitter) over the
    white noise floor at :data:`NOISE_DBFS`. With ``jitter=False`` the clip has the nominal f0 and gain
    and zero phases (the oracle's templates); the generator is still consumed the same way, so clips stay
    reproducible."""
    audio = tone(f0, timbre, rhythm, num_samples, rng, sample_rate=sample_rate, jitter=jitter)
    floor = rng.standard_normal(num_samples)
    return (audio + floor * 10 ** (NOISE_DBFS / 20)).astype(np.float32)


def tone(f0: float, timbre: str, rhythm: str, num_samples: int, rng: np.random.Generator, *,
         sample_rate: int = SAMPLE_RATE, jitter: bool = True, gain: np.ndarray | None = None) -> np.ndarray:
    """:func:`synthesize` without the noise floor: float64 ``[num_samples]``. ``gain`` ``[num_samples]``
    replaces the rhythm's envelope over the whole clip (event clips: the rhythm within each event)."""
    if timbre not in TIMBRES or rhythm not in RHYTHMS:
        raise ClipsonicError(f"unknown timbre {timbre!r} or rhythm {rhythm!r}; choose a timbre of "
                             f"{sorted(TIMBRES)} and a rhythm of {sorted(RHYTHMS)}")
    if not 0 < f0 < sample_rate / 2:
        raise ClipsonicError(f"f0 {f0} Hz is outside (0, {sample_rate / 2}) Hz at {sample_rate} Hz sampling")
    # Draw every random number up front, in a fixed order, whatever the flags say.
    f0_factor = math.exp(rng.uniform(-1.0, 1.0) * math.log1p(F0_JITTER))
    gain_db = rng.uniform(-GAIN_JITTER_DB, GAIN_JITTER_DB)
    phases = rng.uniform(0.0, 2 * np.pi, len(TIMBRES[timbre]))
    env_phase = rng.uniform()
    if not jitter:
        f0_factor, gain_db, phases, env_phase = 1.0, 0.0, np.zeros_like(phases), 0.0

    t = np.arange(num_samples) / sample_rate
    wave = np.zeros(num_samples)
    for (ratio, amp), phase in zip(TIMBRES[timbre], phases, strict=True):
        freq = f0 * f0_factor * ratio
        if freq <= MAX_PARTIAL_HZ:
            wave += amp * np.sin(2 * np.pi * freq * t + phase)
    wave *= envelope(rhythm, t, env_phase) if gain is None else gain
    peak = np.abs(wave).max() if num_samples else 1.0
    return wave * (10 ** ((PEAK_DBFS + gain_db) / 20) / max(peak, 1e-12))


# --- pictures ----------------------------------------------------------------------------------

def _polygons(shape: str, cx: float, cy: float, r: float) -> list[list[tuple[float, float]]]:
    """The shape's filled polygons (in pixels) for centre (cx, cy) and half-extent r."""
    def at(radius: float, degrees: float) -> tuple[float, float]:
        a = math.radians(degrees)
        return cx + radius * math.sin(a), cy - radius * math.cos(a)

    def box(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]

    s, w, h = 0.85 * r, 0.32 * r, 2 * r / 7
    polygons = {
        "square": [box(cx - s, cy - s, cx + s, cy + s)],
        "triangle": [[at(r, a) for a in (0, 120, 240)]],
        "star": [[at(r if k % 2 == 0 else 0.42 * r, 36 * k) for k in range(10)]],
        "diamond": [[(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)]],
        "cross": [box(cx - r, cy - w, cx + r, cy + w), box(cx - w, cy - r, cx + w, cy + r)],
        # four bars in a square, gaps between them
        "stripes": [box(cx - r, cy - r + k * h, cx + r, cy - r + (k + 1) * h) for k in (0, 2, 4, 6)],
    }
    if shape not in polygons:
        raise ClipsonicError(f"unknown shape {shape!r}")
    return polygons[shape]


def _drift(rng: np.random.Generator, size: int) -> tuple[float, Callable[[float], np.ndarray]]:
    """An object's half-extent (30-55 % of the frame) and its centre ``[2]`` at time t: a slow straight drift
    (1-4 px/s) from a random start, kept inside the frame."""
    radius = rng.uniform(0.30, 0.55) * size / 2
    lo, hi = radius, size - radius
    start = rng.uniform(lo, hi, 2)
    angle, speed = rng.uniform(0, 2 * np.pi), rng.uniform(1.0, 4.0)
    velocity = speed * np.array([math.cos(angle), math.sin(angle)])
    return radius, lambda t: np.clip(start + velocity * t, lo, hi)


def render_frames(which: Concept | int | str | Sequence[Concept | int | str], rng: np.random.Generator,
                  size: int = 64, times: np.ndarray | None = None, alpha: np.ndarray | None = None) -> np.ndarray:
    """Frames of one video ``[T, size, size, 3]`` uint8 at ``times`` (seconds; default ``[0]``) of a concept's
    object, or of several (the first in front). Random per video: background (dark) and, per object, its size
    and drift (:func:`_drift`); per frame: Gaussian pixel noise (σ = 4 levels). ``alpha`` ``[K, T]`` in [0, 1]:
    object k's opacity in frame t (default: always opaque)."""
    concepts = [concept(w) for w in (which if isinstance(which, (list, tuple)) else [which])]
    times = np.zeros(1) if times is None else np.asarray(times, dtype=np.float64)
    background = tuple(int(v) for v in rng.integers(0, 70, 3))
    paths = [_drift(rng, size) for _ in concepts]
    alpha = np.ones((len(concepts), len(times))) if alpha is None else alpha
    frames = np.empty((len(times), size, size, 3), np.uint8)
    k = 4  # draw at 4× and downsample: anti-aliased edges
    for i, t in enumerate(times):
        image = Image.new("RGB", (size * k, size * k), background)
        pen = ImageDraw.Draw(image)
        for c, (radius, centre), opaque in reversed(list(zip(concepts, paths, alpha, strict=True))):
            if opaque[i] == 1:
                _draw(pen, c, *centre(t) * k, radius * k)
            elif opaque[i] > 0:  # blended over what is drawn so far
                layer = image.copy()
                _draw(ImageDraw.Draw(layer), c, *centre(t) * k, radius * k)
                image = Image.blend(image, layer, float(opaque[i]))
                pen = ImageDraw.Draw(image)
        clean = np.asarray(image.resize((size, size), Image.Resampling.BOX))
        noisy = clean + rng.normal(0.0, 4.0, clean.shape)
        frames[i] = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    return frames


def _draw(pen: ImageDraw.ImageDraw, c: Concept, cx: float, cy: float, r: float) -> None:
    if c.shape == "circle":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=c.colour)
    elif c.shape == "ring":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], outline=c.colour, width=max(1, round(0.38 * r)))
    else:
        for points in _polygons(c.shape, cx, cy, r):
            pen.polygon(points, fill=c.colour)


def make_clip(config: WorldConfig, split: str, index: int, number: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip ``number`` of concept ``index`` in ``split``: frames ``[T, H, W, 3]`` uint8, audio float32 ``[N]``.
    With ``config.events``, each concept of :func:`clip_events` sounds and is seen only during its events."""
    c = concept(index)
    picture_rng, sound_rng = clip_rng(config, split, index, number)
    times = np.arange(config.num_frames) / config.fps
    if not config.events:
        frames = render_frames(c, picture_rng, config.size, times)
        audio = synthesize(c.f0, c.timbre, c.rhythm, config.num_samples, sound_rng, sample_rate=config.sample_rate)
        return frames, audio
    events = clip_events(config, split, index, number)
    names = [c.name] + sorted({e["concept"] for e in events} - {c.name})
    frames = render_frames(names, picture_rng, config.size, times, opacity(events, names, len(times), config.fps))
    return frames, _event_sound(config, events, names, sound_rng)


def clip_events(config: WorldConfig, split: str, index: int, number: int) -> list[dict]:
    """An event clip's events ``[{"concept", "onset_s", "seconds"}]`` by onset (:func:`.events.plan_events`): the
    clip's concept and, in a ``two_source_fraction`` of clips, a second one. ``[]`` unless ``config.events``."""
    if not config.events:
        return []
    rng = clip_rng(config, split, index, number, streams=3)[2]
    others = [n for n in CONCEPT_NAMES if n != concept(index).name]
    two, pick = rng.uniform() < config.two_source_fraction, int(rng.integers(len(others)))
    names = [concept(index).name] + ([others[pick]] if two else [])
    return plan_events(names, rng, max_events=config.max_events, lengths=config.event_frames,
                       slots=int(config.seconds * config.fps + 1e-9), fps=config.fps)


def _event_sound(config: WorldConfig, events: list[dict], names: list[str], rng: np.random.Generator) -> np.ndarray:
    """Each concept's tone gated to its events (the second :data:`SECOND_GAIN_DB` quieter), peaking as the
    first's, over a white floor at :data:`EVENT_NOISE_DBFS`: float32 ``[num_samples]``. Pulses are held steady:
    each would be an onset the picture cannot show; a tremolo (a smooth swing, no onsets) is kept."""
    n, rate = config.num_samples, config.sample_rate
    rhythms = {c: "steady" if RHYTHMS[c.rhythm][0] == "pulse" else c.rhythm for c in map(concept, names)}
    waves = [tone(c.f0, c.timbre, c.rhythm, n, rng, sample_rate=rate,
                  gain=event_gain(events, c.name, n, rate, lambda u, r=r: envelope(r, u, 0.0)))
             for c, r in rhythms.items()]
    mix = waves[0] + sum(w * 10 ** (rng.uniform(*SECOND_GAIN_DB) / 20) for w in waves[1:])
    mix *= np.abs(waves[0]).max() / max(np.abs(mix).max(), 1e-12)
    return (mix + rng.standard_normal(n) * 10 ** (EVENT_NOISE_DBFS / 20)).astype(np.float32)


# --- files -------------------------------------------------------------------------------------

def render_world(out_dir: str | os.PathLike, config: WorldConfig | None = None,
                 progress: Callable[[int, int], None] | None = None) -> Path:
    """Write the world under ``out_dir`` and return the path of its ``manifest.csv``.
    Layout: ``videos/{train,test}/<concept>_<i>.mp4``; ``manifest.csv`` (path,label,split; paths
    relative to it); ``world.json`` (config + concept table, and for event clips every clip's events under
    ``"clips"``, keyed by video path, as StampWorld's); ``captions/<concept>_<i>.png`` each
    with ``.txt`` holding its concept's training captions, one per line (the prior's folder source).
    ``progress(done, total)`` is called after each file."""
    config, progress = config or WorldConfig(), progress or (lambda done, total: None)
    out = Path(out_dir)
    began = time.perf_counter()
    videos = [(s, i, n) for s in ("train", "test") for i in range(len(CONCEPTS))
              for n in range(config.train_videos_per_concept if s == "train" else config.test_videos_per_concept)]
    pictures = [(i, n) for i in range(len(CONCEPTS)) for n in range(config.caption_images_per_concept)]
    total = len(videos) + len(pictures)
    rows, clips = ["path,label,split"], {}
    for split, index, number in videos:
        rel = f"videos/{split}/{CONCEPT_NAMES[index]}_{number}.mp4"
        write_mp4(out / rel, *make_clip(config, split, index, number), fps=config.fps, sample_rate=config.sample_rate)
        rows.append(f"{rel},{CONCEPT_NAMES[index]},{split}")
        clips[rel] = clip_events(config, split, index, number)
        progress(len(rows) - 1, total)
    for done, (index, number) in enumerate(pictures, len(videos) + 1):
        path = out / "captions" / f"{CONCEPT_NAMES[index]}_{number}.png"
        frame = render_frames(index, clip_rng(config, "captions", index, number)[0], config.size)[0]
        with atomic_output(path) as tmp:
            Image.fromarray(frame).save(tmp, format="PNG")
        write_bytes_atomic(path.with_suffix(".txt"), ("\n".join(captions(index, "train")) + "\n").encode())
        progress(done, total)
    write_bytes_atomic(out / "manifest.csv", ("\n".join(rows) + "\n").encode())
    write_json_atomic(out / "world.json", {"format": "clipsonic-world", "version": 1, "config": config.to_dict(),
                                           "concepts": [dataclasses.asdict(c) for c in CONCEPTS],
                                           **({"clips": clips} if config.events else {})})
    log.info("SonicWorld: %d videos and %d captioned pictures in %s (%.1f s)", len(videos), len(pictures), out,
             time.perf_counter() - began)
    return out / "manifest.csv"
