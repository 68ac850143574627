"""StampWorld's judge: which concept's recording is this clip? A small CNN on the whole log-mel.

It hears what the SonicWorld oracle's matched filter ignores: timbre (the spectrum's shape in every frame),
envelope and rhythm (the time axis, pooled by both its mean and its max). It is trained on the world's training
audio only (fresh renders of the train split past its videos' numbers, :func:`clipsonic.stampworld.world.make_sound`)
plus an extra *none* class of synthetic impostors (pure and harmonic tones, steady or pulsed, and coloured noise);
a clip whose best concept has probability below ``min_probability`` also gets None. Its input is the log-mel less
its own maximum, so a clip's loudness does not matter, cropped at random to the lengths it will judge.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soxr
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from clipsonic.audio import MelConfig, mel_spectrogram
from clipsonic.config import Config
from clipsonic.errors import ClipsonicError
from clipsonic.files import atomic_directory, read_versioned_json, write_json_atomic
from clipsonic.sonicworld.world import RHYTHMS, TIMBRES, synthesize
from clipsonic.stampworld.assets import CONCEPT_NAMES, CONCEPTS, find_stamps, load_recording
from clipsonic.stampworld.world import StampWorldConfig, background_noise, clip_rngs, make_sound

log = logging.getLogger(__name__)

FORMAT = ("clipsonic-stampworld-judge", 1)  # heads the judge's config.json
NONE = "none"  # the impostor class
FLOOR = 12.0  # natural-log units below the clip's loudest bin that the judge still hears (~52 dB)
JUDGE_DIR = Path(__file__).resolve().parent / "judge_weights"  # the shipped judge
_FIRST_NUMBER = 100_000  # train-split clip numbers the judge renders: far past any rendered video's
# Recordings of tuxpaint-stamps-default that belong to no concept, heard as impostors in training. Close kin of a
# concept (ram, gander, drake, zebra, fox) are left out; benchmarks/bench_judge.py tests on another, disjoint set.
TRAIN_OUTSIDERS = tuple(f"{folder}/{name}.ogg" for folder, names in (
    ("animals/birds", ("tucan", "quetzal", "nandou", "heron_greatblue_flying", "blackbird")),
    ("animals/insects", ("grasshopper", "hornet", "xanthia")), ("animals/lizards", ("iguana",)),
    ("animals/mammals/aquatic", ("orca", "sea_lion")), ("animals/mammals", ("badger", "ferret", "giraffe")),
    ("animals/mammals/bovines", ("bison",)), ("animals/mammals/deer", ("caribou", "deer", "doe")),
    ("animals/mammals/rodents", ("beaver", "rabbit", "squirrel")), ("animals/marsupials", ("wombat",)),
    ("household", ("Washing-machine", "kettle", "rubberduck", "toilet", "vacuum_cleaner")),
    ("household/tools", ("hammer", "mallet_metal", "saw")), ("household/dishes", ("bottle",)),
    ("household/arttools", ("scissors_small_closed",)), ("hobbies", ("camera_35mm",)),
    ("naturalforces", ("lightningbolt",)), ("seasonal/christmas", ("gift", "santahat", "hard_candy")),
    ("seasonal/halloween", ("bat_left", "ghost", "spider")), ("seasonal/hanukkah", ("dreydl-nun",)),
    ("seasonal/newyears", ("fireworks",)), ("town/flags", ("checkeredflag",)), ("food/fruit", ("apple_red",)),
    ("vehicles/ship/cartoon", ("bathyscape",))) for name in names)


@dataclasses.dataclass(frozen=True)
class JudgeConfig(Config):
    """The judge's size and training (defaults: a few minutes on 2 CPU cores)."""

    clips_per_concept: int = 160  # training renders per concept
    # "none" clips, in equal thirds: synthetic tones and noise; tones following a concept clip's loudness envelope
    # (the rhythm without the timbre); excerpts of recordings of no concept (``outsiders``)
    impostors: int = 960
    outsiders: tuple[str, ...] = TRAIN_OUTSIDERS  # paths under the stamps root; () leaves that third synthetic
    steps: int = 1200
    batch_size: int = 64
    lr: float = 2e-3
    width: int = 32  # channels of the first block; doubled twice
    crop_frames: tuple[int, ...] = (32, 64, 128)  # 1.024, 2.048, 4.096 s: the lengths it will judge
    min_probability: float = 0.5  # a verdict below this probability is None
    seed: int = 0


