"""Shared test set-up. Shared helpers live in tests/support/ (this folder is on sys.path)."""

import os

# Tests never touch a model hub: every model is tiny and built inside the test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# As the CLI does (clipsonic/cli/__init__.py): OpenMP threads sleep when idle, so the two xdist workers, the
# subprocesses they start and the two-thread demo never spin against each other. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# 2 CPU cores in CI: keep torch from oversubscribing. Alone, pytest uses both; under pytest-xdist (`make test`
# runs two workers) each worker gets its share, as torch's intra-op threads spin and two processes with two threads
# each on two cores run several times slower. Tests hand the same count to their subprocesses (OMP_NUM_THREADS).
THREADS = max(1, min(2, os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
# the same count in the environment, so subprocesses (exact-resume tests compare their weights with this process's)
# sum in the same order
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(THREADS)
import torch  # noqa: E402

torch.set_num_threads(THREADS)


def pytest_collection_modifyitems(items):
    # The SonicWorld demo (~8 of the suite's ~15 CPU minutes) first: under xdist one worker starts it at once while
    # the other takes the rest. Only this file: xdist hands each worker its first few files in order, so moving
    # every slow file to the front would give them all to the same worker.
    items.sort(key=lambda item: item.path.name != "test_sonicworld_demo.py")

# Fixtures every module may use without importing them.
from support.browser import browser, page  # noqa: E402, F401
from support.tiny_clip import tiny_clip_dir  # noqa: E402, F401
