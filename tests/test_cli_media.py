"""`clipsonic --version`, `clipsonic mel`, `clipsonic resynth` on real files, and their errors."""

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from support.media_files import write_video

from clipsonic import __version__
from clipsonic.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "clipsonic", *args], capture_output=True, text=True)


def test_version():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"clipsonic {__version__}"


def test_mel_png_and_resynth_wav(tmp_path):
    video = write_video(tmp_path / "v.mp4", seconds=2.0, tone_hz=440.0, sample_rate=48000)
    assert main(["mel", str(video), "-o", str(tmp_path / "mel.png")]) == 0
    with Image.open(tmp_path / "mel.png") as im:
        assert im.size[0] > 200 and im.size[1] > 150
    assert main(["resynth", str(video), "--iters", "16", "--start", "0.5", "--duration", "1.024",
                 "-o", str(tmp_path / "gl.wav")]) == 0
    wav, sr = sf.read(tmp_path / "gl.wav")
    assert sr == 16000 and wav.shape == (16384,)
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    assert abs(np.fft.rfftfreq(len(wav), 1 / sr)[spectrum.argmax()] - 440.0) < 30


def test_bad_inputs_give_one_line_errors(tmp_path):
    (tmp_path / "notes.mp4").write_text("not a video")
    for args in (["mel", str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "x.png")],
                 ["resynth", str(tmp_path / "notes.mp4"), "-o", str(tmp_path / "x.wav")]):
        r = run(*args)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith(f"clipsonic {args[0]}: error:") and args[1].rsplit("/", 1)[1] in last
    assert not (tmp_path / "x.wav").exists() and not (tmp_path / "x.png").exists()
    r = run("mel")
    assert r.returncode == 2 and "required" in r.stderr


def test_top_level_help_lists_every_command(capsys):
    from clipsonic.cli import build_parser

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    commands = build_parser()._subparsers._group_actions[0].choices  # every registered command
    for name in ("mel", "resynth", "preprocess", "train", "train-prior", "train-vocoder", "generate", "vocode",
                 "evaluate", "listening-test", "demo"):
        assert name in commands and name in text, name
    for name in commands:  # every sub-command's own --help formats (argparse %-formats help strings)
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0, name
