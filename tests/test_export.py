"""Pipeline directories: export from a run, read back (index, stats, EMA UNet, scheduler), errors."""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from support.synthetic_dataset import make_synthetic_dataset
from support.tiny_clip import make_tiny_clip

from clipsonic.audio import MelConfig
from clipsonic.cli import main
from clipsonic.data.loader import decode_npy, iter_raw_samples
from clipsonic.diffusion import DiffusionConfig
from clipsonic.encoders import ClipModelRef, load_clip
from clipsonic.errors import ClipsonicError
from clipsonic.export import (
    PipelineStats,
    bundled_clip,
    load_stats,
    model_fingerprint,
    read_model_index,
    write_pipeline_dir,
)
from clipsonic.models import MelUNet
from clipsonic.pipeline import CLIPSonicPipeline
from clipsonic.train import export_run, read_run, train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    ds = make_synthetic_dataset(root / "d", 10, 3, frames=16, shards=2)
    run = root / "run"
    train(ds.root, run, {"train": dict(preset="tiny", batch_size=2, grad_accum=2, max_steps=6, save_every=3, num_workers=0,
                                       val_every=0, sample_every=0, log_every=3, bank_size=12)})  # exports RUN/pipeline
    return run


def dataset_embeddings(ds_root):
    """{"key/frame": (embedding float32 [D], label)} straight from the shards."""
    out = {}
    for raw in iter_raw_samples([str(p) for p in sorted(ds_root.glob("train-*.tar"))], fields=("clip.npy", "json")):
        label = json.loads(raw["json"])["label"]
        for k, row in enumerate(decode_npy(raw["clip.npy"]).astype(np.float32)):
            out[f"{raw['__key__']}/{k}"] = (row, label)
    return out


def test_export_round_trip(run):
    pipe = run / "pipeline"
    index = read_model_index(pipe)
    assert index.components == {"unet": "unet", "scheduler": "scheduler", "stats": "stats", "prior": None, "vocoder": None,
                                "clip": None}
    assert index.clip.dim == 16 and index.clip.model == "synthetic/clip" and index.mel.clip_frames == 16
    assert index.training["steps"] == 6 and index.training["preset"] == "tiny" and index.training["train_clips"] == 10
    state = json.loads((run / "checkpoints" / "step-0000006" / "state.json").read_text())
    assert state["extra"]["samples_seen"] == 6 * 2 * 2  # steps × micro-batches × batch
    raw_index = json.loads((pipe / "model_index.json").read_text())
    assert raw_index["_class_name"] == "CLIPSonicPipeline" and "clipsonic_version" in raw_index
    # the UNet is the EMA of the last checkpoint
    unet = MelUNet.from_pretrained(pipe / "unet")
    ema = load_file(str(run / "checkpoints" / "step-0000006" / "ema.safetensors"))
    for name, tensor in unet.state_dict().items():
        assert torch.equal(tensor, ema[name]), name
    assert DiffusionConfig.load(index.component_dir("scheduler") / "config.json") == read_run(run).config.diffusion
    readme = (pipe / "README.md").read_text()
    assert "synthetic/clip" in readme and "steps: 6" in readme and "CLIPSonicPipeline" in readme


def test_stats_match_the_dataset(run):
    stats = load_stats(run / "pipeline")
    truth = dataset_embeddings(run.parent / "d")
    assert len(truth) == 30
    mean = np.mean([row for row, _ in truth.values()], axis=0)
    assert stats.mean_image_embedding.dtype == torch.float32 and stats.mean_image_embedding.shape == (16,)
    np.testing.assert_allclose(stats.mean_image_embedding.numpy(), mean, rtol=1e-5, atol=1e-6)
    assert float(stats.mean_image_embedding.norm()) < 0.999  # a mean of unit vectors, not renormalised
    assert stats.image_bank.dtype == torch.float16 and stats.image_bank.shape == (12, 16)
    assert len(set(stats.bank_keys)) == 12
    for key, row, label in zip(stats.bank_keys, stats.image_bank, stats.bank_labels, strict=True):
        np.testing.assert_array_equal(row.float().numpy(), truth[key][0])  # stored float16, exactly
        assert label == truth[key][1]
    assert stats.info["num_clips"] == 10 and stats.info["num_embeddings"] == 30


def test_reexport_is_deterministic_and_atomic(run, tmp_path):
    out = export_run(run, out=tmp_path / "p", step=3)
    assert read_model_index(out).training["steps"] == 3
    first = load_stats(out)
    export_run(run, out=out, step=3)  # replaces the existing pipeline directory
    again = load_stats(out)
    assert first.bank_keys == again.bank_keys and torch.equal(first.image_bank, again.image_bank)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # no temporary or old folder left
    with pytest.raises(ClipsonicError, match="no checkpoint of step 5"):
        export_run(run, out=tmp_path / "q", step=5)


