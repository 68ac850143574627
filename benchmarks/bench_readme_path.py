"""Wall time of the README's "Your own videos" CPU path, command by command, exactly as written there (nothing
appended), on a folder of real video files: what a new user waits for on this machine.

The videos are generated (``--videos`` 4-s H.264/AAC clips of ``--kinds`` tones, each with its own colour) and the
CLIP is a tiny random one at the README's ``~/models/clip-vit-large-patch14`` ($HOME points into a temporary
folder): ViT-L/14 itself cannot be downloaded here, so preprocess's CLIP share is not measured (on a CPU it
dominates preprocess; the other commands use the CLIP only for a few queries).

    .venv/bin/python benchmarks/bench_readme_path.py                 # the full recipe: 2,000 training steps
    .venv/bin/python benchmarks/bench_readme_path.py --videos 20     # fewer videos (training time is the same)
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.media_files import PALETTE, write_video  # noqa: E402
from support.tiny_clip import make_tiny_clip  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"
CLI = str(Path(sys.executable).with_name("clipsonic"))


def cpu_block() -> list[list[str]]:
    section = README.read_text().split("## Your own videos", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section.split("**On a CPU**", 1)[1], re.S)[1]
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=60)
    parser.add_argument("--kinds", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        make_tiny_clip(home / "models" / "clip-vit-large-patch14")
        (home / "videos").mkdir()
        for i in range(args.videos):
            k = i % args.kinds
            write_video(home / "videos" / f"take{i:03d}.mp4", seconds=4.0, tone_hz=220.0 * (1 + k),
                        colour=lambda t, k=k: PALETTE[k % len(PALETTE)])
        write_video(home / "silent.mp4", seconds=4.0, audio_codec=None, colour=lambda t: PALETTE[1])
        env = {**os.environ, "HOME": str(home), "HF_HUB_OFFLINE": "1"}
        rows = []
        for argv in cpu_block():
            start = time.perf_counter()
            words = [str(home) + a[1:] if a.startswith("~/") else a for a in argv[1:]]  # as the shell expands ~
            done = subprocess.run([CLI, *words], cwd=home, env=env, capture_output=True, text=True)
            rows.append((" ".join(argv[:2]), time.perf_counter() - start))
            print(f"{rows[-1][0]}: {rows[-1][1]:.1f} s", flush=True)
            if done.returncode:
                raise SystemExit(f"{shlex.join(argv)} failed:\n{done.stderr[-3000:]}")
        shutil.rmtree(home / "videos")
    print("\n| command | wall time |\n| --- | ---: |\n" + "\n".join(f"| `{c}` | {t:.0f} s |" for c, t in rows)
          + f"\n| total ({args.videos} videos) | {sum(t for _, t in rows):.0f} s |")


if __name__ == "__main__":
    main()
