r"""Command-line entry point; intentionally short, the logic lives in trainers.

  python -m bnas_jax.main --config=configs/reactnet.py[:preset] --workdir=DIR \
      [--config.field=value ...]

`config.trainer` names the module in `bnas_jax.trainers` whose
`train_and_evaluate(config, workdir)` runs the job. `prepare` checks the
launch first: every config field against its declared rule
(`bnas_jax/config_validation.py`), the run directory, then the trainer's own
`validate`. Bad input (a broken config file, unknown keys or presets,
out-of-range values, datasets, impossible shapes, batch sizes, an unwritable
workdir or one holding a run of another config) prints one paragraph, and
nothing else, and exits with status 2 before any compute; nothing is written.
Library log lines (absl, JAX, orbax, XLA) go to WORKDIR/log.txt (`--verbose`:
to the console). SIGTERM checkpoints the current step and exits 0; the same
command resumes. Multi-process flags: see `bnas_jax/distributed.py` and the
README's "Multi-host and launch".
"""

import dataclasses
import importlib
import logging
import os
import types
from typing import Optional

from bnas_jax import cli
from bnas_jax import compile_cache
from bnas_jax import config_validation
from bnas_jax import distributed
from bnas_jax import preemption
from bnas_jax import run_directory
from bnas_jax import sharding

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF is imported only for metric writers
sharding.use_one_cpu_device_per_core()  # before JAX initialises its backends

from absl import flags  # pylint: disable=g-import-not-at-top
import jax
from ml_collections import config_flags


def define_flags(
  flag_values: flags.FlagValues = flags.FLAGS, sys_argv: Optional[list[str]] = None
) -> None:
  """This CLI's flags (`sys_argv`: where `--config.KEY` overrides are found; tests)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.", **fv)
  flags.DEFINE_bool(
    "verbose",
    False,
    "Show library log lines (absl, JAX, orbax, XLA) on the console instead of "
    "writing them to WORKDIR/log.txt.",
    **fv,
  )
  flags.DEFINE_bool(
    "force_resume",
    False,
    "Continue the run in --workdir although its recorded config differs.",
    **fv,
  )
  flags.DEFINE_bool(
    "jax_distributed",
    False,
    "Join a multi-process job found by JAX's cluster detection (SLURM, Open "
    "MPI, Kubernetes, Cloud TPU; Cloud TPU VMs join automatically). Env: "
    f"{distributed.ENV_AUTO}=1.",
    **fv,
  )
  flags.DEFINE_string(
    "coordinator_address",
    None,
    f"HOST:PORT of process 0 of a multi-process job (env {distributed.ENV_COORDINATOR}).",
    **fv,
  )
  flags.DEFINE_integer(
    "num_processes",
    None,
    f"Number of processes of the job (env {distributed.ENV_NUM_PROCESSES}).",
    **fv,
  )
  flags.DEFINE_integer(
    "process_id",
    None,
    f"This process's id in 0..num_processes-1 (env {distributed.ENV_PROCESS_ID}).",
    **fv,
  )
  flags.DEFINE_integer(
    "heartbeat_timeout_seconds",
    None,
    "A process silent this long is declared dead and the job stops with an "
    f"error (default 100; env {distributed.ENV_HEARTBEAT}).",
    **fv,
  )
  config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file, optionally with :preset.",
    lock_config=True,
    sys_argv=sys_argv,
    **fv,
  )
  flags.mark_flags_as_required(["config", "workdir"], **fv)


@dataclasses.dataclass(frozen=True)
class Launch:
  """A validated launch: the trainer module to run and the config snapshot to record."""

  trainer: types.ModuleType
  snapshot: Optional[run_directory.Snapshot]


def prepare(fv: flags.FlagValues) -> Launch:
  """Every check of a launch, before anything is computed or written.

  Each config field against its declared rule (`config_validation`), the run
  directory (`run_directory.check`), then the trainer's own `validate` (data,
  shapes, search space).

  Raises:
    UserInputError: the first of these checks that fails.
  """
  config = fv.config
  config_validation.validate_for_file(config, config_flags.get_config_filename(fv["config"]))
  trainer = importlib.import_module(f"bnas_jax.trainers.{config.trainer}")
  snapshot = run_directory.check(config, fv.workdir, force_resume=fv.force_resume)
  trainer.validate(config, sharding.make_mesh(config.get("num_devices", 0)))
  return Launch(trainer, snapshot)


def main(argv: list[str], fv: Optional[flags.FlagValues] = None) -> None:
  fv = flags.FLAGS if fv is None else fv
  if len(argv) > 1:
    cli.fail(f"Unexpected positional arguments {argv[1:]!r}; all options are --flags.")
  library_logs = cli.LibraryLogs(verbose=fv.verbose)  # quiet until validation passes
  with cli.user_errors_exit():
    settings = distributed.resolve(
      fv.coordinator_address,
      fv.num_processes,
      fv.process_id,
      fv.jax_distributed,
      fv.heartbeat_timeout_seconds,
    )
    distributed.initialize(settings)
  preemption.install_handler()
  logging.info(
    "JAX %s, process %d/%d, devices: %s",
    jax.__version__,
    jax.process_index(),
    jax.process_count(),
    jax.devices(),
  )
  with cli.user_errors_exit():
    launch = prepare(fv)
    compile_cache.configure(fv.config.get("compile_cache"))
  # Validation passed: only now does the run leave anything on disk.
  run_directory.create(fv.workdir)
  run_directory.record(launch.snapshot)
  library_logs.to_file(fv.workdir, jax.process_index())
  with cli.user_errors_exit():
    try:
      launch.trainer.train_and_evaluate(fv.config, fv.workdir)
    except preemption.Preempted as e:
      print(e, flush=True)  # exit status 0: the scheduler may restart the same command


if __name__ == "__main__":
  define_flags()
  cli.run(main)
