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
from clipsonic.pipeline import DEFAULT_SAMPLER

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


# --- sidecars and --from (reproducible outputs) ---------------------------------------------------

def test_every_clip_gets_a_sidecar_and_from_makes_the_same_bytes(tiny_pipeline_dir, tmp_path, capsys, caplog):  # noqa: F811
    import json
    import logging

    first = tmp_path / "dog.wav"
    with caplog.at_level(logging.INFO, logger="clipsonic.pipeline.outputs"):
        rc, _, err = _run(capsys, "--model", str(tiny_pipeline_dir), "--text", "a dog barking", "-o", str(first),
                          "--mode", "zs", "--guidance-scale", "2", "--guidance-rescale", "0.5", "--negative", "rain",
                          *FAST)  # unseeded
    assert rc == 0, err
    side = json.loads((tmp_path / "dog.json").read_text())
    seed = side["seed"]
    assert isinstance(seed, int) and f"seed {seed}" in caplog.text  # an unseeded run says the seed it drew
    assert side["query"] == {"text": "a dog barking"} and side["model"] == str(tiny_pipeline_dir.resolve())
    assert side["settings"] == {"mode": "zs", "guidance_scale": 2.0, "guidance_rescale": 0.5, "num_inference_steps": 2,
                                "sampler": DEFAULT_SAMPLER,
                                "seconds": None, "negative_text": "rain", "video_frames": "mean", "num_frames": 8,
                                "audio": None, "strength": None, "mask": None, "long": None}
    assert len(side["model_fingerprint"]) == 16 and side["clipsonic_version"]
    again = tmp_path / "again" / "dog.wav"
    rc, out, err = _run(capsys, "--from", str(tmp_path / "dog.json"), "-o", str(again))
    assert rc == 0, err
    assert out.split() == [str(again)] and again.read_bytes() == first.read_bytes()
    assert json.loads((again.with_suffix(".json")).read_text())["seed"] == seed


def test_a_directory_gets_one_sidecar_per_clip_with_its_own_seed(tiny_pipeline_dir, tmp_path, capsys):  # noqa: F811
    import json

    rc, out, err = _run(capsys, "--model", str(tiny_pipeline_dir), "--text", "a violin", "--text", "rain",
                        "--num-samples", "2", "--seed", "40", "-o", str(tmp_path / "out"), *FAST)
    assert rc == 0, err
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted(f"{i:03d}-{q}.{ext}" for i, q in enumerate(["a-violin"] * 2 + ["rain"] * 2)
                           for ext in ("wav", "json"))
    sides = [json.loads((tmp_path / "out" / n).read_text()) for n in names if n.endswith(".json")]
    assert [s["seed"] for s in sides] == [40, 41, 42, 43]
    assert [s["query"]["text"] for s in sides] == ["a violin", "a violin", "rain", "rain"]
    assert {s["settings"]["mode"] for s in sides} == {"pd"}  # the resolved mode, not "default"
    rc, out, err = _run(capsys, "--from", str(tmp_path / "out" / "003-rain.json"), "-o", str(tmp_path / "r.wav"))
    assert rc == 0, err
    a, _ = soundfile.read(tmp_path / "r.wav")
    b, _ = soundfile.read(tmp_path / "out" / "003-rain.wav")
    assert np.allclose(a, b, atol=2e-3)  # made alone, not in a batch of 4: equal up to float round-off


def test_from_refuses_another_model_a_non_sidecar_and_extra_flags(tiny_pipeline_dir, tmp_path, capsys):  # noqa: F811
    import json

    rc, _, err = _run(capsys, "--model", str(tiny_pipeline_dir), "--text", "a", "-o", str(tmp_path / "a.wav"),
                      "--seed", "1", *FAST)
    assert rc == 0, err
    changed = shutil.copytree(tiny_pipeline_dir, tmp_path / "changed")
    with open(changed / "scheduler" / "config.json", "a") as fh:
        fh.write("\n")  # any change to what shapes the audio changes the fingerprint
    fingerprint = json.loads((tmp_path / "a.json").read_text())["model_fingerprint"]
    (tmp_path / "other.json").write_text('{"prompt": "a"}')
    (tmp_path / "torn.json").write_text('{"format": "clipsonic-generation", "version": 1, "seed": 1}')
    for argv, message in (
            (["--model", str(changed)], f"made with {tiny_pipeline_dir.resolve()} (fingerprint {fingerprint}) but "
                                        f"{changed} has fingerprint "),
            (["--text", "b"], "drop --text"), (["--steps", "9"], "drop --steps")):
        rc, _, err = _run(capsys, "--from", str(tmp_path / "a.json"), *argv, "-o", str(tmp_path / "b.wav"))
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == 2 and len(lines) == 1 and message in lines[0], err
    for name, message in (("other.json", "not a clipsonic generate sidecar"), ("torn.json", "damaged sidecar"),
                          ("missing.json", "no such file")):
        rc, _, err = _run(capsys, "--from", str(tmp_path / name), "-o", str(tmp_path / "b.wav"))
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "b.wav").exists()


# --- text without a prior ---------------------------------------------------------------------------

def test_pd_without_a_prior_says_how_to_get_one_and_text_defaults_to_knn(tiny_pipeline_dir, tmp_path, capsys):  # noqa: F811
    import json

    bare = shutil.copytree(tiny_pipeline_dir, tmp_path / "bare", ignore=shutil.ignore_patterns("prior"))
    index = json.loads((bare / "model_index.json").read_text())
    index["components"]["prior"] = None
    (bare / "model_index.json").write_text(json.dumps(index))
    rc, _, err = _run(capsys, "--model", str(bare), "--text", "a dog", "--mode", "pd", "-o", str(tmp_path / "p.wav"),
                      *FAST)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("note:")]
    assert rc == 2 and len(lines) == 1 and not (tmp_path / "p.wav").exists()
    assert "train-prior" in lines[0] and "attach prior" in lines[0] and "karlo" in lines[0]
    assert "text runs in knn, shift, zs (default knn)" in lines[0]
    rc, _, err = _run(capsys, "--model", str(bare), "--text", "a dog", "-o", str(tmp_path / "d.wav"), *FAST)
    assert rc == 0, err
    assert json.loads((tmp_path / "d.json").read_text())["settings"]["mode"] == "knn"
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "Without a prior, text defaults to" in " ".join(capsys.readouterr().out.split())
