#!/usr/bin/env bash
# The GPU rows of docs/benchmarks.md ("GPU") in one run that fits in 8 minutes on one H100/H200: paper-preset
# training (bf16, eager vs torch.compile), 10-s generation (default sampler, 25 steps + CFG + paper BigVGAN, batch
# 1 and 16), the distilled pipeline's 4 one-pass steps, and preprocessing (ViT-L/14-sized CLIP, mel front end).
# benchmarks/bench_gpu.py says what each row times. Rows print as they are measured and land in OUT_DIR/gpu.md (a
# markdown table) and OUT_DIR/gpu.json after each one; a section that fails loses only its own rows (exit 1).
#
#   benchmarks/gpu.sh [--tiny] [--out OUT_DIR] [--sections ...]   OUT_DIR: default $OUT, else out/gpu
#   --tiny: CPU, tiny sizes, ~25 s (tests/test_benchmarks_gpu.py runs it in make test).
#   PYTHON picks the interpreter (default .venv/bin/python when there is one, else python3); clipsonic is taken from
#   this checkout's src/, nothing is installed. GPU_BENCH_SECONDS (default 450) stops the Python part (SIGINT).
#
# On a GPU machine lent through the device tool (`run`; no network there): its python3 has torch with CUDA,
# transformers, numpy, scipy, matplotlib, accelerate..., but not av, soundfile, soxr, webdataset, bigvgan, librosa
# and a few of their needs. Fetch them once HERE as wheels for its Python 3.12 (~38 MB, into build/, git-ignored):
#   benchmarks/gpu.sh --fetch-wheels
# then call run with
#   command="bash benchmarks/gpu.sh", carry=["build/gpu-wheels"], timeout_s=560
# gpu.md and gpu.json come back from $OUT. A rerun of some sections: command="bash benchmarks/gpu.sh --sections
# train-compile". The script installs the carried wheels only when the interpreter lacks those modules.
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=build/gpu-wheels

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    # the versions this project's .venv runs; --no-deps: each one the GPU image lacks is named
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$wheels" \
        av==18.1.0 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 soxr==1.1.0 webdataset==1.0.2 braceexpand==0.1.7 \
        bigvgan==2.4.1 librosa==0.11.0 audioread==3.1.0 decorator==5.3.1 pooch==1.9.0 platformdirs==4.14.8
    du -sh "$wheels"
    exit 0
fi

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi
missing=$("$python" -c 'import importlib.util as u; print(*[m for m in ("av", "soundfile", "soxr", "webdataset",
    "bigvgan", "librosa") if u.find_spec(m) is None])')
if [[ -n "$missing" ]]; then
    if ! compgen -G "$wheels/*.whl" >/dev/null; then
        echo "gpu.sh: $python lacks $missing; run benchmarks/gpu.sh --fetch-wheels where pip has a network" \
             "and carry $wheels" >&2
        exit 2
    fi
    site=$(mktemp -d)
    "$python" -m pip install -q --root-user-action=ignore --no-index --no-deps --no-compile --no-cache-dir \
        --target "$site" "$wheels"/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # nothing is downloaded: all weights are random

args=("$@")
[[ " $* " == *" --out "* ]] || args+=(--out "${OUT:-out/gpu}")
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
fi
exec timeout --signal=INT --kill-after=30 "${GPU_BENCH_SECONDS:-450}" "$python" benchmarks/bench_gpu.py "${args[@]}"
