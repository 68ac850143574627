"""Shared test set-up. Shared helpers live in tests/support/ (this folder is on sys.path)."""

import os

# Tests never touch a model hub: every model is tiny and built inside the test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

# 2 CPU cores in CI: keep torch from oversubscribing when pytest runs alone.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Fixtures every module may use without importing them.
from support.tiny_clip import tiny_clip_dir  # noqa: E402, F401
