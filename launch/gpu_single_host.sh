#!/usr/bin/env bash
# Runs one bnas_jax.main job on all GPUs of this machine: one process, one
# data-parallel mesh over every visible GPU (batch split over devices, state
# replicated; BN statistics over the global batch).
#
# Usage:
#   WORKDIR=/data/runs/reactnet launch/gpu_single_host.sh --config=configs/reactnet.py:imagenet \
#     --config.data.data_dir=/data/tensorflow_datasets
#
# Environment:
#   WORKDIR               required; a local or gs:// directory
#   CUDA_VISIBLE_DEVICES  optional; restricts the GPUs used (e.g. 0,1,2,3)
#   PYTHON                interpreter with bnas_jax and jax[cuda12] installed
#                         (default: python3). Install once with:
#                           pip install -e . 'jax[cuda12]'
#
# The global batch size (--config.batch_size) must be a multiple of the
# number of GPUs. SIGTERM (e.g. from a job scheduler) checkpoints the current
# step and exits 0; running the same command again resumes.
set -euo pipefail

: "${WORKDIR:?set WORKDIR}"
python="${PYTHON:-python3}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "no NVIDIA GPU visible (nvidia-smi -L failed); check the driver" >&2
  exit 2
fi
nvidia-smi -L >&2

export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
cd "$repo"
# exec: the scheduler's SIGTERM reaches the Python process directly.
exec "$python" -m bnas_jax.main --workdir="$WORKDIR" "$@"
