"""DMS end to end on a shrunken VGG-11: search, resume, BEI ablation, memory target."""

import json
import os

import jax
from jax.experimental.compilation_cache import compilation_cache
import numpy as np
import pytest

from bnas_jax import input_pipeline
from bnas_jax.search_spaces import dms_widths
from bnas_jax.trainers import dms as dms_trainer
from configs import dms as dms_config


@pytest.fixture(scope="module", autouse=True)
def _compilation_cache(tmp_path_factory):
  """Runs in this module repeat identical programs; cache them on disk (results unchanged)."""
  old = (
    jax.config.jax_compilation_cache_dir,
    jax.config.jax_persistent_cache_min_compile_time_secs,
  )
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  compilation_cache.reset_cache()
  yield
  jax.config.update("jax_compilation_cache_dir", old[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])
  compilation_cache.reset_cache()


def _tiny_config(**search):
  c = dms_config.get_config()
  c.model.base_widths = (4, 4, 8, 8, 8, 8, 8, 8)
  c.num_devices = 1
  c.batch_size = 32
  c.eval_batch_size = 64
  c.max_eval_examples = 64
  c.progress_bar = False
  c.checkpoint_every_steps = 1
  c.search.num_blocks = 2
  c.search.block_steps = 3
  c.search.arch_steps = 3
  c.eval.num_epochs = 0
  c.eval.num_train_steps = 0
  for k, v in search.items():
    setattr(c.search, k, v)
  return c


def _read(workdir, name):
  with open(os.path.join(workdir, name)) as f:
    return json.load(f)


class _Interrupt(Exception):
  pass


def test_resume_mid_search_gives_the_uninterrupted_result(tmp_path, monkeypatch):
  config = _tiny_config()
  config.eval.num_train_steps = 2
  straight = dms_trainer.train_and_evaluate(config, str(tmp_path / "straight"))
  for name in (
    "dms_widths.json",
    "dms_widths.png",
    "report.json",
    "search/trajectory.json",
    "search/trajectory.png",
    "eval/results.json",
    "random/eval/results.json",
  ):
    assert (tmp_path / "straight" / name).exists(), name
  baseline = straight["random_baseline"]  # random widths, the searched size at most
  assert (
    baseline["model_size_mb"] <= straight["model_size_mb"]
    and baseline["widths"] != straight["widths"]
  )
  widths = _read(tmp_path / "straight", "dms_widths.json")
  assert widths["widths"] == straight["widths"]
  assert len(_read(tmp_path / "straight", "search/trajectory.json")["mu"]) == 3

  real = input_pipeline.make_train_iterator
  count = [0]

  def patched(data_config, split, *args, **kwargs):
    it = real(data_config, split, *args, **kwargs)
    if split != "train":
      return it

    class Interrupting:
      def __next__(self):
        count[0] += 1
        if count[0] == 5:  # block 2's second weight step; its first is checkpointed
          raise _Interrupt()
        return next(it)

      def __getattr__(self, name):
        return getattr(it, name)

    return Interrupting()

  monkeypatch.setattr(input_pipeline, "make_train_iterator", patched)
  with pytest.raises(_Interrupt):
    dms_trainer.train_and_evaluate(config, str(tmp_path / "resumed"))
  monkeypatch.setattr(input_pipeline, "make_train_iterator", real)
  state = _read(tmp_path / "resumed", "search/state.json")
  assert state["next_block"] == 1
  resumed = dms_trainer.train_and_evaluate(config, str(tmp_path / "resumed"))
  np.testing.assert_array_equal(resumed["mu"], straight["mu"])
  assert resumed["widths"] == straight["widths"]
  assert resumed["test_accuracy"] == straight["test_accuracy"]


def test_search_runs_without_best_effort_initialization(tmp_path):
  report = dms_trainer.train_and_evaluate(_tiny_config(best_effort_init=False), str(tmp_path))
  state = _read(tmp_path, "search/state.json")
  assert state["next_block"] == 2 and len(state["history"]) == 2
  assert np.all(np.isfinite(report["mu"]))
  assert "test_accuracy" not in report  # evaluation disabled in this run


def test_larger_penalty_gives_a_smaller_model_within_the_memory_target(tmp_path):
  target = 0.0015  # MB; the start (mu = 1.5) is ~0.0027 MB
  runs = {}
  for name, penalty in (("free", 0.0), ("held", 50.0)):
    config = _tiny_config(penalty=penalty, memory_target_mb=target, arch_steps=25)
    config.search.arch_optimizer.learning_rate = 0.1
    runs[name] = dms_trainer.train_and_evaluate(config, str(tmp_path / name))
  free, held = runs["free"], runs["held"]
  assert held["model_size_mb"] < free["model_size_mb"]
  # Tolerance: 10% of the target (integer widths and the candidates' spread around mu).
  assert held["model_size_mb"] <= target * 1.10


def test_random_widths_fill_the_searched_size_with_a_random_shape():
  """The baseline: another distribution of widths over the layers, the same model size."""
  c = dms_config.get_config()
  info = input_pipeline.get_dataset_info(c.data)
  size = lambda w: dms_trainer._model_size(
    c.model.name, w, info.num_classes, tuple(info.image_shape)
  )
  base = dms_widths.base_widths_of(c.model)
  target = size(dms_widths.uniform_widths(c.model.name, 2.0, base))
  got = [
    dms_trainer.random_widths_at_size(c, info, target, np.random.default_rng(s)) for s in (0, 1)
  ]
  for w in got:
    assert 0.97 * target <= size(w) <= target
  assert got[0] != got[1]
  ratios = np.asarray(got[0]) / np.asarray(base)
  assert ratios.max() / ratios.min() > 1.5  # not a uniform widening
