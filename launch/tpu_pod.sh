#!/usr/bin/env bash
# Runs one bnas_jax.main job on a Cloud TPU slice (one or many hosts): creates
# the TPU VMs through a queued resource, installs this checkout on every
# worker, runs the same command on all of them (`--worker=all`; JAX detects
# the pod and joins the workers) with the workdir on GCS, and deletes the TPU.
#
# Usage:
#   PROJECT=my-project ZONE=us-central2-b ACCELERATOR=v4-32 \
#   WORKDIR=gs://my-bucket/runs/nasbnn_imagenet \
#     launch/tpu_pod.sh --config=configs/nasbnn.py:imagenet \
#       --config.data.data_dir=gs://my-bucket/tensorflow_datasets
#
# Required environment:
#   PROJECT      Google Cloud project with TPU quota in ZONE
#   ZONE         e.g. us-central2-b (v4), us-east5-a (v5p), us-east1-d (v5e)
#   ACCELERATOR  slice type, e.g. v4-8 (1 host), v4-32 (4 hosts), v5p-64
#   WORKDIR      gs://bucket/path: checkpoints must be on storage all hosts see
# Optional environment:
#   TPU_NAME         queued resource and node id (default: bnas-$USER)
#   RUNTIME_VERSION  TPU VM image (default: tpu-ubuntu2204-base; v5e:
#                    v2-alpha-tpuv5-lite, v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e)
#   SPOT=1           request Spot TPUs (cheaper, preemptible: see below)
#   KEEP=1           do not delete the TPU at the end (re-run with STEPS=run)
#   STEPS            subset of "create install run delete" (default: all four)
#   PYTHON_VERSION   Python on the workers, installed with uv (default: 3.11)
#
# Preemption: a preempted Spot TPU sends SIGTERM; every worker checkpoints the
# same step to WORKDIR and exits 0. Running this script again with the same
# TPU_NAME and WORKDIR recreates the slice if needed and resumes the run.
# The run lasts as long as the ssh session: start the script inside tmux or
# screen (or with nohup) on a machine that stays up.
# The bucket must be in the TPU's region and writable by the TPU VM's
# service account (roles/storage.objectAdmin).
set -euo pipefail

: "${PROJECT:?set PROJECT}" "${ZONE:?set ZONE}" "${ACCELERATOR:?set ACCELERATOR}"
: "${WORKDIR:?set WORKDIR (gs://bucket/path)}"
if [[ $WORKDIR != gs://* ]]; then
  echo "WORKDIR must be a gs:// path every TPU host can read and write; got $WORKDIR" >&2
  exit 2
fi
TPU_NAME="${TPU_NAME:-bnas-${USER:-user}}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
STEPS="${STEPS:-create install run delete}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
gcloud_tpu=(gcloud compute tpus --project="$PROJECT")

step_enabled() { [[ " $STEPS " == *" $1 "* ]]; }

qr_state() {
  "${gcloud_tpu[@]}" queued-resources describe "$TPU_NAME" --zone="$ZONE" \
    --format='value(state.state)' 2>/dev/null || true
}

create() {
  case "$(qr_state)" in
    FAILED | SUSPENDED)  # e.g. a preempted Spot slice: replace it
      echo "queued resource $TPU_NAME is $(qr_state); recreating it" >&2
      delete ;;
  esac
  if [[ -z "$(qr_state)" ]]; then
    spot=()
    if [[ "${SPOT:-0}" == 1 ]]; then spot=(--spot); fi
    "${gcloud_tpu[@]}" queued-resources create "$TPU_NAME" --node-id="$TPU_NAME" \
      --zone="$ZONE" --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME_VERSION" \
      "${spot[@]}"
  fi
  echo "waiting for queued resource $TPU_NAME to become ACTIVE..." >&2
  while true; do
    state="$(qr_state)"
    case "$state" in
      ACTIVE) break ;;
      FAILED | SUSPENDED)
        echo "queued resource $TPU_NAME is $state; see" \
          "gcloud compute tpus queued-resources describe $TPU_NAME --zone=$ZONE" >&2
        exit 1 ;;
    esac
    sleep 30
  done
}

install() {
  archive="$(mktemp -t bnas_jax.XXXXXX.tar.gz)"
  # The checkout as it is (tracked and new files, no .git or caches).
  tar -C "$repo" --exclude=.git --exclude='__pycache__' --exclude='*.egg-info' --exclude=.pytest_cache -czf "$archive" .
  "${gcloud_tpu[@]}" tpu-vm scp "$archive" "$TPU_NAME:bnas_jax.tar.gz" --zone="$ZONE" --worker=all
  rm -f "$archive"
  "${gcloud_tpu[@]}" tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
    set -e
    rm -rf ~/bnas_jax && mkdir -p ~/bnas_jax && tar -C ~/bnas_jax -xzf ~/bnas_jax.tar.gz
    command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh
    export PATH=\$HOME/.local/bin:\$PATH
    uv venv --allow-existing --python $PYTHON_VERSION ~/bnas_venv
    uv pip install --python ~/bnas_venv/bin/python -e ~/bnas_jax 'jax[tpu]'
  "
}

run() {
  # Quote every flag for the remote shell; each worker runs the same command.
  remote_flags="$(printf '%q ' "--workdir=$WORKDIR" "$@")"
  "${gcloud_tpu[@]}" tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
    cd ~/bnas_jax && ~/bnas_venv/bin/python -m bnas_jax.main $remote_flags
  "
}

delete() {
  if [[ -n "$(qr_state)" ]]; then
    "${gcloud_tpu[@]}" queued-resources delete "$TPU_NAME" --zone="$ZONE" --force --quiet
  fi
}

if step_enabled delete && [[ "${KEEP:-0}" != 1 ]]; then
  trap delete EXIT  # also when a step fails: idle TPUs cost money
fi
if step_enabled create; then create; fi
if step_enabled install; then install; fi
if step_enabled run; then run "$@"; fi
