"""How strict and how right is StampWorld's judge? Accuracy on the world's real test audio and reconstructions of it,
and how often it refuses impostors: pure tones at each concept's loudest frequency, tones that follow a real clip's
loudness envelope at that frequency (right rhythm, no timbre), and recordings of the package that are no concept.

    python benchmarks/bench_judge.py --world /tmp/stampworld [--judge DIR]   # a world rendered by python -m clipsonic.stampworld
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

from clipsonic.audio import MelConfig, griffin_lim, mel_spectrogram
from clipsonic.media import load_audio
from clipsonic.stampworld.assets import CONCEPTS, find_stamps, load_recording
from clipsonic.stampworld.judge import JUDGE_DIR, StampJudge, envelope_tone

RATE = 16000
# Recordings of tuxpaint-stamps-default that belong to no StampWorld concept (paths under the stamps root).
OUTSIDERS = ("animals/mammals/apes/gorilla.ogg", "animals/mammals/apes/chimp.ogg", "animals/mammals/bears/bear.ogg",
             "animals/mammals/aquatic/whale.ogg", "animals/mammals/aquatic/dolphin.ogg", "animals/birds/turkey.ogg",
             "animals/insects/bee.ogg", "animals/insects/mosquito.ogg", "animals/mammals/bovines/bull.ogg",
             "animals/mammals/camel/camel.ogg", "animals/marsupials/koala.ogg", "animals/mammals/hippopotamus.ogg",
             "animals/birds/vulture.ogg", "hobbies/music/wind/bassoon.ogg", "household/dishes/glass.ogg",
             "animals/mammals/rodents/mouse.ogg", "animals/birds/lark.ogg", "animals/mammals/equines/zebra.ogg")


def accuracy(answers: list[str | None], labels: list[str]) -> float:
    return float(np.mean([a == b for a, b in zip(answers, labels, strict=True)]))


def refused(answers: list[str | None]) -> float:
    return float(np.mean([a is None for a in answers]))


def loudest_frequency(audio: np.ndarray) -> float:
    """The frequency (Hz) of the largest bin of the magnitude spectrum, above 60 Hz."""
    spectrum = np.abs(np.fft.rfft(audio))
    freqs = np.fft.rfftfreq(len(audio), 1 / RATE)
    spectrum[freqs < 60] = 0
    return float(freqs[spectrum.argmax()])


def fit(audio: np.ndarray, n: int) -> np.ndarray:
    """``audio`` cut or tiled to ``n`` samples."""
    return np.resize(audio, n) if len(audio) < n else audio[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, required=True, help="a rendered StampWorld folder")
    parser.add_argument("--judge", type=Path, default=JUDGE_DIR)
    parser.add_argument("--stamps", type=Path)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    began = time.perf_counter()
    judge, stamps, mel = StampJudge.from_pretrained(args.judge), find_stamps(args.stamps), MelConfig()
    with open(args.world / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    real = np.stack([fit(load_audio(args.world / r["path"], RATE), 65536) for r in rows])  # AAC decoded
    labels = [r["label"] for r in rows]
    logmel = mel_spectrogram(torch.from_numpy(real), mel)
    gl = griffin_lim(logmel, mel, n_iter=32).numpy()
    freqs = {c.name: loudest_frequency(np.concatenate([load_recording(stamps, p, RATE) for p in c.recordings]))
             for c in CONCEPTS}
    sines = np.stack([0.3 * np.sin(2 * np.pi * freqs[c.name] * np.arange(65536) / RATE) for c in CONCEPTS])
    follow = np.stack([envelope_tone(a, freqs[label]) for a, label in zip(real, labels, strict=True)])
    outsiders = np.stack([fit(load_recording(stamps, p, RATE), 65536) for p in OUTSIDERS])
    answers = {"real": judge.classify(real, RATE), "griffin-lim": judge.classify(gl, RATE),
               "real 1.024 s": judge.classify(real[:, :16384 + 512], RATE)}
    numbers = {
        "test clips": len(rows), "concepts": len(CONCEPTS),
        "accuracy real test audio (AAC)": accuracy(answers["real"], labels),
        "accuracy griffin-lim 32 it": accuracy(answers["griffin-lim"], labels),
        "accuracy first 1.024 s": accuracy(answers["real 1.024 s"], labels),
        "refused pure tone at the concept's loudest frequency": refused(judge.classify(sines, RATE)),
        "refused tone following a test clip's envelope": refused(judge.classify(follow, RATE)),
        "refused outsider recordings": refused(judge.classify(outsiders, RATE)),
        "outsiders taken for": {Path(p).stem: a for p, a in zip(OUTSIDERS, judge.classify(outsiders, RATE),
                                                                    strict=True) if a},
        "mistakes (label → answer, real)": [f"{b} → {a}" for a, b in zip(answers["real"], labels, strict=True)
                                            if a != b],
        "seconds": round(time.perf_counter() - began, 1),
    }
    print(json.dumps(numbers, indent=1))
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=1) + "\n")


if __name__ == "__main__":
    main()
