"""``clipsonic app`` without a browser: what the page calls (clipsonic.app.Studio) on a tiny pipeline, and the
command's refusals. The page itself, in Chromium, is tests/test_app_page.py."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile
from support.tiny_pipeline import COLOURS, TINY_FRAMES, solid_image, tiny_pipeline_dir  # noqa: F401

from clipsonic import app as app_module
from clipsonic.app import Studio
from clipsonic.cli import main
from clipsonic.data.dataset import DatasetInfo, ShardWriter, encode_sample
from clipsonic.errors import ClipsonicError
from clipsonic.files import lock_folder
from clipsonic.pipeline import CLIPSonicPipeline
from clipsonic.pipeline.outputs import generate_files, model_sidecar
from clipsonic.pipeline.queries import parse_query

FAST = {"num_inference_steps": 2}


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):  # noqa: F811
    return CLIPSonicPipeline.from_pretrained(tiny_pipeline_dir, device="cpu")


@pytest.fixture()
def studio(pipe, tiny_pipeline_dir, tmp_path):  # noqa: F811
    (tmp_path / "app").mkdir()
    return Studio(pipe, tmp_path / "app", model_sidecar(pipe, tiny_pipeline_dir), model_dir=tiny_pipeline_dir)


def _numbered(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.isdigit())


def test_candidates_are_the_clips_generate_writes_with_the_same_seed(studio, pipe, tmp_path):
    results = studio.generate("text", "a dog barking", None, None, None, mode="auto", count=3, seed=41, settings=FAST)
    assert [r["seed"] for r in results] == [41, 42, 43]
    assert {r["mode"] for r in results} == {pipe.default_mode("text")}
    cli = generate_files(pipe, parse_query("a dog barking"), tmp_path / "cli", num_samples=3, seed=41, **FAST)
    for result, wav in zip(results, cli, strict=True):
        assert sorted(p.suffix for p in result["files"]) == [".json", ".png", ".wav"]
        assert all(p.is_file() and p.parent == tmp_path / "app" / "0001" for p in result["files"])
        mine = next(p for p in result["files"] if p.suffix == ".wav")
        assert np.array_equal(soundfile.read(mine)[0], soundfile.read(wav)[0])
        side = json.loads(mine.with_suffix(".json").read_text())
        assert side["seed"] == result["seed"] and side["query"] == {"text": "a dog barking"}
    studio.generate("text", "rain", None, None, None, mode="zs", count=1, seed=0, settings=FAST)
    assert _numbered(tmp_path / "app") == ["0001", "0002"]  # each press its own folder, nothing overwritten


def test_compare_runs_every_text_mode_with_one_seed(studio, pipe):
    results = studio.compare("a violin", "noise", seed=7, settings=FAST)
    assert [r["label"] for r in results] == [m for m in pipe.modes if m != "iq"] == ["zs", "pd", "shift", "knn"]
    assert [r["mode"] for r in results] == [r["label"] for r in results]
    assert {r["seed"] for r in results} == {7}
    assert len({next(p for p in r["files"] if p.suffix == ".wav").read_bytes() for r in results}) == 4


@pytest.mark.parametrize("kind, value, settings, count, seed, message", [
    ("text", "  ", {}, 1, 0, "no text query: type what you want to hear"),
    ("image", None, {}, 1, 0, "no image query: upload or paste a picture"),
    ("video", None, {}, 1, 0, "no video query: upload a video"),
    ("image", "BROKEN", {}, 1, 0, "not a readable image"),
    ("text", "a dog", {}, 9, 0, "number of candidates must be an integer in 1..8"),
    ("text", "a dog", {}, 1, -3, "seed -3 is outside"),
    ("text", "a dog", {"seconds": -1.0}, 1, 0, "seconds must be a positive number"),
    ("text", "a dog", {"num_inference_steps": 0}, 1, 0, "steps"),
])
def test_a_refused_query_says_why_and_leaves_no_folder(studio, tmp_path, kind, value, settings, count, seed, message):
    if value == "BROKEN":
        value = tmp_path / "x.png"
        value.write_bytes(b"\x89PNG not really")
    args = {"text": None, "image": None, "video": None} | {kind: None if value is None else str(value)}
    with pytest.raises(ClipsonicError, match=message):
        studio.generate(kind, args["text"], args["image"], args["video"], None, mode="auto", count=count, seed=seed,
                        settings=settings)
    assert _numbered(tmp_path / "app") == []


def test_the_page_names_a_refused_upload_by_its_file_name_alone(tmp_path):
    import gradio as gr

    from clipsonic.app import _respond

    def make(seed):
        raise ClipsonicError(f"'{tmp_path}/uploads/3f2a9c/my photo.png': not a readable image (IQ/ZS: see 1/2)")

    with pytest.raises(gr.Error) as refused:
        _respond(make, 0, False, [])
    assert refused.value.message == "'my photo.png': not a readable image (IQ/ZS: see 1/2)"


def test_a_video_over_the_length_limit_is_refused_until_a_duration_is_set(studio, tmp_path):
    from support.media_files import write_video

    long_video = write_video(tmp_path / "long.mp4", seconds=61, fps=2, size=(32, 32), audio_codec=None)
    with pytest.raises(ClipsonicError, match="lasts 61.0 s, over the 60-s limit"):
        studio.generate("video", None, None, str(long_video), None, mode="auto", count=1, seed=0, settings=FAST)
    assert _numbered(tmp_path / "app") == []
    [result] = studio.generate("video", None, None, str(long_video), None, mode="auto", count=1, seed=0,
                               settings={**FAST, "seconds": 2.048})
    assert sorted(p.suffix for p in result["files"]) == [".json", ".mp4", ".png", ".wav"]


def test_image_queries_land_nearest_their_own_training_frames(studio, tmp_path):
    from PIL import Image

    Image.fromarray(solid_image(COLOURS["blue"], 48)).save(tmp_path / "blue.png")
    [result] = studio.generate("image", None, str(tmp_path / "blue.png"), None, None, mode="auto", count=1, seed=0,
                               settings=FAST)
    nearest = result["nearest"]
    assert result["mode"] == "iq" and len(nearest) == app_module.NEAREST
    assert nearest[0]["label"] == "blue" and nearest[0]["key"] == "blue/0" and nearest[0]["distance"] < 0.02
    assert [r["distance"] for r in nearest] == sorted(r["distance"] for r in nearest)
    assert all(r["audio"] is None for r in nearest)  # no dataset given: nothing to play


def _colour_dataset(root, pipe, clip=None):
    """The tiny pipeline's bank clips ("red", "green" … keys) as a dataset: even ones with flac, odd ones mel only."""
    root.mkdir()
    writer = ShardWriter(root, "train", 0, max_bytes=1 << 40)
    rng = np.random.default_rng(0)
    for i, name in enumerate(COLOURS):
        wav = (0.1 * rng.standard_normal(TINY_FRAMES * 512)).astype(np.float32)
        flac = io.BytesIO()
        soundfile.write(flac, wav, pipe.sample_rate, format="FLAC")
        mel = rng.uniform(-8, 0, (64, TINY_FRAMES)).astype(np.float32)
        writer.write(encode_sample(name, mel, np.ones((1, pipe.clip.dim)), {"label": name},
                                   flac=flac.getvalue() if i % 2 == 0 else None))
    info = DatasetInfo(root=root, mel=pipe.mel, clip=clip or pipe.clip, frames_per_clip=1,
                       splits={"train": {"shards": [writer.finalize()], "clips": len(COLOURS)}}, counts={}, options={})
    info.save()
    return info