def test_the_fingerprint_is_of_the_tensors_not_of_the_header_order(run, tmp_path):
    out = export_run(run, out=tmp_path / "p", step=3)
    first = model_fingerprint(out)
    weights = out / "unet" / "model.safetensors"
    data = weights.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    flipped = json.dumps(dict(reversed(header.items())), separators=(",", ":")).encode().ljust(length)
    assert flipped != data[8:8 + length]  # what a second save from safetensors' hash map may write
    weights.write_bytes(data[:8] + flipped + data[8 + length:])
    assert model_fingerprint(out) == first
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit of one weight
    assert model_fingerprint(out) != first
    weights.write_bytes(b"\xff" * 16)
    with pytest.raises(ClipsonicError, match="not a safetensors file"):
        model_fingerprint(out)


def test_refuses_to_overwrite_a_folder_that_is_not_a_pipeline(run, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ClipsonicError, match="not a pipeline directory"):
        export_run(run, out=tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_extra_components_for_the_pipeline_writer(tmp_path):
    index = read_model_index(_any_pipeline(tmp_path))

    def write_vocoder(folder):
        folder.mkdir()
        (folder / "config.json").write_text("{}")

    out = write_pipeline_dir(tmp_path / "with-vocoder", unet=MelUNet.from_preset("tiny", cond_dim=16),
                             diffusion=DiffusionConfig(), mel=index.mel, clip=index.clip,
                             extra_components={"vocoder": write_vocoder})
    again = read_model_index(out)
    assert again.components["vocoder"] == "vocoder" and again.components["stats"] is None
    assert again.component_dir("vocoder") == out / "vocoder"
    with pytest.raises(ClipsonicError, match="no 'stats' component"):
        load_stats(out)


def _any_pipeline(tmp_path):
    return write_pipeline_dir(tmp_path / "plain", unet=MelUNet.from_preset("tiny", cond_dim=16),
                              diffusion=DiffusionConfig(), mel=MelConfig(), clip=ClipModelRef("m", 16, "f" * 40))


def test_not_a_pipeline_errors(run, tmp_path):
    with pytest.raises(ClipsonicError, match="no model_index.json"):
        read_model_index(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(run / "pipeline", bad)
    index = json.loads((bad / "model_index.json").read_text())
    (bad / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ClipsonicError, match="not CLIPSonicPipeline"):
        read_model_index(bad)
    (bad / "model_index.json").write_text(json.dumps(index))
    shutil.rmtree(bad / "unet")
    with pytest.raises(ClipsonicError, match="'unet' is listed but"):
        read_model_index(bad)


def test_cli_export(run, tmp_path, capsys):
    assert main(["export", str(run), "--out", str(tmp_path / "cli"), "--step", "6"]) == 0
    assert f"exported: {tmp_path / 'cli'}" in capsys.readouterr().out
    assert read_model_index(tmp_path / "cli").training["steps"] == 6


def test_files_written_before_the_version_field_still_load(tmp_path):
    """model_index.json without format/version is version 1; stats written then kept keys and labels in bank.json."""
    pipe = write_pipeline_dir(tmp_path / "old", unet=MelUNet.from_preset("tiny", cond_dim=4), diffusion=DiffusionConfig(),
                              mel=MelConfig(), clip=ClipModelRef("m", 4, "f" * 16), stats=PipelineStats(
                                  torch.zeros(4), torch.eye(4)[:2].half(), ["a/0", "b/1"], ["dog", None], {"num_clips": 2}))
    index = json.loads((pipe / "model_index.json").read_text())
    (pipe / "model_index.json").write_text(json.dumps({k: v for k, v in index.items() if k not in ("format", "version")}))
    stats = json.loads((pipe / "stats" / "config.json").read_text())
    (pipe / "stats" / "bank.json").write_text(json.dumps({"keys": stats.pop("bank_keys"), "labels": stats.pop("bank_labels")}))
    (pipe / "stats" / "config.json").write_text(json.dumps({k: v for k, v in stats.items() if k not in ("format", "version")}))
    assert read_model_index(pipe).clip.model == "m"
    old = load_stats(pipe)
    assert old.bank_keys == ["a/0", "b/1"] and old.bank_labels == ["dog", None] and old.info["num_clips"] == 2
    (pipe / "model_index.json").write_text(json.dumps({**index, "version": 7}))
    with pytest.raises(ClipsonicError, match="clipsonic-pipeline version 7 .* reads version 1") as err:
        read_model_index(pipe)
    assert "\n" not in str(err.value)


# --- the bundled CLIP: a moved folder loads offline anywhere -------------------------------------------------------

@pytest.fixture(scope="module")
def clip_run(tmp_path_factory, tiny_clip_dir):
    """A UNet run on a dataset made with a real (tiny) CLIP folder of its own, which the tests may rename; the CLIP
    folder also holds a pickle that a bundle must leave out."""
    root = tmp_path_factory.mktemp("bundle")
    shutil.copytree(tiny_clip_dir, root / "clip")
    (root / "clip" / "pytorch_model.bin").write_bytes(b"a pickle: never copied")
    encoder = load_clip(root / "clip", device="cpu")
    ds = make_synthetic_dataset(root / "d", 4, 2, frames=16, dim=encoder.dim, shards=1)
    dataclasses.replace(ds, clip=ClipModelRef(str(root / "clip"), encoder.dim, encoder.fingerprint)).save()
    train(ds.root, root / "run", {"train": dict(preset="tiny", batch_size=2, max_steps=2, num_workers=0, val_every=0,
                                                sample_every=0, bank_size=4)})
    return root


def test_train_bundles_the_clip_and_a_moved_pipeline_generates_offline(clip_run, tmp_path, capsys):
    pipe, clip = clip_run / "run" / "pipeline", clip_run / "clip"
    assert read_model_index(pipe).components["clip"] == "clip"
    assert sorted(p.name for p in (pipe / "clip").iterdir()) == sorted(p.name for p in clip.iterdir()
                                                                       if p.suffix != ".bin")
    assert (pipe / "clip" / "model.safetensors").stat().st_ino == (clip / "model.safetensors").stat().st_ino  # linked
    moved = tmp_path / "elsewhere" / "mine"
    shutil.copytree(pipe, moved.parent / "copy")  # a real copy: renaming the CLIP below must not matter
    (moved.parent / "copy").rename(moved)
    clip.rename(clip_run / "clip-gone")
    try:
        assert os.environ["HF_HUB_OFFLINE"] == "1"  # conftest: no hub, so only the bundle can supply the CLIP
        assert main(["generate", "--model", str(moved), "--text", "dog barking", "--mode", "zs", "--steps", "2",
                     "--seed", "0", "-o", str(tmp_path / "dog.wav")]) == 0
        assert (tmp_path / "dog.wav").stat().st_size > 1000
        referenced = export_run(clip_run / "run", out=tmp_path / "referenced", bundle_clip=False)
        with pytest.raises(ClipsonicError, match="CLIP model directory .*clip does not exist"):
            CLIPSonicPipeline.from_pretrained(referenced, device="cpu")  # what the bundle spares a moved folder
    finally:
        (clip_run / "clip-gone").rename(clip)


def test_export_no_bundle_clip_then_attach_clip(clip_run, tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["export", str(clip_run / "run"), "--out", str(out), "--no-bundle-clip"]) == 0
    assert capsys.readouterr().out.strip() == f"exported: {out}"
    assert read_model_index(out).components["clip"] is None and not (out / "clip").exists()
    other = make_tiny_clip(tmp_path / "other-clip", seed=1)
    capsys.readouterr()  # transformers' save progress
    assert main(["attach", "clip", str(out), str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(other) in err and str(clip_run / "clip") in err
    assert "bundle the CLIP it was trained with" in err
    assert read_model_index(out).components["clip"] is None and not (out / "clip").exists()  # nothing changed
    assert main(["attach", "clip", str(out), str(clip_run / "clip")]) == 0
    assert capsys.readouterr().out.strip() == f"attached: {out / 'clip'}"
    assert read_model_index(out).components["clip"] == "clip" and not (out / "clip" / "pytorch_model.bin").exists()
    loaded = CLIPSonicPipeline.from_pretrained(out, device="cpu")
    assert loaded.encoder.fingerprint == read_model_index(out).clip.fingerprint
    assert main(["export", str(clip_run / "run"), "--out", str(tmp_path / "b")]) == 0  # the default bundles
    assert capsys.readouterr().out.strip() == f"exported: {tmp_path / 'b'} (CLIP bundled in {tmp_path / 'b' / 'clip'})"


def test_a_clip_this_machine_lacks_stays_a_reference_with_a_warning(clip_run, run, caplog):
    """The synthetic runs' CLIP exists nowhere: their pipeline names it, and the export says how to bundle it."""
    assert read_model_index(run / "pipeline").components["clip"] is None
    with caplog.at_level("WARNING"):
        assert bundled_clip(ClipModelRef("synthetic/clip", 16, "0" * 16)) == {}
        assert bundled_clip(ClipModelRef(str(clip_run / "clip"), 32, "0" * 16)) == {}  # other weights there now
    first, second = (r.getMessage() for r in caplog.records)
    assert "synthetic/clip" in first and "clipsonic attach clip PIPELINE CLIP_DIR" in first
    assert f"({clip_run / 'clip'} holds other weights or is incomplete)" in second


def test_train_no_bundle_clip_keeps_the_reference(clip_run, tmp_path):
    assert main(["train", str(clip_run / "d"), "--out", str(tmp_path / "r"), "--preset", "tiny", "--max-steps", "1",
                 "--batch-size", "2", "--num-workers", "0", "--sample-every", "0", "--no-bundle-clip"]) == 0
    index = read_model_index(tmp_path / "r" / "pipeline")
    assert index.components["clip"] is None and index.clip.model == str(clip_run / "clip")
    assert read_run(tmp_path / "r").config.train.bundle_clip is False  # so a later `export` follows the run
    assert main(["export", str(tmp_path / "r"), "--out", str(tmp_path / "again")]) == 0
    assert read_model_index(tmp_path / "again").components["clip"] is None
