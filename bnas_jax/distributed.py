"""Multi-process JAX: when and how `jax.distributed.initialize` is called.

One process per host (TPU VM worker, GPU node or, for tests, a local CPU
process) runs the same command. Which processes form a job is decided, first
match wins, by:

1. explicit settings: `--coordinator_address`, `--num_processes`, `--process_id`
   (or the environment variables BNAS_COORDINATOR, BNAS_NUM_PROCESSES,
   BNAS_PROCESS_ID), all three together;
2. `--jax_distributed` (or BNAS_JAX_DISTRIBUTED=1): JAX's cluster detection
   (Cloud TPU, SLURM, Open MPI, Kubernetes);
3. a Cloud TPU VM (libtpu found TPU chips): `jax.distributed.initialize()` with
   no arguments, as the Cloud TPU docs prescribe for every worker of a pod.

Otherwise the run is single-process. Processes that lose contact with the
coordinator for `heartbeat_timeout_seconds` are declared dead and the job's
other processes are stopped with an error instead of waiting forever in a
collective (JAX's coordination service). Multi-process runs on CPU exchange
data with gloo collectives over TCP (`jax_cpu_collectives_implementation`).
"""

import dataclasses
import logging
import os
import re
from typing import Optional

import jax

from bnas_jax.errors import UserInputError

ENV_COORDINATOR = "BNAS_COORDINATOR"
ENV_NUM_PROCESSES = "BNAS_NUM_PROCESSES"
ENV_PROCESS_ID = "BNAS_PROCESS_ID"
ENV_AUTO = "BNAS_JAX_DISTRIBUTED"
ENV_HEARTBEAT = "BNAS_HEARTBEAT_TIMEOUT_SECONDS"


@dataclasses.dataclass(frozen=True)
class Settings:
  """How to join a multi-process job; `mode` is "single", "explicit" or "auto"."""

  mode: str
  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None
  heartbeat_timeout_seconds: int = 100
  initialization_timeout_seconds: int = 300


def _int_setting(value, flag: str, env: str) -> Optional[int]:
  if value is None or value == "":
    return None
  try:
    return int(value)
  except (TypeError, ValueError):
    raise UserInputError(f"{flag} (or ${env}) must be an integer, got {value!r}.") from None


def _on_cloud_tpu_vm() -> bool:
  # Set at `import jax` when libtpu finds TPU chips on this machine.
  from jax._src import cloud_tpu_init  # pylint: disable=g-import-not-at-top

  return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def resolve(
  coordinator_address: Optional[str] = None,
  num_processes: Optional[int] = None,
  process_id: Optional[int] = None,
  auto: bool = False,
  heartbeat_timeout_seconds: Optional[int] = None,
  initialization_timeout_seconds: int = 300,
  environ: Optional[dict] = None,
) -> Settings:
  """Settings from flags (given) and environment variables (fallback); validated.

  Raises:
    UserInputError: a partial or inconsistent explicit setting.
  """
  env = os.environ if environ is None else environ
  address = coordinator_address or env.get(ENV_COORDINATOR) or None
  count = _int_setting(
    num_processes if num_processes is not None else env.get(ENV_NUM_PROCESSES),
    "--num_processes",
    ENV_NUM_PROCESSES,
  )
  index = _int_setting(
    process_id if process_id is not None else env.get(ENV_PROCESS_ID),
    "--process_id",
    ENV_PROCESS_ID,
  )
  heartbeat = _int_setting(
    heartbeat_timeout_seconds if heartbeat_timeout_seconds is not None else env.get(ENV_HEARTBEAT),
    "--heartbeat_timeout_seconds",
    ENV_HEARTBEAT,
  )
  heartbeat = 100 if heartbeat is None else heartbeat  # JAX's default
  if heartbeat < 1:
    raise UserInputError(f"--heartbeat_timeout_seconds={heartbeat} must be at least 1 second.")
  common = dict(
    heartbeat_timeout_seconds=heartbeat,
    initialization_timeout_seconds=initialization_timeout_seconds,
  )
  given = {"--coordinator_address": address, "--num_processes": count, "--process_id": index}
  if any(v is not None for v in given.values()):
    missing = [k for k, v in given.items() if v is None]
    if missing:
      raise UserInputError(
        f"A multi-process run needs --coordinator_address, --num_processes and --process_id "
        f"together (or ${ENV_COORDINATOR}, ${ENV_NUM_PROCESSES}, ${ENV_PROCESS_ID}); "
        f"{', '.join(missing)} not set. Give all three, or none for a single process."
      )
    if not re.fullmatch(r"\[?[A-Za-z0-9_.:-]+\]?:\d{1,5}", address):
      raise UserInputError(
        f"--coordinator_address={address!r} must be HOST:PORT of process 0 (e.g. "
        "10.0.0.2:8476 or localhost:8476), reachable from every process."
      )
    if count < 1 or not 0 <= index < count:
      raise UserInputError(
        f"--process_id={index} and --num_processes={count}: need num_processes >= 1 and "
        "0 <= process_id < num_processes, each process with its own id."
      )
    return Settings("explicit", address, count, index, **common)
  if auto or env.get(ENV_AUTO, "").lower() in ("1", "true", "yes") or _on_cloud_tpu_vm():
    return Settings("auto", **common)
  return Settings("single", **common)


def initialize(settings: Settings) -> None:
  """Joins the job described by `settings`; call before any other JAX work.

  On CPU the cross-process collectives are gloo's (JAX 0.10's default, set
  explicitly so a different default cannot leave CPU processes without
  collectives).

  Raises:
    UserInputError: auto mode was requested but no cluster environment exists.
  """
  if settings.mode == "single":
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = dict(
    heartbeat_timeout_seconds=settings.heartbeat_timeout_seconds,
    initialization_timeout=settings.initialization_timeout_seconds,
  )
  if settings.mode == "explicit":
    jax.distributed.initialize(
      coordinator_address=settings.coordinator_address,
      num_processes=settings.num_processes,
      process_id=settings.process_id,
      cluster_detection_method="deactivate",
      **kwargs,
    )
  else:
    try:
      jax.distributed.initialize(**kwargs)
    except ValueError as e:  # no cluster environment found
      raise UserInputError(
        f"--jax_distributed (or ${ENV_AUTO}) is set but JAX found no cluster to join ({e}). "
        "Run under SLURM, Open MPI or on a Cloud TPU VM, or give --coordinator_address, "
        "--num_processes and --process_id."
      ) from None
  logging.info(
    "Joined a %d-process JAX job as process %d.", jax.process_count(), jax.process_index()
  )
