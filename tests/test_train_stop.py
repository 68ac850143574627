"""Training you can stop (issue 13): SIGINT/SIGTERM finish the step, save a checkpoint and the export and exit
130/143 with one line, and the run resumes exactly; a second signal aborts; --max-time; the progress log line
when stderr is not a terminal."""

import logging
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import soundfile as sf
import torch
from support.bad_input import Case, check
from support.synthetic_dataset import make_synthetic_dataset
from test_vocoder import harmonic

from clipsonic.cli import main
from clipsonic.export import read_model_index
from clipsonic.models import MelUNet
from clipsonic.train import list_checkpoints, read_metrics, read_run, train
from clipsonic.train.checkpoint import find_checkpoint
from clipsonic.train.harness import LoopConfig
from clipsonic.train.stop import TrainingStopped

FLAGS = dict(preset="tiny", batch_size=4, lr=1e-3, num_workers=2, log_every=1, val_every=0, sample_every=0,
             save_every=1000, keep_last=10)


def config(**train):
    return {"train": {**FLAGS, **train}, "diffusion": {"prediction": "v"}}


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("ds") / "d", 12, 3, frames=16, shards=2, test_clips=4)


def weights(run, step, which="model"):
    return find_checkpoint(run, step).module(which)


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def interrupt(ds, run):
    """`clipsonic train` in its own process group, sent SIGINT as a terminal's Ctrl-C is (to the training process
    and its DataLoader workers) once its first progress line is out; (exit code, stderr)."""
    # Threads set as in this process (conftest: OMP_NUM_THREADS, then torch.set_num_threads), or the straight run
    # to compare with sums in another order (OMP_NUM_THREADS=2 alone differs from 1 then set_num_threads(2)).
    args = [sys.executable, "-m", "clipsonic", "train", str(ds.root), "--out", str(run), "--prediction", "v",
            "--threads", str(torch.get_num_threads()), "--max-steps", "400", "--progress-every", "0.001"]
    for key, value in FLAGS.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines = []
    for line in proc.stderr:  # a pipe, not a terminal: progress comes as log lines
        lines.append(line)
        if re.search(r"step \d+/400: loss [\d.e+-]+, [\d.]+ samples/s, \d+s elapsed, .* left", line):
            os.killpg(proc.pid, signal.SIGINT)
            break
    lines += proc.stderr.read().splitlines(keepends=True)
    return proc.wait(timeout=120), "".join(lines)


def test_sigint_saves_exports_and_resumes_exactly(ds, tmp_path):
    run = tmp_path / "run"
    rc, err = interrupt(ds, run)
    assert rc == 130, err
    (step, ckpt), = list_checkpoints(run)  # a first run with no checkpoint yet (save_every 1000): now it has one
    assert 1 <= step < 400
    last = err.splitlines()[-1]
    assert last == (f"clipsonic train: stopped by SIGINT after step {step} of 400: checkpoint {ckpt}, pipeline "
                    f"{run / 'pipeline'}; continue with the same command and --resume"), err
    assert "SIGINT: stopping after this step with a checkpoint" in err and "Traceback" not in err
    assert find_checkpoint(run).step == step and read_run(run).config.train.max_steps == 400
    assert read_model_index(run / "pipeline").training["steps"] == step
    MelUNet.from_pretrained(run / "pipeline" / "unet")
    assert max(r["step"] for r in read_metrics(run, "train")) == step

    straight = train(ds.root, tmp_path / "straight", config(max_steps=step + 2, save_every=step, export_at_end=False))
    assert_same_weights(weights(run, step), weights(straight, step))
    train(ds.root, run, config(max_steps=step + 2), resume=True)
    assert_same_weights(weights(run, step + 2), weights(straight, step + 2))
    assert_same_weights(weights(run, step + 2, "ema"), weights(straight, step + 2, "ema"))


class _SendOnProgress(logging.Handler):
    """Sends ``signum`` to this process when the first progress line is logged (the loop's handler is in place)."""

    def __init__(self, signum):
        super().__init__()
        self.signum, self.sent = signum, False

    def emit(self, record):
        if not self.sent and re.match(r"step \d+/", record.getMessage()):
            self.sent = True
            os.kill(os.getpid(), self.signum)


def test_sigterm_exits_143_without_export_when_asked(ds, tmp_path, capsys, caplog):
    run = tmp_path / "run"
    sender = _SendOnProgress(signal.SIGTERM)
    logging.getLogger("clipsonic.train.logs").addHandler(sender)
    caplog.set_level(logging.INFO)
    try:
        rc = main(["train", str(ds.root), "--out", str(run), "--preset", "tiny", "--batch-size", "4", "--num-workers",
                   "0", "--max-steps", "400", "--progress-every", "0.001", "--no-export-at-end"])
    finally:
        logging.getLogger("clipsonic.train.logs").removeHandler(sender)
    err = capsys.readouterr().err
    assert rc == 143 and sender.sent, err
    (step, ckpt), = list_checkpoints(run)
    assert err.splitlines()[-1] == (f"clipsonic train: stopped by SIGTERM after step {step} of 400: checkpoint "
                                    f"{ckpt}; continue with the same command and --resume")
    assert not (run / "pipeline").exists()


