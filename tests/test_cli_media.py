"""`clipsonic --version`, `clipsonic mel`, `clipsonic resynth` on real files, their errors, the command list
and the hidden old spellings."""

import argparse
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


def test_bad_inputs_give_one_line_errors(tmp_path, capsys):
    # in-process: main() is what the entry point runs (test_version covers `python -m clipsonic`)
    (tmp_path / "notes.mp4").write_text("not a video")
    for args in (["mel", str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "x.png")],
                 ["resynth", str(tmp_path / "notes.mp4"), "-o", str(tmp_path / "x.wav")]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"clipsonic {args[0]}: error:") and args[1].rsplit("/", 1)[1] in last
    assert not (tmp_path / "x.wav").exists() and not (tmp_path / "x.png").exists()
    with pytest.raises(SystemExit) as exit_:
        main(["mel"])
    assert exit_.value.code == 2 and "required" in capsys.readouterr().err


def test_top_level_help_lists_every_command(capsys):
    from clipsonic.cli import build_parser

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    commands = build_parser()._subparsers._group_actions[0].choices  # every registered command
    for name in ("mel", "preprocess", "train", "train-prior", "train-vocoder", "export", "attach", "generate",
                 "vocode", "evaluate", "listening-test", "demo"):
        assert name in commands and name in text, name
    for name in ("resynth", "prior", "vocoder"):  # old spellings: hidden aliases, not listed
        assert name not in commands and f"\n    {name} " not in text, name
    for name in commands:  # every sub-command's own --help formats (argparse %-formats help strings)
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0, name
        assert "examples:" in capsys.readouterr().out, name


@pytest.mark.parametrize("old, new", [
    (["resynth", "in.wav"], "vocode --griffin-lim --iters 64 in.wav"),
    (["train", "export", "run"], "export run"),
    (["vocoder", "export", "run", "--checkpoint", "run/checkpoints/step-00000002", "-o", "v"], "export run"),
    (["prior", "attach", "p", "r"], "attach prior p r"),
    (["vocoder", "attach", "p", "v"], "attach vocoder p v"),
    (["preprocess", "merge", "data"], "preprocess --merge data"),
])
def test_old_spellings_still_parse_and_say_what_replaces_them(old, new, monkeypatch, caplog):
    seen = {}
    monkeypatch.setattr("argparse.ArgumentParser.parse_args",
                        lambda self, argv: seen.setdefault("argv", argv) and argparse.Namespace(func=None, quiet=True))
    monkeypatch.setattr("argparse.ArgumentParser.print_help", lambda self: None)
    main(["-q", *old])
    assert " ".join(seen["argv"]).startswith(f"-q {new}")
    assert f"`clipsonic {' '.join(old[:2]) if old[0] != 'resynth' else 'resynth'}` is deprecated" in caplog.text


def test_old_flag_spellings_are_hidden_aliases(caplog):
    from clipsonic.cli import build_parser
    from clipsonic.cli.options import overrides

    args = build_parser().parse_args(["generate", "--text", "a", "--guidance", "3"])
    assert args.guidance_scale == 3.0 and "--guidance is deprecated; use --guidance-scale" in caplog.text
    args = build_parser().parse_args(["export", "run", "--checkpoint", "run/checkpoints/step-00000002", "--output", "o"])
    assert args.step == 2 and str(args.out) == "o"
    args = build_parser().parse_args(["train-prior", "d", "--out", "r", "--template", "a, {label}", "--template", "b"])
    assert overrides(args) == {"train": {"templates": ("a, {label}", "b")}}
    args = build_parser().parse_args(["train", "d", "--out", "r", "--no-export"])
    assert overrides(args) == {"train": {"export_at_end": False}}
    args = build_parser().parse_args(["preprocess", "v", "--out", "d", "--stride", "2", "--group-size", "4"])
    assert overrides(args) == {"options": {"clips": {"stride_seconds": 2.0}, "encode_group": 4}}
    args = build_parser().parse_args(["train-vocoder", "d", "--out", "r", "--discriminator", "mbd"])
    assert overrides(args) == {"discriminator": {"kind": "mbd"}}
