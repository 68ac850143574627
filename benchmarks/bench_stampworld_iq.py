"""Where does a finished StampWorld demo's IQ fall short? The demo's own IQ clips (evaluation/audio/iq/w*), named by
the shipped judge, split by whether the test video shows a picture the world also shows in training (10 concepts)
or one never seen there (the 14 whose package has a second picture: a dingo for the dog). A gap between the two is
what the world-CLIP carries to a new picture, not the mel model.

    python benchmarks/bench_stampworld_iq.py --demo /work/stampworld-demo3

With ``--clip DIR [DIR ...]``, it also measures world-CLIPs on the demo's dataset frames (one per clip): whether a
test frame lies nearest its own concept's training frames (by centroid and by 1-NN: what a mel model trained on
those frames can follow) and nearest its concept's held-out captions (zero-shot), split the same way.
"""

from __future__ import annotations

import argparse
import io
import json
import re
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from clipsonic.data.dataset import read_dataset_info
from clipsonic.data.loader import iter_raw_samples
from clipsonic.encoders import load_clip
from clipsonic.stampworld.assets import CONCEPT_NAMES, CONCEPTS
from clipsonic.stampworld.judge import StampJudge
from clipsonic.stampworld.world import captions

UNSEEN = {c.name for c in CONCEPTS if c.unseen_picture}


def dataset_frames(dataset: Path, split: str) -> tuple[list[Image.Image], np.ndarray]:
    """The frame kept with each clip of a split's shards, and the concept of its video."""
    samples = list(iter_raw_samples(read_dataset_info(dataset).shard_paths(split), fields=("jpg", "json")))
    frames = [Image.open(io.BytesIO(s["jpg"])).convert("RGB") for s in samples]
    return frames, np.array([json.loads(s["json"])["label"] for s in samples])


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def clip_rows(demo: Path, clips: list[Path]) -> None:
    """Per world-CLIP: test frames nearest their concept's training frames (centroid, 1-NN) and captions."""
    train, train_labels = dataset_frames(demo / "dataset", "train")
    test, labels = dataset_frames(demo / "dataset", "test")
    names = sorted(set(train_labels))
    new = np.isin(labels, list(UNSEEN))
    print("| world-CLIP | by | all | picture seen in training | picture unseen |\n|---|---|---|---|---|")
    for clip in clips:
        encoder = load_clip(clip, device="cpu")
        bank, queries = encoder.encode_images(train).numpy(), encoder.encode_images(test).numpy()  # unit rows
        centroids = unit(np.stack([bank[train_labels == n].mean(0) for n in names]))
        prompts = unit(np.stack([encoder.encode_texts(captions(CONCEPT_NAMES.index(n), "test")).numpy().mean(0)
                                 for n in names]))
        guesses = {"training-frame centroid": np.array(names)[(queries @ centroids.T).argmax(1)],
                   "nearest training frame": train_labels[(queries @ bank.T).argmax(1)],
                   "held-out captions (zero-shot)": np.array(names)[(queries @ prompts.T).argmax(1)]}
        for by, guess in guesses.items():
            right = guess == labels
            print(f"| {clip} | {by} | {right.mean():.3f} | {right[~new].mean():.3f} | {right[new].mean():.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, required=True, help="a finished `clipsonic demo --world stampworld` folder")
    parser.add_argument("--clip", type=Path, nargs="+", default=[], help="world-CLIP folders to measure too")
    args = parser.parse_args()
    if args.clip:
        clip_rows(args.demo, args.clip)
    judge = StampJudge.from_pretrained()
    print("| guidance | IQ | IQ, picture seen in training | IQ, picture unseen |\n|---|---|---|---|")
    for folder in sorted((args.demo / "evaluation" / "audio" / "iq").glob("w*"), key=lambda p: float(p.name[1:])):
        files = sorted(folder.glob("*.wav"))
        labels = [re.search(r"test_(.+?)_\d+_mp4", f.name).group(1) for f in files]  # videos/test/<concept>_<n>.mp4
        named = judge.classify(np.stack([sf.read(f, dtype="float32")[0] for f in files]), 16000)
        right = np.array([n == y for n, y in zip(named, labels, strict=True)])
        new = np.isin(labels, list(UNSEEN))
        print(f"| {folder.name[1:]} | {right.mean():.3f} ({len(files)}) | {right[~new].mean():.3f} ({(~new).sum()}) | "
              f"{right[new].mean():.3f} ({new.sum()}) |")


if __name__ == "__main__":
    main()
