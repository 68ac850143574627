"""``clipsonic generate`` end to end on the tiny random pipeline: outputs, batching, bad input."""

from __future__ import annotations

import shutil

import av
import numpy as np
import pytest
import soundfile
from support.media_files import write_audio, write_video
from support.tiny_pipeline import TINY_FRAMES, tiny_pipeline_dir  # noqa: F401

from clipsonic.cli import main

HOP = 512
FAST = ["--steps", "2"]


def _run(capsys, *argv):
    rc = main(["-q", "generate", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_help_lists_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "--negative" in text and "--prompts" in text


def test_text_to_wav_with_mel_image(tiny_pipeline_dir, tmp_path, capsys):  # noqa: F811
    target = tmp_path / "dog.wav"
    rc, out, err = _run(capsys, "--model", str(tiny_pipeline_dir), "--text", "a dog barking", "-o", str(target),
                        "--save-mel", "--seed", "3", *FAST)
    assert rc == 0, err
    assert out.split() == [str(target), str(tmp_path / "dog.png")]
    assert "Griffin-Lim" in err  # the one-line fallback notice
    audio, rate = soundfile.read(target)
    assert rate == 16000 and audio.shape == (TINY_FRAMES * HOP,)
    assert (tmp_path / "dog.png").stat().st_size > 1000


def test_prompt_file_batches_equal_single_calls(tiny_pipeline_dir, tmp_path, capsys):  # noqa: F811
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# sounds\na dog barking\n\nrain on a roof\na violin\n")
    rc, out, err = _run(capsys, "--model", str(tiny_pipeline_dir), "--prompts", str(prompts), "-o",
                        str(tmp_path / "out"), "--batch-size", "2", "--seed", "5", "--mode", "zs", *FAST)
    assert rc == 0, err
    files = [p.split("/")[-1] for p in out.split()]
    assert files == ["000-a-dog-barking.wav", "001-rain-on-a-roof.wav", "002-a-violin.wav"]
    rc, _, err = _run(capsys, "--model", str(tiny_pipeline_dir), "--text", "a violin", "-o", str(tmp_path / "v.wav"),
                      "--seed", "7", "--mode", "zs", *FAST)
    assert rc == 0, err
    single, _ = soundfile.read(tmp_path / "v.wav")
    batched, _ = soundfile.read(tmp_path / "out" / "002-a-violin.wav")
    assert np.allclose(single, batched, atol=2e-3)  # 16-bit files of the same audio


def test_video_to_mp4_keeps_the_picture_and_adds_sound(tiny_pipeline_dir, tmp_path, capsys):  # noqa: F811
    video = write_video(tmp_path / "silent.mp4", seconds=1.3, fps=25, size=(32, 32), audio_codec=None)
    target = tmp_path / "with_sound.mp4"
    rc, out, err = _run(capsys, "--model", str(tiny_pipeline_dir), "--video", str(video), "-o", str(target), *FAST)
    assert rc == 0, err
    with av.open(str(video)) as a, av.open(str(target)) as b:
        assert [bytes(p) for p in a.demux(a.streams.video[0]) if p.size] == \
               [bytes(p) for p in b.demux(b.streams.video[0]) if p.size]
    with av.open(str(target)) as b:
        seconds = sum(f.samples for f in b.decode(b.streams.audio[0])) / b.streams.audio[0].rate
    assert seconds == pytest.approx(1.28, abs=0.07)  # the video's 32 frames at 25 fps, within one AAC frame
    rc, out, err = _run(capsys, "--model", str(tiny_pipeline_dir), "--video", str(video), "-o", str(tmp_path / "d"),
                        "--num-samples", "2", *FAST)
    assert rc == 0, err
    assert sorted(p.split("/")[-1] for p in out.split()) == ["000-silent-mp4.mp4", "000-silent-mp4.wav",
                                                             "001-silent-mp4.mp4", "001-silent-mp4.wav"]
    assert soundfile.info(str(tmp_path / "d" / "000-silent-mp4.wav")).frames == int(round(1.28 * 16000))


@pytest.mark.parametrize("args, message", [
    ([], "no query"),
    (["--text", "a", "--image", "x.png"], "one kind"),
    (["--text", "   "], "empty"),
    (["--text", "a", "--guidance-scale", "-1"], "guidance"),
    (["--text", "a", "--steps", "0"], "num_inference_steps"),
    (["--text", "a", "--seconds", "0"], "seconds"),
    (["--text", "a", "--seconds", "100000"], "limit"),
    (["--text", "a", "--mode", "iq"], "does not take a text"),
    (["--image", "{tmp}/bad.png"], "not a readable image"),
    (["--video", "{tmp}/sound.wav"], "no video stream"),
    (["--text", "a", "--text", "b", "-o", "{tmp}/one.wav"], "one file"),
    (["--text", "a", "-o", "{tmp}/file.txt/out.wav"], "not a writable directory"),
    (["--text", "a", "-o", "{tmp}/x.mp4"], "not a video"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_pipeline_dir, tmp_path, capsys, args, message):  # noqa: F811
    (tmp_path / "bad.png").write_bytes(b"garbage")
    (tmp_path / "file.txt").write_text("x")
    write_audio(tmp_path / "sound.wav", seconds=0.3)
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = ["--model", str(tiny_pipeline_dir), *FAST, *[a.replace("{tmp}", str(tmp_path)) for a in args]]
    if "-o" not in args:
        argv += ["-o", str(tmp_path / "out")]
    rc, out, err = _run(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("note:")]
    assert rc == 2 and len(lines) == 1 and message in lines[0] and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_broken_or_foreign_pipelines_are_refused(tiny_pipeline_dir, tmp_path, capsys):  # noqa: F811
    from support.tiny_clip import make_tiny_clip

    broken = shutil.copytree(tiny_pipeline_dir, tmp_path / "broken")
    (broken / "unet" / "model.safetensors").unlink()
    rc, _, err = _run(capsys, "--model", str(broken), "--text", "a", "-o", str(tmp_path / "o.wav"), *FAST)
    assert rc == 2 and "model.safetensors" in err
    other = make_tiny_clip(tmp_path / "other_clip", seed=1)
    rc, _, err = _run(capsys, "--model", str(tiny_pipeline_dir), "--clip-model", str(other), "--text", "a",
                      "-o", str(tmp_path / "o.wav"), *FAST)
    assert rc == 2 and "trained with" in err and str(other) in err
    assert not (tmp_path / "o.wav").exists()