def test_with_the_dataset_the_nearest_training_clips_play(pipe, tiny_pipeline_dir, tmp_path):  # noqa: F811
    _colour_dataset(tmp_path / "data", pipe)
    (tmp_path / "app").mkdir()
    studio = Studio(pipe, tmp_path / "app", {}, model_dir=tiny_pipeline_dir, dataset=tmp_path / "data")
    assert sorted(studio.clips) == sorted(COLOURS)
    red = studio.nearest(pipe.stats.image_bank[0].float().numpy())[0]  # bank row 0 is red
    assert red["key"] == "red/0" and red["audio"].is_file()
    audio, rate = soundfile.read(red["audio"], dtype="float32")
    assert rate == pipe.sample_rate and np.allclose(audio, studio.clips["red"], atol=1e-4)  # red has flac
    green = studio.nearest(pipe.stats.image_bank[1].float().numpy())[0]
    assert green["key"] == "green/0" and len(soundfile.read(green["audio"])[0]) == TINY_FRAMES * 512  # vocoded mel


def test_a_dataset_of_another_clip_is_refused(pipe, tiny_pipeline_dir, tmp_path):  # noqa: F811
    from clipsonic.encoders import ClipModelRef

    other = ClipModelRef(model="other/clip", dim=pipe.clip.dim, fingerprint="0" * 40)
    _colour_dataset(tmp_path / "data", pipe, clip=other)
    with pytest.raises(ClipsonicError, match="was built with .*other/clip.* re-run preprocess"):
        Studio(pipe, tmp_path, {}, model_dir=tiny_pipeline_dir, dataset=tmp_path / "data")


