"""Flags generated from config dataclasses (``clipsonic.cli.options``) and the field checks in ``Config``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from typing import Annotated, Literal

import pytest
import torch

from clipsonic.cli import main
from clipsonic.cli.options import add_config_flags, deprecated_alias, overrides
from clipsonic.config import Config, ConfigError, NonNegative, PositiveInt, Range, Seed
from clipsonic.errors import ClipsonicError


@dataclasses.dataclass(frozen=True)
class Inner(Config):
    depth: int = 2  # layers per block


@dataclasses.dataclass(frozen=True)
class Toy(Config):
    """A config with one field of every kind a flag can say."""

    # Parameters per step
    # (two comment lines).
    batch_size: int = 64
    lr: float = 1e-4  # AdamW, 100 % of the paper's
    precision: Literal["no", "bf16", "fp16"] = "no"
    modes: tuple[Literal["iq", "zs"], ...] = ()
    sweep: tuple[float, ...] = (1.0, 3.0)
    ema_warmup: bool = True  # warm the EMA up
    steps: int | None = None
    inner: Inner = Inner()

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toy")
    add_config_flags(parser, Toy, "train")
    add_config_flags(parser, Inner, "train.inner")
    deprecated_alias(parser, "--bs", "--batch-size", type=int, dest="train.batch_size")
    return parser


def test_flags_types_choices_and_help_come_from_the_dataclass(capsys):
    parser = _parser()
    args = parser.parse_args(["--batch-size", "8", "--no-ema-warmup", "--modes", "iq,zs", "--sweep", "0,1.5",
                              "--precision", "bf16", "--steps", "3", "--depth", "4"])
    assert overrides(args) == {"train": {"batch_size": 8, "ema_warmup": False, "modes": ("iq", "zs"),
                                         "sweep": (0.0, 1.5), "precision": "bf16", "steps": 3,
                                         "inner": {"depth": 4}}}
    assert Toy.from_dict(overrides(args)["train"]).inner == Inner(depth=4)
    with pytest.raises(SystemExit):
        parser.parse_args(["--precision", "fp8"])  # choices from the Literal
    with pytest.raises(SystemExit):
        parser.parse_args(["--sweep", "a,b"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Parameters per step (two comment lines). (default 64)" in text
    assert "AdamW, 100 % of the paper's (default 0.0001)" in text
    assert "--ema-warmup, --no-ema-warmup warm the EMA up" in text
    assert "(default 1.0,3.0)" in text and "{no,bf16,fp16}" in text and "--bs" not in text


def test_only_given_flags_reach_the_overrides_over_a_config_file(tmp_path, caplog):
    (tmp_path / "c.json").write_text(json.dumps({"train": {"lr": 0.5, "batch_size": 4}, "unet": {"dropout": 0.1}}))
    parser = _parser()
    assert overrides(parser.parse_args([])) == {}
    args = parser.parse_args(["--bs", "2"])
    assert "--bs is deprecated; use --batch-size" in caplog.text
    assert overrides(args, tmp_path / "c.json") == {"train": {"lr": 0.5, "batch_size": 2}, "unet": {"dropout": 0.1}}
    (tmp_path / "bad.json").write_text("[1]")
    with pytest.raises(ConfigError, match="JSON object"):
        overrides(args, tmp_path / "bad.json")


def test_literal_fields_are_checked_before_post_init():
    with pytest.raises(ConfigError, match="unknown precision 'fp8'; choose one of no, bf16, fp16"):
        Toy(precision="fp8")
    with pytest.raises(ConfigError, match="unknown modes 'knn'"):
        Toy(modes=("iq", "knn"))
    with pytest.raises(ConfigError, match=r"c.json: Toy: unknown precision"):
        Toy.from_dict({"precision": "x"}, source="c.json")
    with pytest.raises(ValueError, match="batch_size"):
        Toy(batch_size=0)  # the subclass's own check still runs
    assert Toy(steps=None, modes=("zs",)).modes == ("zs",)


@dataclasses.dataclass(frozen=True)
class Ranged(Config):
    count: PositiveInt = 1
    share: Annotated[float, Range(0, 1, high_open=True)] = 0.0
    seeds: tuple[Seed, ...] = ()
    limit: NonNegative | None = None
    nested: tuple[tuple[int, ...], ...] = ((1, 2),)


@pytest.mark.parametrize("changes, message", [
    ({"count": 0}, "Ranged: count must be >= 1, got 0"),
    ({"count": 2.0}, "count must be an integer, got 2.0"),
    ({"count": True}, "count must be an integer, got True"),
    ({"share": 1.0}, r"share must be in \[0, 1\), got 1.0"),
    ({"share": float("nan")}, "share must be a finite number, got nan"),
    ({"share": "0.5"}, "share must be a number, got '0.5'"),
    ({"seeds": (1, 2**64)}, f"seeds must be in \\[0, {2**63 - 1}\\], got {2**64}"),
    ({"seeds": 3}, "seeds must be a list, got 3"),
    ({"limit": -1.0}, "limit must be >= 0, got -1.0"),
    ({"limit": float("inf")}, "limit must be a finite number"),
    ({"nested": ((1, "x"),)}, "nested must be an integer, got 'x'"),
])
def test_every_field_is_checked_with_its_range_in_the_message(changes, message):
    with pytest.raises(ConfigError, match=message):
        Ranged(**changes)


def test_a_config_file_gets_the_same_checks_and_keeps_nested_lists_as_tuples(tmp_path):
    assert Ranged.from_dict({"limit": None, "nested": [[3], [4, 5]]}).nested == ((3,), (4, 5))
    (tmp_path / "r.json").write_text(json.dumps({"count": -3}))
    with pytest.raises(ConfigError, match=r"r.json: Ranged: count must be >= 1, got -3"):
        Ranged.load(tmp_path / "r.json")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ClipsonicError, match="deep.json: not a readable Ranged config .nested too deeply."):
        Ranged.load(tmp_path / "deep.json")


def test_threads_sets_torch_and_the_children_and_refuses_nonsense(tmp_path, capsys, monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    try:
        with pytest.raises(SystemExit) as exit_:
            main(["mel", str(tmp_path / "missing.wav"), "--threads", "0"])
        assert exit_.value.code == 2 and "'0' is not a whole number >= 1" in capsys.readouterr().err
        assert main(["mel", str(tmp_path / "missing.wav"), "-o", str(tmp_path / "m.npy"), "--threads", "1"]) == 2
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)
    # a fresh `clipsonic` process sleeps its idle OpenMP threads unless the user chose otherwise
    probe = "import os, clipsonic.cli; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True).stdout == "PASSIVE\n"