class JudgeNet(nn.Module):
    """Log-mel ``[B, n_mels, F]`` (F ≥ 8) → logits ``[B, classes]``: three conv blocks that halve both axes, the
    frequency axis averaged away, then the time axis pooled by mean and max (steady sounds and single events)."""

    def __init__(self, classes: int, width: int = 32) -> None:
        super().__init__()
        layers, channels = [], 1
        for out in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d(2)]
            channels = out
        self.features = nn.Sequential(*layers, nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(2 * channels, classes)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        x = logmel - logmel.amax(dim=(-2, -1), keepdim=True)  # loudness-free
        x = (x.clamp(min=-FLOOR) + FLOOR / 2) / (FLOOR / 2)  # [-1, 1]
        h = self.features(x[:, None]).mean(dim=2)  # [B, C, F/8]
        return self.head(torch.cat([h.mean(dim=-1), h.amax(dim=-1)], dim=-1))


class StampJudge:
    """The relevance classifier of StampWorld for ``evaluate`` (:meth:`classify`); :meth:`from_pretrained` loads it."""

    name = "stampworld"

    def __init__(self, net: JudgeNet, labels: tuple[str, ...], config: JudgeConfig) -> None:
        self.net, self.labels, self.config = net.eval(), labels, config
        self.mel_config = MelConfig()

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike = JUDGE_DIR) -> StampJudge:
        directory = Path(directory)
        if not (directory / "model.safetensors").is_file():
            raise ClipsonicError(f"{directory} holds no judge (model.safetensors); train one with "
                                 "`python -m clipsonic.stampworld.judge --out DIR`")
        meta = read_versioned_json(directory / "config.json", *FORMAT)
        config = JudgeConfig.from_dict(meta["config"])
        net = JudgeNet(len(meta["labels"]) + 1, config.width)
        net.load_state_dict(load_file(directory / "model.safetensors"))
        return cls(net, tuple(meta["labels"]), config)

    def save_pretrained(self, directory: str | os.PathLike, report: dict | None = None,
                        world: StampWorldConfig | None = None) -> Path:
        """Weights (safetensors) and ``config.json``: labels, this config, the world it was trained on, ``report``."""
        with atomic_directory(directory) as staging:
            save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, staging / "model.safetensors")
            write_json_atomic(staging / "config.json", {
                "format": FORMAT[0], "version": FORMAT[1], "labels": list(self.labels), "config": self.config.to_dict(),
                "world": None if world is None else world.to_dict(), "report": report or {}})
        return Path(directory)

    @staticmethod
    def trained_as(directory: str | os.PathLike, world: StampWorldConfig, config: JudgeConfig) -> bool:
        """Whether the judge in ``directory`` was trained on ``world`` with ``config`` (then training one again would
        make the same judge, bit for bit on the same machine)."""
        path = Path(directory) / "config.json"
        if not path.is_file():
            return False
        meta = read_versioned_json(path, *FORMAT)
        return meta.get("world") == world.to_dict() and meta.get("config") == config.to_dict()

    @torch.no_grad()
    def probabilities(self, logmels: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[B, K + 1]`` (the last: none) of log-mels ``[B, n_mels, F]``."""
        return self.net(torch.as_tensor(logmels, dtype=torch.float32)).softmax(dim=-1)

    def classify_mels(self, logmels: torch.Tensor) -> list[str | None]:
        """Concept name per clip, None for an impostor or a verdict under ``min_probability``."""
        best = self.probabilities(logmels).max(dim=-1)
        return [self.labels[k] if k < len(self.labels) and p >= self.config.min_probability else None
                for p, k in zip(best.values.tolist(), best.indices.tolist(), strict=True)]

    def classify(self, audio: np.ndarray, sample_rate: int) -> list[str | None]:
        """Concept name per clip of ``audio`` ``[B, samples]`` (≥ 0.256 s) at any rate."""
        rate = self.mel_config.sample_rate
        audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))
        if sample_rate != rate:
            audio = np.stack([soxr.resample(a, sample_rate, rate) for a in audio])
        if audio.shape[1] < 8 * self.mel_config.hop_length:
            raise ClipsonicError(f"the judge needs clips of at least {8 * self.mel_config.hop_length / rate} s, "
                                 f"got {audio.shape[1] / rate:.3f} s")
        return self.classify_mels(mel_spectrogram(torch.from_numpy(audio), self.mel_config))


# --- training ----------------------------------------------------------------------------------

def impostor(rng: np.random.Generator, num_samples: int, sample_rate: int = 16000) -> np.ndarray:
    """One synthetic clip that is no concept: a pure or harmonic tone (80 Hz-4 kHz, steady, pulsed or tremolo;
    half of them also gated on and off with hard edges at 1-8 Hz, whose clicks are broadband like a bow's or a
    beak's attack), or coloured noise, with quiet background noise: float32 ``[num_samples]``."""
    kind = rng.integers(3)
    if kind == 2:
        audio = background_noise(num_samples, rng, sample_rate) * 10 ** (rng.uniform(10, 30) / 20)
    else:
        timbre = "sine" if kind == 0 else str(rng.choice(sorted(TIMBRES)))
        audio = synthesize(float(np.exp(rng.uniform(np.log(80), np.log(4000)))), timbre,
                           str(rng.choice(sorted(RHYTHMS))), num_samples, rng, sample_rate=sample_rate)
        rate, duty, phase = rng.uniform(1, 8), rng.uniform(0.2, 0.8), rng.uniform()
        if rng.uniform() < 0.5:
            audio = audio * ((np.arange(num_samples) / sample_rate * rate + phase) % 1.0 < duty)
    return (audio + background_noise(num_samples, rng, sample_rate)).astype(np.float32)


def envelope_tone(audio: np.ndarray, frequency: float, sample_rate: int = 16000) -> np.ndarray:
    """A pure tone at ``frequency`` following ``audio``'s loudness envelope (10-ms RMS frames): the right
    rhythm and level, no timbre. float32 like ``audio``."""
    hop = sample_rate // 100
    frames = np.sqrt(np.convolve(np.asarray(audio, np.float64) ** 2, np.ones(hop) / hop, mode="same"))
    t = np.arange(len(audio)) / sample_rate
    return (np.sqrt(2) * frames * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def outsider(rng: np.random.Generator, stamps: Path, recordings: tuple[str, ...], num_samples: int,
             sample_rate: int = 16000) -> np.ndarray:
    """An excerpt of a random recording of ``recordings`` at a random onset, peak -6 ± 3 dBFS, over background
    noise: float32 ``[num_samples]``."""
    x = load_recording(stamps, recordings[rng.integers(len(recordings))], sample_rate)
    length = min(len(x), num_samples)
    offset, onset = rng.integers(len(x) - length + 1), rng.integers(num_samples - length + 1)
    audio = np.zeros(num_samples)
    audio[onset:onset + length] = x[offset:offset + length] / max(float(np.abs(x).max()), 1e-6)
    audio *= 10 ** (rng.uniform(-9, -3) / 20)
    return (audio + background_noise(num_samples, rng, sample_rate)).astype(np.float32)


def training_set(world: StampWorldConfig, config: JudgeConfig, stamps: Path,
                 progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mels ``[N, n_mels, F]`` and labels ``[N]`` (K = none): fresh train-split renders of every concept
    (a second source in ``world.two_source_fraction`` of them, as in the videos) and the impostors."""
    names = world.concept_names
    wavs, labels = [], []
    total = len(names) * config.clips_per_concept + config.impostors
    for k, name in enumerate(names):
        index = CONCEPT_NAMES.index(name)
        for n in range(config.clips_per_concept):
            plan, _, sound = clip_rngs(world, "train", index, _FIRST_NUMBER + n)
            concepts = [CONCEPTS[index]]
            if plan.uniform() < world.two_source_fraction and len(names) > 1:
                other = [m for m in names if m != name][plan.integers(len(names) - 1)]
                concepts.append(CONCEPTS[CONCEPT_NAMES.index(other)])
            wavs.append(make_sound(concepts, sound, stamps, world)[0])
            labels.append(k)
            if progress:
                progress(len(wavs), total)
    rng, concept_wavs = np.random.default_rng([world.seed, config.seed, 7]), len(wavs)
    for i in range(config.impostors):
        kind = i % 3 if config.outsiders else i % 2
        if kind == 1:  # the rhythm of a concept clip, the timbre of a tone
            tone = envelope_tone(wavs[rng.integers(concept_wavs)], float(np.exp(rng.uniform(np.log(80), np.log(4000)))))
            wavs.append(tone + background_noise(world.num_samples, rng, world.sample_rate).astype(np.float32))
        elif kind == 2:
            wavs.append(outsider(rng, stamps, config.outsiders, world.num_samples, world.sample_rate))
        else:
            wavs.append(impostor(rng, world.num_samples, world.sample_rate))
        labels.append(len(names))
    mels = mel_spectrogram(torch.from_numpy(np.stack(wavs)), MelConfig(sample_rate=world.sample_rate))
    return mels, torch.tensor(labels)


def train_judge(out_dir: str | os.PathLike, stamps: str | os.PathLike | None = None,
                world: StampWorldConfig | None = None, config: JudgeConfig | None = None, *,
                progress: Callable[[str, int, int], None] | None = None) -> StampJudge:
    """Render the training set, train the judge (AdamW, one cycle: warm-up then cosine decay) and save it to
    ``out_dir``; the world's default concepts and settings make the shipped judge (:data:`JUDGE_DIR`)."""
    world, config = world or StampWorldConfig(), config or JudgeConfig()
    stamps = find_stamps(stamps)
    missing = next((p for p in config.outsiders if not (stamps / p).is_file()), None)
    if missing:
        raise ClipsonicError(f"{stamps / missing}: the judge's outsider recording is missing; install "
                             "tuxpaint-stamps-default whole, or train with JudgeConfig(outsiders=())")
    began = time.perf_counter()
    mels, labels = training_set(world, config, stamps, lambda d, t: progress and progress("render", d, t))
    gen = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        net = JudgeNet(len(world.concept_names) + 1, config.width)
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, config.lr, total_steps=config.steps, pct_start=0.1)
    net.train()
    for step in range(config.steps):
        rows = torch.randint(len(labels), (config.batch_size,), generator=gen)
        crop = config.crop_frames[int(torch.randint(len(config.crop_frames), (1,), generator=gen))]
        start = int(torch.randint(mels.shape[-1] - crop + 1, (1,), generator=gen))
        loss = F.cross_entropy(net(mels[rows, :, start:start + crop]), labels[rows])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if progress:
            progress("train", step + 1, config.steps)
    judge = StampJudge(net, world.concept_names, config)
    judge.save_pretrained(out_dir, {"train_clips": len(labels), "seconds": round(time.perf_counter() - began, 1)},
                          world)
    log.info("StampWorld judge: %d clips, %d steps in %.0f s → %s", len(labels), config.steps,
             time.perf_counter() - began, out_dir)
    return judge


def main(argv: list[str] | None = None) -> int:
    """``python -m clipsonic.stampworld.judge --out DIR [--stamps DIR]``: train the default judge (15-20 min, 2 cores)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m clipsonic.stampworld.judge", description=main.__doc__)
    parser.add_argument("--out", type=Path, required=True, help="the judge's folder (replaced whole)")
    parser.add_argument("--stamps", type=Path, help="Tux Paint's stamps folder (default: the Debian package's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        train_judge(args.out, args.stamps)
    except ClipsonicError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