def _error(argv, capsys) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_the_command_without_gradio_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    import importlib.util

    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else find(name, *a))
    assert "pip install 'clipsonic[app]'" in _error(["app", "--out", str(tmp_path / "out")], capsys)
    assert not (tmp_path / "out").exists()


def test_a_second_app_on_the_same_folder_is_refused(tmp_path, capsys):
    with lock_folder(tmp_path / "out", "clipsonic app"):
        assert "is in use by another clipsonic process" in _error(["app", "--out", str(tmp_path / "out")], capsys)


@pytest.mark.parametrize("flag, message", [(["--port", "70000"], "give a port in 1..65535"),
                                           (["--max-upload-mb", "0"], "give a positive size")])
def test_bad_flags_are_one_line(tmp_path, capsys, flag, message):
    assert message in _error(["app", "--out", str(tmp_path / "out"), *flag], capsys)


def test_an_upload_over_the_limit_is_refused_in_the_page(studio, page, tmp_path, monkeypatch):
    import socket

    from PIL import Image

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "uploads"))  # as the command sets it
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    assert (tmp_path / "big.png").stat().st_size > 50_000
    served = app_module.serve(studio, port=port, max_upload_mb=0.05, block=False)
    try:
        page.goto(served.local_url)
        page.get_by_role("tab", name="Image").click()
        page.locator("#image input[type=file]").set_input_files(str(tmp_path / "big.png"))
        toast = page.locator("[data-testid=toast-text]").first
        toast.wait_for()
        assert "exceed the maximum allowed size" in toast.inner_text() and "big.png" in toast.inner_text()
    finally:
        served.close()


def test_the_edit_fields_become_the_pipelines_edit_arguments(studio, tmp_path):
    assert app_module.edit_settings(2.0, None, "vary", 0.5, 0, 0) == {}
    assert app_module.edit_settings(None, "a.wav", "vary", 0.5, 0, 0) == {"audio": "a.wav", "strength": 0.5}
    assert app_module.edit_settings(None, "a.wav", "regenerate a span", 0.5, 0.25, 0) == {"audio": "a.wav",
                                                                                          "mask": (0.25, None)}
    assert app_module.edit_settings(3.0, "a.wav", "continue", 0.5, 0, 0) == {"audio": "a.wav"}
    with pytest.raises(ClipsonicError, match="continue: set the duration"):
        app_module.edit_settings(None, "a.wav", "continue", 0.5, 0, 0)
    source = tmp_path / "source.wav"
    soundfile.write(source, 0.1 * np.sin(np.arange(TINY_FRAMES * 512) / 8.0).astype(np.float32), 16000)
    [result] = studio.generate("text", "a dog", None, None, None, mode="zs", count=1, seed=3,
                               settings={**FAST, "seconds": 2.048, **app_module.edit_settings(2.048, str(source),
                                                                                              "continue", 0, 0, 0)})
    wav = next(p for p in result["files"] if p.suffix == ".wav")
    assert soundfile.info(wav).frames == 2 * TINY_FRAMES * 512
    assert json.loads(wav.with_suffix(".json").read_text())["settings"]["audio"] == str(source.resolve())
