r"""Command-line entry point; intentionally short, the logic lives in trainers.

  python -m bnas_jax.main --config=configs/reactnet.py[:preset] --workdir=DIR \
      [--config.field=value ...]

`config.trainer` names the module in `bnas_jax.trainers` whose
`train_and_evaluate(config, workdir)` runs the job. Bad input (unknown config
keys or presets, datasets, impossible shapes, batch sizes) prints one paragraph
and exits with status 2 before any compute.
"""

import importlib
import os
import logging
import sys

from bnas_jax import cli
from bnas_jax import sharding

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF is imported only for metric writers
sharding.use_one_cpu_device_per_core()  # before JAX initialises its backends

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
from ml_collections import config_flags

flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.DEFINE_bool("jax_distributed", False,
                  "Call jax.distributed.initialize() (multi-host runs; auto-detected on Cloud TPU).")
config_flags.DEFINE_config_file("config", None, "Config file, optionally with :preset.",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    cli.fail(f"Unexpected positional arguments {argv[1:]!r}; all options are --flags.")
  if FLAGS.jax_distributed:
    jax.distributed.initialize()
  logging.info("JAX %s, process %d/%d, devices: %s", jax.__version__, jax.process_index(),
               jax.process_count(), jax.devices())
  config = FLAGS.config
  trainer_name = config.get("trainer", "")
  try:
    trainer = importlib.import_module(f"bnas_jax.trainers.{trainer_name}")
  except ModuleNotFoundError:
    cli.fail(f"config.trainer={trainer_name!r} names no module in bnas_jax.trainers.")
  with cli.user_errors_exit():
    trainer.train_and_evaluate(config, FLAGS.workdir)


if __name__ == "__main__":
  cli.run(main)
