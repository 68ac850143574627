"""`clipsonic train` on the shared loop: exact resume, logs, faults (NaN, corrupt checkpoint, mismatched data),
runs and checkpoints from before version 2, CLI errors."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from support.synthetic_dataset import make_synthetic_dataset, synthetic_mel_config

from clipsonic.cli import main
from clipsonic.errors import ClipsonicError
from clipsonic.files import read_json
from clipsonic.train import export_run, list_checkpoints, read_metrics, read_run, resolve_run_config, train

# Tiny and fast: 12 clips of 16 frames, batches of 4, two DataLoader workers (their rotation and
# epoch boundaries are part of what resume must reproduce).
FLAGS = dict(preset="tiny", batch_size=4, lr=1e-3, num_workers=2, log_every=1, val_every=0, sample_every=0,
             save_every=10, keep_last=5, export_at_end=False)


def config(**train):
    """Config sections over FLAGS, with v-prediction."""
    return {"train": {**FLAGS, **train}, "diffusion": {"prediction": "v"}}


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("ds") / "d", 12, 3, frames=16, shards=2, test_clips=4)


@pytest.fixture(scope="module")
def straight(ds, tmp_path_factory):
    """40 steps in one go, with validation and samples on (they must not disturb the trajectory)."""
    run = tmp_path_factory.mktemp("runs") / "straight"
    train(ds.root, run, config(max_steps=40, save_every=20, val_every=20, sample_every=40, sample_steps=4, val_samples=4))
    return run


def losses(run):
    return {r["step"]: r["loss"] for r in read_metrics(run, "train")}


def weights(run, step, which="model"):
    return load_file(str(run / "checkpoints" / f"step-{step:07d}" / f"{which}.safetensors"))


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_straight_run_layout_and_logs(straight):
    assert [s for s, _ in list_checkpoints(straight)] == [40, 20]
    ckpt = straight / "checkpoints" / "step-0000040"
    names = sorted(str(p.relative_to(ckpt)) for p in ckpt.rglob("*") if p.is_file())
    assert names == ["ema.safetensors", "model.safetensors", "optimizers.safetensors", "rank-00000.safetensors",
                     "state.json"]
    assert not list(straight.rglob("*.pkl")) and not list(straight.rglob("*.pt")) and not list(straight.rglob("*.bin"))
    state = json.loads((ckpt / "state.json").read_text())
    assert (state["format"], state["version"], state["task"]) == ("clipsonic-checkpoint", 2, "unet")
    assert state["step"] == 40 and state["extra"]["samples_seen"] == 160
    record = read_json(straight / "config.json")
    assert (record["format"], record["version"], record["task"]) == ("clipsonic-run", 2, "unet")
    assert record["data"]["frames"] == 16 and record["data"]["clip"]["dim"] == 16 and record["train"]["lr"] == 1e-3
    train_records = read_metrics(straight, "train")
    assert [r["step"] for r in train_records] == list(range(1, 41))
    first, last = train_records[0], train_records[-1]
    assert {"loss", "mse", "vlb", "lr", "grad_norm", "samples_per_s"} <= first.keys()
    assert any(k.startswith("loss_q") for k in first)
    assert last["loss"] < first["loss"]
    val = read_metrics(straight, "val")
    assert [r["step"] for r in val] == [20, 40] and val[1]["mse"] < val[0]["mse"] and "ema_loss" in val[0]
    assert [r["step"] for r in read_metrics(straight, "sample")] == [40]
    assert (straight / "samples" / "step-0000040.png").stat().st_size > 1000
    assert (straight / "samples" / "step-0000040.wav").stat().st_size > 1000
    assert list((straight / "tensorboard").glob("events.out.tfevents.*"))
    # EMA differs from the weights but has moved away from the initial ones
    assert not torch.equal(weights(straight, 40)["conv_out.weight"], weights(straight, 40, "ema")["conv_out.weight"])
    assert weights(straight, 40, "ema")["conv_out.weight"].abs().sum() > 0  # zero-initialised layer


def test_resume_equals_straight(ds, straight, tmp_path):
    run = tmp_path / "resumed"
    train(ds.root, run, config(max_steps=20))
    train(ds.root, run, config(max_steps=40), resume=True)
    assert [s for s, _ in list_checkpoints(run)][0] == 40
    a, b = losses(run), losses(straight)
    assert sorted(a) == list(range(1, 41))
    for step in range(1, 41):
        assert a[step] == pytest.approx(b[step], rel=1e-5, abs=1e-7), step
    assert_same_weights(weights(run, 40), weights(straight, 40))
    assert_same_weights(weights(run, 40, "ema"), weights(straight, 40, "ema"))


def test_corrupt_last_checkpoint_falls_back(ds, straight, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    bad = run / "checkpoints" / "step-0000040" / "model.safetensors"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        train(ds.root, run, config(max_steps=40), resume=True)
    assert "skipping corrupt checkpoint" in caplog.text and "falling back to step-0000020" in caplog.text
    a, b = losses(run), losses(straight)
    assert sorted(a) == list(range(1, 41))  # steps 21-40 re-logged once, not twice
    assert all(a[s] == pytest.approx(b[s], rel=1e-5, abs=1e-7) for s in range(21, 41))
    assert_same_weights(weights(run, 40), weights(straight, 40))


def test_nan_mel_stops_with_step_and_clip_named(tmp_path):
    info = make_synthetic_dataset(tmp_path / "d", 4, 2, frames=16, shards=1, nan_keys=["clip-00002"])
    run = tmp_path / "run"
    with pytest.raises(ClipsonicError) as err:
        train(info.root, run, config(num_workers=0, max_steps=5, save_every=1, export_at_end=True))
    message = str(err.value)
    assert "step 1:" in message and "clip-00002 (NaN/inf in its mel)" in message
    assert "clip-00001" not in message  # only the bad clip is named
    assert list_checkpoints(run) == [] and not (run / "pipeline").exists()


def test_dataset_that_does_not_fit_the_run_is_refused(straight, tmp_path):
    other_mel = make_synthetic_dataset(tmp_path / "mel", 4, 2, frames=16, shards=1,
                                       mel=synthetic_mel_config(16).replace(fmax=7000.0))
    with pytest.raises(ClipsonicError) as err:
        train(other_mel.root, straight, config(max_steps=41), resume=True)
    assert str(other_mel.root) in str(err.value) and str(straight) in str(err.value) and "fmax" in str(err.value)
    other_dim = make_synthetic_dataset(tmp_path / "dim", 4, 2, frames=16, dim=8, shards=1)
    with pytest.raises(ClipsonicError, match="8-d.*expects 16-d"):
        train(other_dim.root, straight, config(max_steps=41), resume=True)
    other_clip = make_synthetic_dataset(tmp_path / "clip", 4, 2, frames=16, shards=1, clip_model="other/clip")
    with pytest.raises(ClipsonicError, match="other/clip"):
        train(other_clip.root, straight, config(max_steps=41), resume=True)
    assert [s for s, _ in list_checkpoints(straight)] == [40, 20]  # untouched


def test_run_dir_rules_and_resume_flags(ds, straight, tmp_path):
    with pytest.raises(ClipsonicError, match="already holds a run"):
        train(ds.root, straight, config())
    with pytest.raises(ClipsonicError, match="no run to resume"):
        train(ds.root, tmp_path / "new", config(), resume=True)
    with pytest.raises(ClipsonicError, match="lr=0.001; resuming with lr=0.01"):
        train(ds.root, straight, config(lr=1e-2), resume=True)
    with pytest.raises(ClipsonicError, match="diffusion.prediction='v'; resuming with diffusion.prediction='x0'"):
        train(ds.root, straight, {"diffusion": {"prediction": "x0"}}, resume=True)


def test_saved_config_reproduces_the_run(ds, straight, tmp_path):
    saved = read_run(straight).config
    assert saved.train.preset == "tiny" and saved.unet.cond_dim == 16 and saved.diffusion.prediction == "v"
    assert resolve_run_config(16, read_json(straight / "config.json")) == saved  # a run's config.json as --config
    partial = {"train": {"preset": "small", "batch_size": 8}, "unet": {"dropout": 0.0},
               "diffusion": {"p_uncond": 0.2, "prediction": "x0"}}
    cfg = resolve_run_config(16, partial)
    assert (cfg.train.preset, cfg.train.batch_size, cfg.unet.base_channels, cfg.unet.dropout) == ("small", 8, 64, 0.0)
    assert (cfg.diffusion.p_uncond, cfg.diffusion.prediction) == (0.2, "x0")
    with pytest.raises(ClipsonicError, match="unknown key.*'batch'"):
        resolve_run_config(16, {"train": {"batch": 8}})
    with pytest.raises(ClipsonicError, match="unknown key.*'trian'"):
        resolve_run_config(16, {"trian": {}})
    with pytest.raises(ClipsonicError, match="cond_dim=768 but the dataset needs 16"):
        resolve_run_config(16, {"unet": {"cond_dim": 768}})


def test_cli_errors_are_one_line(ds, straight, tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "not a clipsonic dataset" in capsys.readouterr().err
    assert main(["train", str(ds.root), "--out", str(straight), "--preset", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass --resume" in err
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage + one error line, exit 2
        main(["train", str(ds.root)])
    assert exit_info.value.code == 2 and "required: --out" in capsys.readouterr().err
    assert main(["export", str(tmp_path)]) == 2
    assert "not a clipsonic run directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "accelerate launch" in capsys.readouterr().out


def cli_args(ds, run, **overrides):
    flags = {**FLAGS, **overrides}
    args = [sys.executable, "-m", "clipsonic", "-q", "train", str(ds.root), "--out", str(run), "--prediction", "v"]
    for key, value in flags.items():
        args += [f"--{key.replace('_', '-')}"] if value is True else [f"--no-{key.replace('_', '-')}"] if value is False \
            else [f"--{key.replace('_', '-')}", str(value)]
    return args


def test_sigkill_during_save_then_resume(ds, straight, tmp_path):
    run = tmp_path / "killed"
    # threads set as for the straight run here (OMP_NUM_THREADS, then torch.set_num_threads in conftest): another
    # count, or OMP_NUM_THREADS=2 alone instead of 1 then set_num_threads(2), sums in another order (~1e-6 apart)
    threads = ["--threads", str(torch.get_num_threads())]
    env = {**os.environ, "CLIPSONIC_FAULT": "kill-in-save:20"}
    proc = subprocess.run(cli_args(ds, run, max_steps=40) + threads, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [s for s, _ in list_checkpoints(run)] == [10]
    assert (run / "checkpoints" / ".tmp-step-0000020" / "model.safetensors").is_file()  # half a save
    assert max(losses(run)) >= 20  # the killed run had logged past its last checkpoint
    proc = subprocess.run(cli_args(ds, run, max_steps=40) + threads + ["--resume"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert not (run / "checkpoints" / ".tmp-step-0000020").exists()
    assert [s for s, _ in list_checkpoints(run)] == [40, 30, 20, 10]
    a, b = losses(run), losses(straight)
    assert sorted(a) == list(range(1, 41))
    assert all(a[s] == pytest.approx(b[s], rel=1e-5, abs=1e-7) for s in range(1, 41))
    assert_same_weights(weights(run, 40), weights(straight, 40))


def test_bf16_autocast_run(ds, tmp_path):
    run = tmp_path / "bf16"
    args = cli_args(ds, run, max_steps=3, num_workers=0, val_every=3, sample_every=3, precision="bf16")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)  # own process: one precision each
    assert proc.returncode == 0, proc.stderr
    assert all(r["loss"] is not None for r in read_metrics(run, "train") + read_metrics(run, "val"))
    assert read_run(run).config.train.precision == "bf16"
    assert [s for s, _ in list_checkpoints(run)] == [3]


def test_out_of_memory_names_the_batch_size(ds, tmp_path, monkeypatch):
    from clipsonic.diffusion import GaussianDiffusion

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(GaussianDiffusion, "training_losses", oom)
    with pytest.raises(ClipsonicError, match=r"step 1: out of GPU memory at --batch-size 4 .*e\.g\. 2\).*--grad-accum"):
        train(ds.root, tmp_path / "oom", config(num_workers=0, max_steps=2))
    assert list_checkpoints(tmp_path / "oom") == []


def _old_run(root, files):
    """A minimal run folder of an older clipsonic: ``files`` maps relative paths to JSON contents."""
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(json.dumps(content))
    return root


OLD_CHECKPOINT = {"format": "clipsonic-checkpoint", "version": 1, "step": 10, "world_size": 1, "files": {}}


@pytest.mark.parametrize("kind", ["unet", "prior", "vocoder"])
def test_runs_from_before_version_2_fail_in_one_line(ds, tmp_path, kind):
    layouts = {  # what each trainer wrote before the shared loop
        "unet": {"config.json": {"train": {"preset": "tiny"}, "unet": {}, "diffusion": {}},
                 "run.json": {"dataset": str(ds.root)}, "checkpoints/step-0000010/state.json": OLD_CHECKPOINT},
        "prior": {"train_config.json": {"train": {"preset": "tiny"}, "clip_model": {}, "source": str(ds.root)},
                  "checkpoints/step-0000010/state.json": OLD_CHECKPOINT},
        "vocoder": {"train_config.json": {"train": {"preset": "tiny"}, "mel": {}, "generator": {}},
                    "checkpoints/step-00000010/state.json": {"step": 10, "optimizers": {}}},
    }
    run = _old_run(tmp_path / kind, layouts[kind])
    with pytest.raises(ClipsonicError) as err:
        export_run(run)
    message = str(err.value)
    assert "\n" not in message and "version 1" in message and "version 2" in message
    assert "export it with the clipsonic that wrote it" in message
    if kind == "unet":
        with pytest.raises(ClipsonicError, match="is a run of clipsonic-run version 1"):
            train(ds.root, run, config(), resume=True)


def test_checkpoint_of_another_version_is_refused_not_skipped(ds, straight, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    state = run / "checkpoints" / "step-0000040" / "state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "version": 1}))
    with pytest.raises(ClipsonicError, match=r"step-0000040 is clipsonic-checkpoint version 1.*reads clipsonic-checkpoint "
                                             r"version 2"):
        train(ds.root, run, config(max_steps=50), resume=True)
    assert [s for s, _ in list_checkpoints(run)] == [40, 20]


# --- issue 15: the lock, refusing to resume from nothing, verified checkpoints, torn logs, failed runs -----------

def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_second_writer_is_refused_naming_the_holder(ds, straight, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    before = _files(run)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)", str(run)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ClipsonicError, match=rf"{run} is in use by another clipsonic process \(pid {holder.pid}\)"):
            train(ds.root, run, config(max_steps=50), resume=True)
    finally:
        holder.kill()
        holder.wait()
    assert _files(run) == before
    train(ds.root, run, config(max_steps=41, save_every=41), resume=True)  # the lock died with its holder
    assert [s for s, _ in list_checkpoints(run)][0] == 41


def test_resume_with_every_checkpoint_corrupt_is_refused_then_restart(ds, straight, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    for model in (run / "checkpoints").glob("step-*/model.safetensors"):
        model.write_bytes(model.read_bytes()[:-8])
    before = _files(run)
    with pytest.raises(ClipsonicError, match="no readable checkpoint to resume from.*nothing was changed.*--restart"):
        train(ds.root, run, config(max_steps=50), resume=True)
    assert _files(run) == before  # metrics.jsonl, both checkpoints, config.json: all kept
    with caplog.at_level(logging.WARNING):
        train(ds.root, run, config(max_steps=3, save_every=3), restart=True)
    assert "--restart: discarded" in caplog.text
    assert [s for s, _ in list_checkpoints(run)] == [3] and sorted(losses(run)) == [1, 2, 3]
    assert read_run(run).config.train.max_steps == 3 and (run / "samples").exists() is False


def test_nan_weights_in_the_newest_checkpoint_fall_back(ds, straight, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    path = run / "checkpoints" / "step-0000040" / "ema.safetensors"
    tensors = load_file(str(path))
    tensors["conv_out.weight"][0] = float("nan")
    save_file(tensors, str(path))  # same size: only the contents show it
    with caplog.at_level(logging.WARNING):
        train(ds.root, run, config(max_steps=40), resume=True)
    assert "ema.safetensors: tensor 'conv_out.weight' holds NaN or infinite values" in caplog.text
    assert "falling back to step-0000020" in caplog.text
    assert_same_weights(weights(run, 40, "ema"), weights(straight, 40, "ema"))  # re-trained from step 20


def test_torn_last_metrics_line_is_dropped_on_resume(ds, straight, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    good = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(good + '{"step": 41, "kind": "tr')  # a kill in the middle of a write
    with caplog.at_level(logging.WARNING):
        assert len(read_metrics(run)) == len(read_metrics(straight))
        train(ds.root, run, config(max_steps=40), resume=True)
    assert "dropping its last line" in caplog.text
    assert (run / "metrics.jsonl").read_text() == good
    (run / "metrics.jsonl").write_text('{"step": 1}\nnot json\n' + good)
    with pytest.raises(ClipsonicError, match=r"metrics\.jsonl: line 2 is not a metrics record"):
        train(ds.root, run, config(max_steps=40), resume=True)


def test_failed_first_run_leaves_nothing_and_failed_resume_keeps_config(ds, straight, tmp_path, monkeypatch):
    from clipsonic.diffusion import GaussianDiffusion

    real = GaussianDiffusion.training_losses
    monkeypatch.setattr(GaussianDiffusion, "training_losses", lambda *a, **k: (_ for _ in ()).throw(ValueError("x")))
    run = tmp_path / "first"
    with pytest.raises(ValueError):
        train(ds.root, run, config(num_workers=0, max_steps=3))
    assert not run.exists()  # no config.json, metrics or TensorBoard left to refuse the same command
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    before = _files(resumed)
    with pytest.raises(ValueError):
        train(ds.root, resumed, config(num_workers=0, max_steps=50), resume=True)
    assert _files(resumed)["config.json"] == before["config.json"]  # max_steps 50 is written with a checkpoint only
    monkeypatch.setattr(GaussianDiffusion, "training_losses", real)
    leftovers = tmp_path / "killed-early"  # what a run killed before its first checkpoint leaves
    (leftovers / "tensorboard").mkdir(parents=True)
    (leftovers / "metrics.jsonl").write_text('{"step": 1, "kind": "train", "loss": 1.0}\n')
    train(ds.root, leftovers, config(num_workers=0, max_steps=2))  # the same command is accepted
    assert sorted(losses(leftovers)) == [1, 2] and read_run(leftovers).config.train.max_steps == 2


def test_largest_seed_trains(ds, tmp_path):
    run = train(ds.root, tmp_path / "run", config(num_workers=0, max_steps=1, seed=2**63 - 1))
    assert read_run(run).config.train.seed == 2**63 - 1 and sorted(losses(run)) == [1]
