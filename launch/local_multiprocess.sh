#!/usr/bin/env bash
# Runs one bnas_jax.main job as NUM_PROCESSES processes on this machine, each
# with DEVICES_PER_PROCESS simulated CPU devices, joined through a localhost
# coordinator with gloo collectives: what a multi-host job does, on one box.
#
# Usage:
#   launch/local_multiprocess.sh NUM_PROCESSES DEVICES_PER_PROCESS MAIN_FLAGS...
# Example (2 processes x 2 devices = one 4-device data-parallel mesh):
#   launch/local_multiprocess.sh 2 2 --config=configs/reactnet.py --workdir=/tmp/mp
#
# Environment:
#   BNAS_PORT  coordinator port on localhost (default: a random port 20000-39999)
#   LOG_DIR    if set, process i writes its output to LOG_DIR/process_i.log and
#              its pid to LOG_DIR/process_i.pid; otherwise process 0 prints to
#              this terminal and the others log to a temporary directory
#              (their console output: the run's own lines; library log lines
#              go to WORKDIR/log.txt and WORKDIR/log.process_i.txt, or here
#              with --verbose)
#   PYTHON     interpreter (default: python3)
# Any other variable (e.g. BNAS_HEARTBEAT_TIMEOUT_SECONDS) reaches every process.
#
# Exit status: 0 if every process succeeded, else the first failing process's.
# SIGTERM/SIGINT to this script are forwarded to every process (a preemption
# drill: they agree on a step, checkpoint it and exit 0).
set -euo pipefail

if [[ $# -lt 2 || ! $1 =~ ^[1-9][0-9]*$ || ! $2 =~ ^[1-9][0-9]*$ ]]; then
  sed -n '2,24p' "$0" >&2
  exit 2
fi
num_processes=$1
devices_per_process=$2
shift 2

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
port="${BNAS_PORT:-$((20000 + RANDOM % 20000))}"
python="${PYTHON:-python3}"
if [[ -n "${LOG_DIR:-}" ]]; then
  log_dir="$LOG_DIR"
  mkdir -p "$log_dir"
  echo_logs=false
else
  log_dir="$(mktemp -d -t bnas_local_mp.XXXXXX)"
  echo_logs=true
  echo "processes 1..$((num_processes - 1)) log to $log_dir" >&2
fi

pids=()
# shellcheck disable=SC2329  # invoked by the traps below
forward() {
  kill -s "$1" "${pids[@]}" 2>/dev/null || true
}
trap 'forward TERM' TERM
trap 'forward INT' INT

for ((i = 0; i < num_processes; i++)); do
  export BNAS_COORDINATOR="localhost:$port" BNAS_NUM_PROCESSES="$num_processes" \
    BNAS_PROCESS_ID="$i" JAX_PLATFORMS=cpu \
    XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices_per_process"
  if [[ $i -eq 0 && $echo_logs == true ]]; then
    (cd "$repo" && exec "$python" -m bnas_jax.main "$@") &
  else
    (cd "$repo" && exec "$python" -m bnas_jax.main "$@") >"$log_dir/process_$i.log" 2>&1 &
  fi
  pids+=("$!")
  echo "$!" >"$log_dir/process_$i.pid"
done

status=0
for pid in "${pids[@]}"; do
  # `wait` returns early when a forwarded signal arrives; wait again until the
  # process is really gone.
  while true; do
    set +e
    wait "$pid"
    code=$?
    set -e
    if ! kill -0 "$pid" 2>/dev/null; then
      break
    fi
  done
  if [[ $code -ne 0 && $status -eq 0 ]]; then
    status=$code
  fi
done
exit "$status"
