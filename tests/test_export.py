"""Pipeline directories: export from a run, read back (index, stats, EMA UNet, scheduler), errors."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from support.synthetic_dataset import make_synthetic_dataset

from clipsonic.audio import MelConfig
from clipsonic.cli import main
from clipsonic.data.loader import decode_npy, iter_raw_samples
from clipsonic.diffusion import DiffusionConfig
from clipsonic.encoders import ClipModelRef
from clipsonic.errors import ClipsonicError
from clipsonic.export import PipelineStats, load_stats, read_model_index, write_pipeline_dir
from clipsonic.models import MelUNet
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
