"""End-to-end training: the reactnet config, resume, non-finite guard."""

import json
import os

import jax
import numpy as np
import pytest

from bnas_jax import checkpointing
from bnas_jax import input_pipeline
from bnas_jax import nonfinite_guard
from bnas_jax.trainers import supervised
from configs import reactnet as reactnet_config


def _tiny_config(**overrides):
  c = reactnet_config.get_config()
  c.model.blocks = ((8, 1, 3, 1), (16, 2, 3, 2))
  c.model.stem_features = 8
  c.data.image_size = 16
  c.batch_size = 32
  c.eval_batch_size = 64
  c.max_eval_examples = 128
  c.progress_bar = False
  c.log_every_steps = 2
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def _final_params(workdir):
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  step = ckpt.latest_step()
  path = os.path.join(ckpt.directory, str(step), "state")
  restored = checkpointing.ocp.StandardCheckpointer().restore(path)
  ckpt.close()
  return step, restored["params"]


def test_trains_and_reports_test_accuracy(tmp_path, capsys):
  results = supervised.train_and_evaluate(_tiny_config(num_train_steps=6), str(tmp_path))
  assert "test accuracy" in capsys.readouterr().out
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["steps"] == 6 and saved["test_examples"] == 128
  assert 0.0 <= results["test_accuracy"] <= 1.0
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path))


class _Interrupt(Exception):
  pass


def _patch_train_batches(monkeypatch, transform):
  """Every train iterator yields transform(n, iterator) for its n-th batch (1-based)."""
  real = input_pipeline.make_train_iterator

  def patched(*args, **kwargs):
    it = real(*args, **kwargs)
    count = [0]

    class Wrapped:
      def __next__(self):
        count[0] += 1
        return transform(count[0], it)

      def __getattr__(self, name):
        return getattr(it, name)

    return Wrapped()

  monkeypatch.setattr(input_pipeline, "make_train_iterator", patched)
  return real


def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(tmp_path, monkeypatch):
  config = _tiny_config(num_train_steps=8, checkpoint_every_steps=2)
  supervised.train_and_evaluate(config, str(tmp_path / "straight"))

  def interrupt_at_6(n, it):
    if n == 6:  # dies while training step 6; steps 1-4 are checkpointed
      raise _Interrupt()
    return next(it)

  real = _patch_train_batches(monkeypatch, interrupt_at_6)
  with pytest.raises(_Interrupt):
    supervised.train_and_evaluate(config, str(tmp_path / "resumed"))
  monkeypatch.setattr(input_pipeline, "make_train_iterator", real)
  assert checkpointing.Checkpointer(str(tmp_path / "resumed" / "checkpoints")).latest_step() == 4
  supervised.train_and_evaluate(config, str(tmp_path / "resumed"))

  step_a, params_a = _final_params(str(tmp_path / "straight"))
  step_b, params_b = _final_params(str(tmp_path / "resumed"))
  assert step_a == step_b == 8
  jax.tree.map(np.testing.assert_array_equal, params_a, params_b)


def test_two_step_recipe_starts_step_two_from_step_one(tmp_path):
  config = _tiny_config(num_train_steps=2, two_step=True)
  supervised.train_and_evaluate(config, str(tmp_path))
  _, step1 = _final_params(str(tmp_path / "step1_binary_activations"))
  assert (tmp_path / "step2_binary" / "results.json").exists()
  # Step 2 started from step 1's weights: after 2 more Adam steps with lr 2e-3
  # every kernel moved by at most 2 * lr (Adam's per-step bound ~ lr).
  _, step2 = _final_params(str(tmp_path / "step2_binary"))
  k1 = np.asarray(step1["block0"]["conv_kxk"]["kernel"])
  k2 = np.asarray(step2["block0"]["conv_kxk"]["kernel"])
  assert np.max(np.abs(k1 - k2)) <= 2 * 2e-3 * 1.01
  assert not np.array_equal(k1, k2)


def test_non_finite_loss_stops_with_step_and_checkpoint(tmp_path, monkeypatch):
  def poison_from_4(n, it):
    batch = next(it)
    if n >= 4:
      batch["image"] = np.full_like(batch["image"], np.nan)
    return batch

  _patch_train_batches(monkeypatch, poison_from_4)
  config = _tiny_config(num_train_steps=10, checkpoint_every_steps=2)
  with pytest.raises(nonfinite_guard.NonFiniteError, match=r"step 4: non-finite.*checkpoints/2"):
    supervised.train_and_evaluate(config, str(tmp_path))


def test_default_reactnet_config_learns_digits(tmp_path):
  # The plain config file as users run it, shortened to 3 of its 12 epochs:
  # 10 classes, so chance is 0.1; the full run reaches ~0.93.
  config = reactnet_config.get_config()
  config.num_epochs = 3
  config.progress_bar = False
  results = supervised.train_and_evaluate(config, str(tmp_path))
  assert results["test_examples"] == 360
  assert results["test_accuracy"] > 0.4
