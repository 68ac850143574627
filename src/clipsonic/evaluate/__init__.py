"""Evaluation like the paper: FAD and CLAP score per query mode (Table 1), guidance sweeps.

``run_evaluation(model_dir, data_dir, out_dir, EvalConfig(...))`` generates for every test clip
in every mode and guidance scale, embeds real, reconstructed and generated audio, and writes
``results.json``, ``results.md`` and ``guidance_sweep.png``. With a captions file the text modes
query with captions per label; with an :class:`AudioClassifier` every set gets a relevance score.
Listening tests live in :mod:`clipsonic.listening`.
"""

from clipsonic.evaluate.captions import load_captions
from clipsonic.evaluate.config import ALL_MODES, TEXT_MODES, EvalConfig
from clipsonic.evaluate.errors import EvaluationError
from clipsonic.evaluate.relevance import CLASSIFIERS, AudioClassifier, load_classifier
from clipsonic.evaluate.report import Evaluation, SetResult
from clipsonic.evaluate.run import run_evaluation

__all__ = ["ALL_MODES", "CLASSIFIERS", "TEXT_MODES", "AudioClassifier", "EvalConfig", "Evaluation", "EvaluationError",
           "SetResult", "load_captions", "load_classifier", "run_evaluation"]
