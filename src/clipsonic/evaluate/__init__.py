"""Evaluation like the paper: FAD, CLAP score and relevance per query mode (Table 1), guidance sweeps.
``run_evaluation(model_dir, data_dir, out_dir, EvalConfig(...), classifier=...)`` writes ``results.json``,
``results.md`` and ``guidance_sweep.png``. Listening tests: :mod:`clipsonic.listening`."""

from clipsonic.evaluate.config import EvalConfig
from clipsonic.evaluate.report import Evaluation, SetResult
from clipsonic.evaluate.run import run_evaluation
from clipsonic.evaluate.testset import load_captions

__all__ = ["EvalConfig", "Evaluation", "SetResult", "load_captions", "run_evaluation"]
