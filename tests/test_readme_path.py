"""The README's "Your own videos" commands, verbatim, on real video files: an unlabeled flat folder (preprocess →
train → a text mode without a prior → generate → evaluate) and a labeled train/ + test/ folder (… → train-prior →
attach prior → pd). Only tiny settings are appended (TINY); the CLIP folder is the tiny CLIP at the README's path."""

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
from support.media_files import PALETTE, write_video

from clipsonic.cli import main
from clipsonic.export import read_model_index
from clipsonic.media import load_audio

README = Path(__file__).resolve().parent.parent / "README.md"
# Appended to each command: the smallest run that still goes through every step.
TINY = {"preprocess": ["--workers", "0"], "train": ["--max-steps", "3", "--batch-size", "4", "--sample-every", "0"],
        "train-prior": ["--max-steps", "3", "--batch-size", "8"], "generate": ["--steps", "2"],
        "evaluate": ["--steps", "2", "--num-clips", "2"]}


def readme_blocks(marker: str) -> list[list[list[str]]]:
    """The commands of the ```bash block after ``marker`` in "Your own videos": per line, its `&&` parts as argv."""
    section = README.read_text().split("## Your own videos", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section.split(marker, 1)[1], re.S)[1]
    return [[shlex.split(part, comments=True) for part in line.split("&&")] for line in block.splitlines() if line]


def run_block(marker: str) -> list[str]:
    ran = []
    for line in readme_blocks(marker):
        for argv in line:
            assert argv[0] == "clipsonic", argv
            assert main([*argv[1:], *TINY.get(argv[1], [])]) == 0, argv
            ran.append(argv[1])
    return ran


@pytest.fixture
def home(tmp_path, monkeypatch, tiny_clip_dir):
    """cwd and $HOME in tmp_path, with the tiny CLIP where the README's ~/models/clip-vit-large-patch14 points."""
    shutil.copytree(tiny_clip_dir, tmp_path / "models" / "clip-vit-large-patch14")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def video(path: Path, k: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, seconds=2.1, size=(32, 32), tone_hz=220.0 * (1 + k), colour=lambda t: PALETTE[k])


def test_unlabeled_folder_on_a_cpu(home):
    for i in range(12, 22):  # names whose hash split (--test-fraction 0.1) puts one, take17, in the test split
        video(home / "videos" / f"take{i:02d}.mp4", i % 4)
    write_video(home / "silent.mp4", seconds=1.0, size=(32, 32), audio_codec=None, colour=lambda t: PALETTE[1])
    assert run_block("**On a CPU**") == ["preprocess", "train", "generate", "generate", "evaluate"]
    pipeline = home / "runs" / "mine" / "pipeline"
    assert read_model_index(pipeline).components["clip"] == "clip"  # self-contained
    assert (home / "dog.wav").stat().st_size > 1000 and (home / "with_sound.mp4").stat().st_size > 1000
    assert json.loads((home / "eval" / "results.json").read_text())["table"] == ["iq/w1.5", "reconstruction",
                                                                               "reference"]


def test_labeled_train_test_folders_with_a_prior(home):
    for split, n in (("train", 3), ("test", 1)):
        for k, label in enumerate(("dog", "cat")):
            for i in range(n):
                video(home / "videos" / split / label / f"{label}{i}.mp4", k)
    assert run_block("**Labeled videos**") == ["preprocess", "train", "train-prior", "attach", "generate", "evaluate"]
    index = read_model_index(home / "runs" / "mine" / "pipeline")
    assert index.components["prior"] == "prior" and index.components["clip"] == "clip"
    assert (home / "dog.wav").stat().st_size > 1000
    assert {"iq/w1.5", "zs/w1.5", "pd/w1.5"} <= set(json.loads((home / "eval" / "results.json").read_text())["table"])


def test_sound_that_follows_the_picture(home):
    """The time-aligned block: frame sequences, a film UNet, and a silent video whose picture changes halfway
    generating audio exactly as long as the video."""
    for i in range(6):
        video(home / "videos" / f"take{i:02d}.mp4", i % 4)
    write_video(home / "silent.mp4", seconds=1.5, size=(32, 32), audio_codec=None,
                colour=lambda t: PALETTE[0] if t < 0.75 else PALETTE[2])
    assert run_block("**Sound that follows the picture**") == ["preprocess", "train", "generate"]
    index = read_model_index(home / "runs" / "sync" / "pipeline")
    assert index.training["frame_rate"] == 8.0
    sound = load_audio(home / "with_sound.mp4", sample_rate=16000)
    assert abs(len(sound) - 1.5 * 16000) <= 1024  # the video's length, to within one AAC frame
