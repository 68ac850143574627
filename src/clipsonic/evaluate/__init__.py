"""Evaluation like the paper: FAD and CLAP score per query mode (Table 1), guidance sweeps.

``run_evaluation(model_dir, data_dir, out_dir, EvalConfig(...))`` generates for every test clip
in every mode and guidance scale, embeds real, reconstructed and generated audio, and writes
``results.json``, ``results.md`` and ``guidance_sweep.png``. Listening tests live in
:mod:`clipsonic.listening`.
"""

from clipsonic.evaluate.config import ALL_MODES, TEXT_MODES, EvalConfig
from clipsonic.evaluate.report import Evaluation, SetResult
from clipsonic.evaluate.run import EvaluationError, run_evaluation

__all__ = ["ALL_MODES", "TEXT_MODES", "EvalConfig", "Evaluation", "EvaluationError", "SetResult", "run_evaluation"]
