"""Listening tests as in the paper: a static page for listeners, MOS ± 95% CI for the experimenter.
``make_listening_test`` builds the page (no server; system names hidden), ``score_answers`` turns the CSVs
listeners send back into MOS per system and criterion (fidelity, relevance)."""

from clipsonic.listening.make import make_listening_test, read_key
from clipsonic.listening.score import MosResult, format_table, mean_ci, score_answers, write_results

__all__ = ["MosResult", "format_table", "make_listening_test", "mean_ci", "read_key", "score_answers",
           "write_results"]
