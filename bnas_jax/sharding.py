"""Data parallelism over a 1-D device mesh with `jax.jit` + `NamedSharding`.

The batch is sharded over the mesh's "data" axis and everything else (params,
batch statistics, optimizer state) is replicated. Batch normalization inside a
jitted step then sees the global batch, so a step on N devices computes what
one device would. Global arrays are assembled from each process's local rows
(`jax.make_array_from_process_local_data`), so the same code runs multi-host.
"""

import os
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from bnas_jax.errors import UserInputError

DATA_AXIS = "data"


def use_one_cpu_device_per_core() -> None:
  """Before JAX starts: one XLA host device per CPU core unless set explicitly.

  XLA:CPU runs a convolution on about one core per device. A conv-heavy step
  split over 2 host devices ran ~1.8x faster than on one on these 2-core
  machines; for the tiny digits ReActNet at batch 64 the split was ~1.2x slower
  (per-step overhead dominates) and about even at batch 256 (see
  benchmarks/README.md). Set XLA_FLAGS yourself or `--config.num_devices=1` to
  choose otherwise. The flag only affects the host platform; TPU/GPU ignore it.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags:
    count = os.cpu_count() or 1
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A ("data",) mesh over all devices (or the first `num_devices`)."""
  devices = jax.devices()
  if num_devices and jax.process_count() > 1 and num_devices != len(devices):
    raise UserInputError(
      f"num_devices={num_devices} with {jax.process_count()} processes: a multi-process run "
      f"uses all {len(devices)} devices of the job (every process feeds its own devices); "
      "leave num_devices=0."
    )
  if num_devices:
    if num_devices > len(devices):
      raise UserInputError(
        f"num_devices={num_devices} but only {len(devices)} devices are visible."
      )
    devices = devices[:num_devices]
  return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: jax.sharding.Mesh, what: str) -> None:
  """Raises `UserInputError` unless the batch splits evenly over devices and hosts."""
  n = mesh.size
  if global_batch_size <= 0 or global_batch_size % n:
    raise UserInputError(
      f"{what}={global_batch_size} must be a positive multiple of the number of devices "
      f"({n}) because the batch is split evenly over the mesh's data axis; choose e.g. "
      f"{max(n, (global_batch_size // n) * n or n)}."
    )
  if global_batch_size % jax.process_count():
    raise UserInputError(
      f"{what}={global_batch_size} must be divisible by the process count ({jax.process_count()})."
    )


def global_batch(local_batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, Any]:
  """Turns this process's rows of a batch into global arrays sharded over "data"."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def init_replicated(init_fn: Callable[..., Any], mesh: jax.sharding.Mesh, *args: Any) -> Any:
  """Runs `init_fn(*args)` so its outputs are born replicated on the mesh.

  Shapes first (`jax.eval_shape`), then one jit with `out_shardings`: nothing
  is materialized on the host and then copied.
  """
  shapes = jax.eval_shape(init_fn, *args)
  shardings = jax.tree.map(lambda _: replicated(mesh), shapes)
  return jax.jit(init_fn, out_shardings=shardings)(*args)
