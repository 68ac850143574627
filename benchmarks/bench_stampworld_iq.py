"""Where does a finished StampWorld demo's IQ fall short? The demo's own IQ clips (evaluation/audio/iq/w*), named by
the shipped judge, split by whether the test video shows a picture the world also shows in training (11 concepts)
or one never seen there (the 13 whose package has a second picture: a dingo for the dog). A gap between the two is
what the world-CLIP carries to a new picture, not the mel model.

    python benchmarks/bench_stampworld_iq.py --demo /work/stampworld-demo3
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import soundfile as sf

from clipsonic.stampworld.assets import CONCEPTS
from clipsonic.stampworld.judge import StampJudge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, required=True, help="a finished `clipsonic demo --world stampworld` folder")
    args = parser.parse_args()
    judge = StampJudge.from_pretrained()
    unseen = {c.name for c in CONCEPTS if set(c.test_pictures) - set(c.train_pictures)}
    print("| guidance | IQ | IQ, picture seen in training | IQ, picture unseen |\n|---|---|---|---|")
    for folder in sorted((args.demo / "evaluation" / "audio" / "iq").glob("w*"), key=lambda p: float(p.name[1:])):
        files = sorted(folder.glob("*.wav"))
        labels = [re.search(r"test_(.+?)_\d+_mp4", f.name).group(1) for f in files]  # videos/test/<concept>_<n>.mp4
        named = judge.classify(np.stack([sf.read(f, dtype="float32")[0] for f in files]), 16000)
        right = np.array([n == y for n, y in zip(named, labels, strict=True)])
        new = np.array([y in unseen for y in labels])
        print(f"| {folder.name[1:]} | {right.mean():.3f} ({len(files)}) | {right[~new].mean():.3f} ({(~new).sum()}) | "
              f"{right[new].mean():.3f} ({new.sum()}) |")


if __name__ == "__main__":
    main()
