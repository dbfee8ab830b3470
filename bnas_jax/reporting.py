"""Metrics to TensorBoard event files and the console (clu), a progress bar, result files.

Only process 0 writes event files and result files and draws the progress bar;
the others just log. `clu.metric_writers` imports TensorFlow (tensorflow-cpu is a dependency).
"""

import logging
import sys
from typing import Any, Mapping

import jax
import tqdm
from clu import metric_writers

from bnas_jax import atomic_files


class Reporter:
  """Scalars to `workdir` (TensorBoard + console) and a tqdm bar with ETA."""

  def __init__(
    self,
    workdir: str,
    total_steps: int,
    initial_step: int = 0,
    *,
    progress_bar: bool = True,
    desc: str = "train",
  ):
    self._main = jax.process_index() == 0
    self.writer = metric_writers.create_default_writer(workdir, just_logging=not self._main)
    self._bar = tqdm.tqdm(
      total=total_steps,
      initial=initial_step,
      desc=desc,
      dynamic_ncols=True,
      disable=not (self._main and progress_bar),
      file=sys.stderr,
      mininterval=1.0,
    )

  def advance(self, steps: int = 1) -> None:
    self._bar.update(steps)

  def scalars(self, step: int, values: Mapping[str, Any]) -> None:
    values = {k: float(v) for k, v in values.items()}
    self.writer.write_scalars(step, values)
    self._bar.set_postfix({k: f"{v:.4g}" for k, v in list(values.items())[:4]}, refresh=False)

  def message(self, text: str) -> None:
    """A line for the user (process 0 prints it above the bar)."""
    if self._main:
      self._bar.write(text, file=sys.stdout)
      sys.stdout.flush()
    logging.info(text)

  def close(self) -> None:
    self._bar.close()
    self.writer.flush()
    self.writer.close()


def hparams_from_config(config: Any, prefix: str = "") -> dict[str, Any]:
  """Flattens a ConfigDict into scalar hyper-parameters for `write_hparams`."""
  out: dict[str, Any] = {}
  for k, v in config.items():
    name = f"{prefix}{k}"
    if hasattr(v, "items"):
      out.update(hparams_from_config(v, name + "."))
    elif isinstance(v, (int, float, str, bool)) or v is None:
      out[name] = v if v is not None else "None"
    else:
      out[name] = str(v)
  return out


def write_json(path: str, value: Any, indent: int = 1) -> None:
  """A result file, written atomically and once: by process 0 (processes share the workdir)."""
  if jax.process_index() == 0:
    atomic_files.write_json(path, value, indent=indent)
