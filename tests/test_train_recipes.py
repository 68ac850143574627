"""``train --preset``: what each preset sets (the help lists it), flags and --config over it, config.json reproducing
the run."""

import dataclasses
import re

import pytest

from clipsonic.cli import main
from clipsonic.models import UNET_PRESETS
from clipsonic.train.unet import RECIPE_UNET, RECIPES, RunConfig, TrainConfig, resolve_run_config


def test_the_cpu_recipe_sets_its_fields_and_the_flags_win():
    cfg = resolve_run_config(16, {"train": {"preset": "cpu"}})
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.ema, cfg.train.num_workers, cfg.train.max_steps,
            cfg.train.val_every, cfg.diffusion.prediction) == (1e-3, 16, 0.999, 0, 2000, 500, "v")
    assert cfg.unet == dataclasses.replace(UNET_PRESETS["tiny"], cond_dim=16, learn_sigma=True)
    mine = resolve_run_config(16, {"train": {"preset": "cpu", "lr": 5e-4, "max_steps": 10},
                                   "diffusion": {"prediction": "epsilon"}, "unet": {"base_channels": 16}})
    assert (mine.train.lr, mine.train.max_steps, mine.train.batch_size, mine.diffusion.prediction,
            mine.unet.base_channels) == (5e-4, 10, 16, "epsilon", 16)
    # the saved config.json as --config gives the same run, whatever the preset would set now
    assert resolve_run_config(16, mine.to_dict()) == mine
    assert resolve_run_config(16, cfg.to_dict()) == cfg


@pytest.mark.parametrize("preset", ["paper", "small", "tiny"])
def test_size_presets_set_only_the_unet(preset):
    cfg = resolve_run_config(16, {"train": {"preset": preset}})
    default = RunConfig.from_dict({"train": {}, "unet": {**UNET_PRESETS[preset].to_dict(), "cond_dim": 16},
                                   "diffusion": {}})
    assert cfg.train == TrainConfig(preset=preset) and cfg.diffusion == default.diffusion
    assert cfg.unet == default.unet


def test_help_names_what_each_preset_sets(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    text = text[text.rindex("--preset {"):text.rindex("--batch-size N ")]  # the preset's help
    for name, sections in RECIPES.items():
        assert f"{name}, " in text and f"a {RECIPE_UNET[name]} MelUNet" in text
        for values in sections.values():
            for key, value in values.items():
                shown = re.search(rf"(?<![\w-]){key} ([\w.-]+)", text)
                assert shown and (shown[1] == value if isinstance(value, str) else float(shown[1]) == value), key
    assert "paper, small, tiny: the MelUNet size" in text
