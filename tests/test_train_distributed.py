"""Two CPU processes (gloo) under `accelerate launch`: same weights on both ranks, disjoint data, exact resume."""

import json
import os
import socket
import subprocess
import sys

import pytest
from support.synthetic_dataset import make_synthetic_dataset

from clipsonic.train import list_checkpoints, read_metrics

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(ds, run, max_steps, *extra):
    # accelerate's --cpu alone starts one process; --multi_gpu uses torchrun, and clipsonic joins the
    # processes into a gloo group when there is no GPU.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", "clipsonic", "-q", "train", str(ds.root), "--out", str(run),
           "--preset", "tiny", "--batch-size", "3", "--lr", "1e-3", "--max-steps", str(max_steps), "--save-every", "2",
           "--num-workers", "1", "--log-every", "1", "--val-every", "0", "--sample-every", "0", "--prediction", "v",
           *extra]
    env = {**os.environ, "CLIPSONIC_DEBUG": "weight-hashes"}  # each process writes RUN/debug/weights-rankR.json
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((run / "debug" / f"weights-rank{r}.json").read_text()) for r in (0, 1)]


def test_two_processes(tmp_path):
    ds = make_synthetic_dataset(tmp_path / "d", 12, 3, frames=16, shards=1)  # one shard: sample-level split
    straight = launch(ds, tmp_path / "straight", 4, "--no-export-at-end")
    r0, r1 = straight
    assert r0["world_size"] == r1["world_size"] == 2 and r0["step"] == r1["step"] == 4
    assert r0["sha256"] == r1["sha256"]  # DDP kept the replicas equal
    epoch0 = 12 // 2  # each rank's share of one epoch
    assert set(r0["keys_seen"][:epoch0]).isdisjoint(r1["keys_seen"][:epoch0])
    assert len(set(r0["keys_seen"][:epoch0]) | set(r1["keys_seen"][:epoch0])) == 12
    ckpt = tmp_path / "straight" / "checkpoints" / "step-0000004"
    assert (ckpt / "rank-00000.safetensors").is_file() and (ckpt / "rank-00001.safetensors").is_file()

    run = tmp_path / "resumed"
    launch(ds, run, 2, "--no-export-at-end")
    resumed = launch(ds, run, 4, "--resume", "--export-at-end")  # the first part was started without
    assert resumed[0]["sha256"] == resumed[1]["sha256"] == r0["sha256"]
    assert resumed[0]["keys_seen"] == r0["keys_seen"][6:] and resumed[1]["keys_seen"] == r1["keys_seen"][6:]
    a = {r["step"]: r["loss"] for r in read_metrics(run, "train")}
    b = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "straight", "train")}
    assert sorted(a) == [1, 2, 3, 4] and all(a[s] == pytest.approx(b[s], rel=1e-5) for s in a)
    assert [s for s, _ in list_checkpoints(run)] == [4, 2]
    assert (run / "pipeline" / "model_index.json").is_file()  # rank 0 exported at the end
