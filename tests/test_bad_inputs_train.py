"""Bad inputs to ``train``, ``train-prior`` and ``train-vocoder``: one line, exit 2, nothing written
(tests/support/bad_input.py). ``{in}`` is a module-wide folder of valid and broken inputs and runs (it must not
change either: a refused resume touches nothing), ``{tmp}`` the test's own folder."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image
from support.bad_input import Case, check, snapshot
from support.synthetic_dataset import make_synthetic_dataset, synthetic_mel_config

from clipsonic.audio import MelConfig
from clipsonic.prior.train import PriorTask
from clipsonic.train import train
from clipsonic.train.harness import Run, write_run
from clipsonic.vocoder.task import VocoderTask

TINY = ("--preset", "tiny", "--batch-size", "2", "--num-workers", "0", "--val-every", "0", "--sample-every", "0",
        "--max-steps", "2", "--no-export-at-end")


def _train(*extra: str, data: str = "{in}/data", out: str = "{tmp}/run") -> tuple[str, ...]:
    return ("-q", "train", data, "--out", out, *TINY, *extra)


def _prior(*extra: str, data: str = "{in}/data", out: str = "{tmp}/run") -> tuple[str, ...]:
    return ("-q", "train-prior", data, "--out", out, "--preset", "tiny", "--max-steps", "2", *extra)


def _vocoder(*extra: str, data: str = "{in}/wavs", out: str = "{tmp}/run") -> tuple[str, ...]:
    return ("-q", "train-vocoder", data, "--out", out, "--preset", "tiny", "--max-steps", "2", *extra)


def _config(name: str) -> tuple[str, ...]:
    return ("--config", f"{{in}}/{name}")


RANGE = r"must be (>=|>|in)"
CASES = [
    # train: the dataset
    Case("train-data-missing", _train(data="{in}/nope"), r"nope is not a clipsonic dataset"),
    Case("train-data-is-a-file", _train(data="{in}/text.txt"), r"text\.txt is not a clipsonic dataset"),
    Case("train-data-empty-folder", _train(data="{in}/empty"), r"empty is not a clipsonic dataset"),
    Case("train-data-is-a-run", _train(data="{in}/unet_run"), r"unet_run is not a clipsonic dataset"),
    Case("train-dataset-json-truncated", _train(data="{in}/ds_truncated"), r"dataset\.json: not a readable"),
    Case("train-dataset-json-a-list", _train(data="{in}/ds_list"), r"dataset\.json: not a clipsonic-dataset"),
    Case("train-dataset-without-train-shards", _train(data="{in}/ds_no_train"), r"no 'train' split"),
    Case("train-dataset-only-a-test-split", _train(data="{in}/ds_only_test"), r"no 'train' split"),
    Case("train-dataset-shard-corrupt", _train(data="{in}/ds_corrupt"), r"train-000000\.tar.*re-run preprocess"),
    Case("train-dataset-shard-corrupt-in-a-worker", _train("--num-workers", "2", data="{in}/ds_corrupt"),
         r"reading the training data: .*train-000000\.tar.*re-run preprocess"),
    Case("train-dataset-shard-missing", _train(data="{in}/ds_shard_missing"), r"train-000000\.tar"),
    # train: the run directory
    Case("train-out-is-a-file", _train(out="{in}/text.txt"), r"text\.txt is a file"),
    Case("train-out-is-the-dataset", _train(out="{in}/data"), r"data is not empty and holds no run"),
    Case("train-out-holds-a-run", _train(out="{in}/unet_run"), r"already holds a run; pass --resume"),
    Case("train-resume-without-a-run", _train("--resume"), r"holds no run to resume"),
    Case("train-resume-and-restart", _train("--resume", "--restart", out="{in}/unet_run"), r"give one of them"),
    Case("train-resume-every-checkpoint-corrupt", _train("--resume", out="{in}/run_corrupt"),
         r"no readable checkpoint.*nothing was changed.*--restart"),
    Case("train-resume-config-json-truncated", _train("--resume", out="{in}/run_bad_config"),
         r"config\.json: not a readable run config"),
    Case("train-resume-changed-lr", _train("--resume", "--lr", "0.5", out="{in}/unet_run"),
         r"trained with lr=0\.001; resuming with lr=0\.5"),
    Case("train-resume-changed-preset", _train("--resume", "--preset", "small", out="{in}/unet_run"),
         r"preset='tiny'; resuming with preset='small'"),
    Case("train-resume-other-mel", _train("--resume", data="{in}/data_fmax", out="{in}/unet_run"), r"fmax"),
    Case("train-resume-prior-run", _train("--resume", out="{in}/prior_run"), r"is a prior run"),
    Case("train-resume-unknown-section", _train("--resume", *_config("cfg_unknown_section.json"), out="{in}/unet_run"),
         r"unknown section 'trian'"),
    # train: numbers and choices
    Case("train-max-steps-0", _train("--max-steps", "0"), r"max_steps must be >= 1, got 0"),
    Case("train-lr-0", _train("--lr", "0"), r"lr must be > 0"),
    Case("train-lr-nan", _train("--lr", "nan"), r"lr must be a finite number"),
    Case("train-lr-inf", _train("--lr", "inf"), r"lr must be a finite number"),
    Case("train-batch-size-0", _train("--batch-size", "0"), r"batch_size " + RANGE),
    Case("train-grad-accum-negative", _train("--grad-accum", "-1"), r"grad_accum " + RANGE),
    Case("train-warmup-negative", _train("--warmup-steps", "-5"), r"warmup_steps " + RANGE),
    Case("train-grad-clip-negative", _train("--grad-clip", "-1"), r"grad_clip " + RANGE),
    Case("train-save-every-0", _train("--save-every", "0"), r"save_every " + RANGE),
    Case("train-keep-last-0", _train("--keep-last", "0"), r"keep_last " + RANGE),
    Case("train-log-every-0", _train("--log-every", "0"), r"log_every " + RANGE),
    Case("train-val-every-negative", _train("--val-every", "-1"), r"val_every " + RANGE),
    Case("train-ema-1", _train("--ema", "1.0"), r"ema must be in \[0, 1\)"),
    Case("train-weight-decay-negative", _train("--weight-decay", "-0.1"), r"weight_decay " + RANGE),
    Case("train-num-workers-negative", _train("--num-workers", "-1"), r"num_workers " + RANGE),
    Case("train-sample-steps-0", _train("--sample-steps", "0"), r"sample_steps " + RANGE),
    Case("train-val-samples-0", _train("--val-samples", "0"), r"val_samples " + RANGE),
    Case("train-shuffle-buffer-0", _train("--shuffle-buffer", "0"), r"shuffle_buffer " + RANGE),
    Case("train-seed-negative", _train("--seed", "-1"), r"seed must be in \[0, "),
    Case("train-seed-beyond-64-bits", _train("--seed", str(2**64)), r"seed must be in \[0, "),
    Case("train-max-steps-not-a-number", _train("--max-steps", "ten"), r"--max-steps: invalid int value"),
    Case("train-precision-unknown", _train("--precision", "fp8"), r"--precision: invalid choice"),
    Case("train-prediction-unknown", _train("--prediction", "noise"), r"--prediction: invalid choice"),
    # train: --config files
    Case("train-config-missing", _train("--config", "{in}/nope.json"), r"nope\.json: no such file"),
    Case("train-config-is-a-folder", _train("--config", "{in}/empty"), r"empty: not a readable --config file"),
    Case("train-config-not-json", _train(*_config("text.txt")), r"text\.txt: not a readable --config file"),
    Case("train-config-not-utf8", _train(*_config("cfg_latin1.json")), r"cfg_latin1\.json: not a readable"),
    Case("train-config-deeply-nested", _train(*_config("cfg_deep.json")), r"nested too deeply"),
    Case("train-config-a-list", _train(*_config("cfg_list.json")), r"expected a JSON object"),
    Case("train-config-section-not-an-object", _train(*_config("cfg_section_int.json")),
         r"section 'train' must be a JSON object"),
    Case("train-config-unknown-section", _train(*_config("cfg_unknown_section.json")), r"trian"),
    Case("train-config-unknown-key", _train(*_config("cfg_unknown_key.json")), r"unknown key\(s\) \['learning_rate'\]"),
    Case("train-config-wrong-type", _train(*_config("cfg_wrong_type.json")), r"lr must be a number, got 'fast'"),
    Case("train-config-bool-for-int", _train(*_config("cfg_bool.json")), r"keep_last must be an integer, got True"),
    Case("train-config-cond-dim", _train(*_config("cfg_cond_dim.json")), r"unet\.cond_dim=99.*needs 16"),
    Case("train-config-unet-negative-channels", _train(*_config("cfg_unet_bad.json")), r"MelUNetConfig"),
    # train-prior
    Case("train-prior-source-missing", _prior(data="{in}/nope"), r"nope: no such pair source"),
    Case("train-prior-source-a-text-file", _prior(data="{in}/text.txt"), r"not a dataset folder"),
    Case("train-prior-csv-without-columns", _prior("--clip-model", "x", data="{in}/pairs_bad.csv"),
         r"need an image column"),
    Case("train-prior-csv-not-utf8", _prior("--clip-model", "x", data="{in}/pairs_latin1.csv"),
         r"pairs_latin1\.csv: not a readable CSV"),
    Case("train-prior-csv-without-clip-model", _prior(data="{in}/pairs.csv"), r"pass the CLIP model \(--clip-model\)"),
    Case("train-prior-folder-without-captions", _prior("--clip-model", "x", data="{in}/images"),
         r"no image with a caption file"),
    Case("train-prior-template-without-label", _prior("--templates", "a sound"), r"no \{label\} placeholder"),
    Case("train-prior-out-is-a-file", _prior(out="{in}/text.txt"), r"text\.txt is a file"),
    Case("train-prior-resume-unet-run", _prior("--resume", out="{in}/unet_run"), r"is a unet run.*not a prior run"),
    Case("train-prior-resume-without-checkpoint", _prior("--resume", out="{in}/prior_run"),
         r"no readable checkpoint"),
    Case("train-prior-batch-size-0", _prior("--batch-size", "0"), r"batch_size " + RANGE),
    Case("train-prior-ema-1", _prior("--ema", "1"), r"ema must be in \[0, 1\)"),
    Case("train-prior-p-uncond-above-1", _prior("--p-uncond", "1.5"), r"p_uncond must be in \[0, 1\)"),
    Case("train-prior-val-fraction-negative", _prior("--val-fraction", "-0.1"), r"val_fraction must be in"),
    Case("train-prior-val-pairs-0", _prior("--val-pairs", "0"), r"val_pairs " + RANGE),
    Case("train-prior-lr-0", _prior("--lr", "0"), r"lr must be > 0"),
    Case("train-prior-warmup-negative", _prior("--warmup-steps", "-1"), r"warmup_steps " + RANGE),
    Case("train-prior-keep-last-0", _prior("--keep-last", "0"), r"keep_last " + RANGE),
    Case("train-prior-sample-steps-0", _prior("--sample-steps", "0"), r"sample_steps " + RANGE),
    Case("train-prior-config-section-not-an-object", _prior(*_config("cfg_section_int.json")),
         r"section 'train' must be a JSON object"),
    Case("train-prior-lr-nan", _prior("--lr", "nan"), r"lr must be a finite number"),
    Case("train-prior-seed-beyond-64-bits", _prior("--seed", str(2**70)), r"seed must be in \[0, "),
    Case("train-prior-preset-unknown", _prior("--preset", "huge"), r"--preset: invalid choice"),
    Case("train-prior-config-unknown-key", _prior(*_config("cfg_unknown_key.json")), r"learning_rate"),
    # train-vocoder
    Case("train-vocoder-data-missing", _vocoder(data="{in}/nope"), r"nope: not a directory"),
    Case("train-vocoder-data-is-a-file", _vocoder(data="{in}/text.txt"), r"text\.txt: not a directory"),
    Case("train-vocoder-folder-without-audio", _vocoder(data="{in}/empty"), r"no usable audio files"),
    Case("train-vocoder-folder-of-broken-audio", _vocoder(data="{in}/broken_wavs"),
         r"no usable audio files \(1 unreadable"),
    Case("train-vocoder-dataset-without-audio", _vocoder(data="{in}/data"), r"store no audio.*--keep-audio"),
    Case("train-vocoder-out-is-a-file", _vocoder(out="{in}/text.txt"), r"text\.txt is a file"),
    Case("train-vocoder-resume-unet-run", _vocoder("--resume", out="{in}/unet_run"), r"is a unet run"),
    Case("train-vocoder-resume-other-source", _vocoder("--resume", data="{in}/empty", out="{in}/voc_run"),
         r"trained on source='.*wavs', not '.*empty'"),
    Case("train-vocoder-resume-other-mel", _vocoder("--resume", out="{in}/voc_run_fmax"),
         r"trained on mel\.fmax=7000\.0, not 8000\.0"),
    Case("train-vocoder-resume-without-checkpoint", _vocoder("--resume", out="{in}/voc_run"),
         r"no readable checkpoint"),
    Case("train-vocoder-dataset-only-a-test-split", _vocoder(data="{in}/ds_only_test"), r"no training shards"),
    Case("train-vocoder-segment-not-a-multiple", _vocoder("--segment-size", "1000"), r"multiples of 512"),
    Case("train-vocoder-segment-0", _vocoder("--segment-size", "0"), r"segment_size " + RANGE),
    Case("train-vocoder-batch-size-0", _vocoder("--batch-size", "0"), r"batch_size " + RANGE),
    Case("train-vocoder-adam-b1-1", _vocoder("--adam-b1", "1.0"), r"adam_b1 must be in \[0, 1\)"),
    Case("train-vocoder-lr-decay-0", _vocoder("--lr-decay", "0"), r"lr_decay must be in \(0, 1\]"),
    Case("train-vocoder-lambda-mel-negative", _vocoder("--lambda-mel", "-45"), r"lambda_mel " + RANGE),
    Case("train-vocoder-num-val-0", _vocoder("--num-val", "0"), r"num_val " + RANGE),
    Case("train-vocoder-max-steps-0", _vocoder("--max-steps", "0"), r"max_steps " + RANGE),
    Case("train-vocoder-seed-beyond-64-bits", _vocoder("--seed", str(2**64)), r"seed must be in \[0, "),
    Case("train-vocoder-adam-b2-negative", _vocoder("--adam-b2", "-0.5"), r"adam_b2 must be in \[0, 1\)"),
    Case("train-vocoder-grad-clip-nan", _vocoder("--grad-clip", "nan"), r"grad_clip must be a finite number"),
    Case("train-vocoder-discriminator-unknown", _vocoder("--discriminator-kind", "cnn"), r"invalid choice"),
    Case("train-vocoder-preset-a-list", ("train-vocoder", "{in}/wavs", "--out", "{tmp}/run", *_config("cfg_preset_list.json")),
         r"unknown preset \('tiny',\)"),
    Case("train-vocoder-generator-unknown-key", _vocoder(*_config("cfg_generator_key.json")), r"bogus"),
]


def _write(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


def _dataset_variants(root: Path) -> None:
    data = root / "data"
    for name in ("ds_truncated", "ds_list", "ds_no_train", "ds_corrupt", "ds_shard_missing", "ds_only_test"):
        shutil.copytree(data, root / name)
    info = json.loads((data / "dataset.json").read_text())
    (root / "ds_truncated" / "dataset.json").write_text(json.dumps(info)[:50])
    (root / "ds_list" / "dataset.json").write_text("[1, 2]")
    (root / "ds_no_train" / "dataset.json").write_text(json.dumps({**info, "splits": {}}))
    (root / "ds_only_test" / "dataset.json").write_text(json.dumps({**info, "splits": {"test": info["splits"]["train"]}}))
    (root / "ds_corrupt" / "train-000000.tar").write_bytes(b"not a tar file " * 40)
    (root / "ds_shard_missing" / "train-000000.tar").unlink()
    make_synthetic_dataset(root / "data_fmax", 4, 2, frames=16, shards=1, mel=synthetic_mel_config(16).replace(fmax=7000.0))


def _runs(root: Path) -> None:
    run = root / "unet_run"
    train(root / "data", run, {"train": dict(preset="tiny", batch_size=2, lr=1e-3, max_steps=2, save_every=1,
                                             num_workers=0, val_every=0, sample_every=0, export_at_end=False)})
    shutil.copytree(run, root / "run_corrupt")
    for model in (root / "run_corrupt" / "checkpoints").glob("step-*/model.safetensors"):
        model.write_bytes(model.read_bytes()[:100])
    shutil.copytree(run, root / "run_bad_config")
    (root / "run_bad_config" / "config.json").write_text('{"format": "clipsonic-run", "vers')
    data = {"source": str((root / "data").resolve())}
    write_run(Run(root / "prior_run", "prior", PriorTask.resolve_config({"train": {"preset": "tiny"}}, data), data))
    wavs = str((root / "wavs").resolve())
    for name, mel in (("voc_run", MelConfig()), ("voc_run_fmax", MelConfig(fmax=7000.0))):
        data = {"source": wavs, "mel": mel.to_dict()}
        write_run(Run(root / name, "vocoder", VocoderTask.resolve_config({"train": {"preset": "tiny"}}, data), data))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_inputs")
    make_synthetic_dataset(root / "data", 8, 2, frames=16, shards=1)
    _dataset_variants(root)
    (root / "empty").mkdir()
    _write(root / "text.txt", "hello\n")
    t = np.arange(16000) / 16000
    for i in range(2):
        (root / "wavs").mkdir(exist_ok=True)
        soundfile.write(root / "wavs" / f"tone{i}.wav", 0.3 * np.sin(2 * np.pi * 440 * (i + 1) * t), 16000)
    _write(root / "broken_wavs" / "a.wav", b"RIFF but not really a wave file")
    _write(root / "pairs.csv", "image,caption\nred.png,a red square\n")
    _write(root / "pairs_bad.csv", "picture,words\nred.png,a red square\n")
    _write(root / "pairs_latin1.csv", "image,caption\nred.png,caf\xe9 sound\n".encode("latin-1"))
    (root / "images").mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(root / "images" / "red.png")
    configs = {"cfg_list.json": [1, 2], "cfg_section_int.json": {"train": 5},
               "cfg_unknown_section.json": {"trian": {"lr": 0.1}},
               "cfg_unknown_key.json": {"train": {"learning_rate": 0.1}},
               "cfg_wrong_type.json": {"train": {"lr": "fast"}}, "cfg_bool.json": {"train": {"keep_last": True}},
               "cfg_cond_dim.json": {"unet": {"cond_dim": 99}}, "cfg_unet_bad.json": {"unet": {"base_channels": -8}},
               "cfg_preset_list.json": {"train": {"preset": ["tiny"]}},
               "cfg_generator_key.json": {"generator": {"bogus": 1}}}
    for name, content in configs.items():
        _write(root / name, json.dumps(content))
    _write(root / "cfg_deep.json", "[" * 100_000 + "]" * 100_000)
    _write(root / "cfg_latin1.json", '{"train": {"preset": "tin\xe9"}}'.encode("latin-1"))
    _runs(root)
    return root


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, inputs, tmp_path, capsys):
    before = snapshot(inputs)
    check(dataclasses.replace(case, argv=tuple(a.replace("{in}", str(inputs)) for a in case.argv)), tmp_path, capsys)
    after = snapshot(inputs)
    assert after == before, f"{case.id} changed its inputs: {sorted(set(after.items()) ^ set(before.items()))}"
