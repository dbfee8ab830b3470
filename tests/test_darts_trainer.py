"""End to end: search -> derive -> train on a tiny BNAS config; resume; bad input."""

import json
import os

import jax
import numpy as np
import pytest

from bnas_jax import checkpointing
from bnas_jax import input_pipeline
from bnas_jax.errors import UserInputError
from bnas_jax.search_spaces import darts as darts_space
from bnas_jax.trainers import darts
from configs import bnas as bnas_config


def _tiny_config(**search):
  c = bnas_config.get_config()
  c.num_devices = 1
  c.data.image_size = 8
  c.model.channels = 2
  c.model.num_cells = 1
  c.search.batch_size = 16
  c.search.num_train_steps = 4
  c.search.update(search)
  c.final.num_cells = 1
  c.final.channels = 4
  c.final.batch_size = 16
  c.final.num_epochs = 0
  c.final.num_train_steps = 0
  c.eval_batch_size = 32
  c.max_eval_examples = 32
  c.checkpoint_every_steps = 2
  c.progress_bar = False
  return c


class _Interrupt(Exception):
  pass


def _search_params(workdir):
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "search", "checkpoints"))
  step = ckpt.latest_step()
  restored = checkpointing.ocp.StandardCheckpointer().restore(
    os.path.join(ckpt.directory, str(step), "state")
  )
  ckpt.close()
  return step, restored["params"]


def test_search_resumes_bit_for_bit_then_trains_the_genotype(tmp_path, monkeypatch, capsys):
  config = _tiny_config()
  darts.train_and_evaluate(config, str(tmp_path / "straight"))

  real = input_pipeline.make_train_iterator

  def interrupting(data_cfg, split, *args, **kwargs):
    it = real(data_cfg, split, *args, **kwargs)
    if split != "train":
      return it
    count = [0]

    class Wrapped:
      def __next__(self):
        count[0] += 1
        if count[0] == 3:  # dies in step 3; step 2 is checkpointed
          raise _Interrupt()
        return next(it)

      def __getattr__(self, name):
        return getattr(it, name)

    return Wrapped()

  monkeypatch.setattr(input_pipeline, "make_train_iterator", interrupting)
  with pytest.raises(_Interrupt):
    darts.train_and_evaluate(config, str(tmp_path / "resumed"))
  monkeypatch.setattr(input_pipeline, "make_train_iterator", real)
  darts.train_and_evaluate(config, str(tmp_path / "resumed"))
  step_a, params_a = _search_params(str(tmp_path / "straight"))
  step_b, params_b = _search_params(str(tmp_path / "resumed"))
  assert step_a == step_b == 4
  jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
  history = json.loads((tmp_path / "resumed" / "search" / "history.json").read_text())
  assert history[-1]["step"] == 4 and 0 <= history[-1]["learnable_share"] <= 1
  assert history[-1]["entropy"] == pytest.approx(np.log(7), abs=0.05)
  best = darts_space.load(str(tmp_path / "straight" / "search" / "genotype_best.json"))
  assert (tmp_path / "straight" / "cells.png").exists()

  # Train the searched genotype without searching again.
  final_cfg = _tiny_config()
  final_cfg.genotype_file = str(tmp_path / "straight" / "genotype.json")
  final_cfg.final.num_train_steps = 2
  capsys.readouterr()
  report = darts.train_and_evaluate(final_cfg, str(tmp_path / "final_only"))
  out = capsys.readouterr().out
  assert "test accuracy" in out and "genotype:" in out
  assert not (tmp_path / "final_only" / "search").exists()
  saved = json.loads((tmp_path / "final_only" / "report.json").read_text())
  assert saved["genotype"] == best.to_dict()
  costs = saved["final"]["costs"]
  assert 0 <= saved["final"]["test_accuracy"] <= 1 and saved["final"]["test_examples"] == 32
  assert (
    costs["bops"] > 0
    and costs["flops"] == costs["flops_without_shortcuts"] + costs["shortcut_flops"]
  )
  assert report["final"]["steps"] == 2


def test_bad_inputs_fail_before_compute(tmp_path):
  c = _tiny_config()
  (tmp_path / "g.json").write_text('{"space": "bnas", "normal": [], "reduce": []}')
  c.genotype_file = str(tmp_path / "g.json")
  with pytest.raises(UserInputError, match="8 \\[op, input\\] pairs"):
    darts.train_and_evaluate(c, str(tmp_path / "w"))
  c = _tiny_config()
  c.data.holdout_fraction = 0.0
  with pytest.raises(UserInputError, match="held-out half"):
    darts.train_and_evaluate(c, str(tmp_path / "w"))
  c = _tiny_config()
  c.search.noise.distribution = "cauchy"
  with pytest.raises(UserInputError, match="distribution"):
    darts.train_and_evaluate(c, str(tmp_path / "w"))
  c = _tiny_config()
  c.derive.gamma = 0.0
  with pytest.raises(UserInputError, match="gamma"):
    darts.train_and_evaluate(c, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_mbconv_random_baseline_costs_what_the_searched_choice_list_costs():
  """The baseline is drawn at the searched architecture's OPs, not anywhere in the space."""
  from configs import bimodal as bimodal_config  # pylint: disable=g-import-not-at-top
  from bnas_jax.models import darts_arch  # pylint: disable=g-import-not-at-top

  c = bimodal_config.get_config("mbconv")
  family = darts_arch.family(c)
  space = family.space
  info = input_pipeline.get_dataset_info(darts.final_data_config(c))
  ops = lambda g: family.cost(g, info.num_classes, info.image_shape)["ops"]
  # 80% of the dearest of 8 draws: inside the space's range, off its cheap end.
  target = 0.8 * max(ops(space.sample(np.random.default_rng(s))) for s in range(8))
  got = ops(darts.random_at_cost(c, family, target))
  assert 0.95 * target <= got <= target