def test_library_call_restores_handlers_and_second_signal_aborts(ds, tmp_path):
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    def send(times):
        def progress(step, total, logged):
            if step == 2:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)  # at once: the same Ctrl-C forwarded by a launcher, ignored
                if times == 2:
                    time.sleep(0.6)
                    os.kill(os.getpid(), signal.SIGINT)
        return progress

    with pytest.raises(TrainingStopped) as stopped:
        train(ds.root, tmp_path / "once", config(num_workers=0, max_steps=50, export_at_end=False), progress=send(1))
    assert stopped.value.signum == signal.SIGINT and "after step 3 of 50" in str(stopped.value)
    assert [s for s, _ in list_checkpoints(tmp_path / "once")] == [3]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers

    with pytest.raises(KeyboardInterrupt) as aborted:  # the second Ctrl-C: at once, no checkpoint of its own
        train(ds.root, tmp_path / "twice", config(num_workers=0, max_steps=50), progress=send(2))
    assert not isinstance(aborted.value, TrainingStopped)
    assert not (tmp_path / "twice").exists()  # a first run with no checkpoint leaves nothing, as before
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def test_max_time_stops_with_checkpoint_and_export_and_resumes(ds, tmp_path, capsys, caplog):
    run = tmp_path / "run"
    argv = ["train", str(ds.root), "--out", str(run), "--preset", "tiny", "--batch-size", "4", "--num-workers", "0",
            "--val-every", "0", "--sample-every", "0"]
    with caplog.at_level(logging.INFO):
        assert main(argv + ["--max-steps", "100000", "--max-time", "1s", "--progress-every", "0.2"]) == 0
    (step, ckpt), = list_checkpoints(run)
    assert 1 <= step < 100000
    assert (f"stopped by the time budget (max_time 1s) after step {step} of 100000: checkpoint {ckpt}, pipeline "
            f"{run / 'pipeline'}; continue with the same command and --resume") in caplog.text
    assert read_model_index(run / "pipeline").training["steps"] == step
    assert read_run(run).config.train.max_time == "1s"
    # no terminal here (capsys): progress lines every 0.2 s, the time left bounded by the budget
    progress = re.findall(r"step (\d+)/100000: loss [\d.e+-]+, [\d.]+ samples/s, \d+s elapsed, (\d+)s left", caplog.text)
    assert progress and all(int(left) <= 1 for _, left in progress), caplog.text
    assert "\r" not in capsys.readouterr().err  # no tqdm bar
    # max_time and max_steps are stopping rules: resuming may change them ("0": no limit)
    assert main(argv + ["--max-steps", str(step + 1), "--max-time", "0", "--resume"]) == 0
    assert [s for s, _ in list_checkpoints(run)] == [step + 1, step]
    assert read_run(run).config.train.max_time == "0"


def test_max_time_in_train_vocoder(tmp_path, caplog):
    audio = tmp_path / "audio"
    audio.mkdir()
    for i in range(4):
        sf.write(audio / f"clip{i}.wav", harmonic(1.0, seed=i), 16000)
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        assert main(["train-vocoder", str(audio), "--out", str(run), "--preset", "tiny", "--batch-size", "2",
                     "--segment-size", "2048", "--val-segment-size", "4096", "--num-val", "2", "--max-steps", "100000",
                     "--max-time", "0.02m", "--progress-every", "0.1"]) == 0
    (step, _), = list_checkpoints(run)
    assert "stopped by the time budget (max_time 0.02m)" in caplog.text and (run / "vocoder").is_dir()
    assert re.search(r"step \d+/100000: loss [\d.e+-]+, [\d.]+ steps/s", caplog.text)  # its values are per step
    assert step < 100000


def test_durations():
    budget = {t: LoopConfig(max_time=t).time_budget() for t in ("90m", "2h", "3600", " 45S ", "1.5h", "0", "0s")}
    assert budget == {"90m": 5400, "2h": 7200, "3600": 3600, " 45S ": 45, "1.5h": 5400, "0": None, "0s": None}
    assert LoopConfig().time_budget() is None


BAD = [Case(f"{command}-max-time-{value}", (command, "{tmp}/data", "--out", "{tmp}/run", f"--max-time={value}"),
            rf"max_time '{re.escape(value)}' is not a duration; give seconds \(3600\) or a number with s, m or h")
       for command, value in (("train", "9x"), ("train", "-5m"), ("train-vocoder", "1.5d"), ("train-vocoder", "nan"))]


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.id)
def test_bad_max_time_is_one_line(case, ds, tmp_path, capsys):
    data = tmp_path / "data"
    if case.argv[0] == "train":
        data.symlink_to(ds.root)
    else:
        data.mkdir()
        sf.write(data / "a.wav", harmonic(1.0), 16000)
    check(case, tmp_path, capsys)
