"""NAS-BNN architectures counted on the network that runs, against the paper."""

import json
import os
import subprocess
import sys

import pytest

from bnas_jax import cost_model
from bnas_jax.models import build_model
from bnas_jax.models import nasbnn_subnet
from configs import nasbnn as nasbnn_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# NAS-BNN Table 2 (OPs in millions); E is left out: our copy of Table 6 prints
# E's layers identical to D's (see bnas_jax/search_spaces/nasbnn.py).
TABLE2_OPS_M = {"A": 21, "B": 57, "C": 87, "D": 124, "F": 180}


@pytest.mark.parametrize("name,ops_m", sorted(TABLE2_OPS_M.items()))
def test_table6_architectures_cost_what_table2_says(name, ops_m):
  config = nasbnn_config.get_config("imagenet")
  model = build_model(nasbnn_subnet.resolve(config, name), 1000)
  report = cost_model.count_costs(model, (1, 224, 224, 3), train=False)
  # Table 2 rounds to whole millions.
  assert report.ops / 1e6 == pytest.approx(ops_m, abs=0.5)
  # The 8-bit stem is the only int8 layer: 3x3x3 x stem width x 112x112 MACs.
  stem = model.stem_features
  assert report.int8_ops == 3 * 3 * 3 * stem * 112 * 112
  # The classifier is the only FP layer: (C_last + 1) x 1000 MACs.
  assert report.flops == (model.blocks[-1][0] + 1) * 1000


def test_nasbnn_f_model_size_is_the_papers_9_3_mb_at_16_bit_real_params():
  # NAS-BNN Sec. 4.5: NAS-BNN-F takes 9.3 MB (10^6 bytes), counting its real-valued
  # parameters at 16 bits (5.92 MB of 1-bit weights + 1.686 M real parameters x 2 bytes).
  config = nasbnn_config.get_config("imagenet")
  model = build_model(nasbnn_subnet.resolve(config, "F"), 1000)
  paper = cost_model.count_costs(model, (1, 224, 224, 3), train=False, real_param_bits=16)
  assert paper.model_size_bytes / 1e6 == pytest.approx(9.3, abs=0.05)
  assert paper.binary_params / 8 / 1e6 == pytest.approx(5.92, abs=0.005)
  assert paper.fp_params / 1e6 == pytest.approx(1.686, abs=0.0005)
  assert paper.to_dict()["real_param_bits"] == 16
  # The float32 convention counts the same parameters at 4 bytes: 12.67e6 bytes.
  fp32 = cost_model.count_costs(model, (1, 224, 224, 3), train=False)
  assert fp32.model_size_bytes - paper.model_size_bytes == 2 * paper.fp_params
  assert fp32.model_size_bytes / 1e6 == pytest.approx(12.67, abs=0.005)


def test_summary_counts_real_params_at_the_configs_bit_width():
  from bnas_jax import summary  # pylint: disable=g-import-not-at-top

  config = nasbnn_config.get_config("imagenet")  # the paper preset counts 16 bits (Sec. 4.5)
  assert summary.summarize(config, "F").model_size_bytes / 1e6 == pytest.approx(9.3, abs=0.05)
  with config.unlocked():
    del config.cost
  assert summary.summarize(config, "F").real_param_bits == 32  # no field: float32


def test_summary_prints_exact_space_counts():
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "bnas_jax.summary",
      "--config=configs/nasbnn.py:imagenet",
      "--space",
      "--json",
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr
  counts = json.loads(proc.stdout.strip().splitlines()[-1])
  # Paper Sec. 3.2: ~3.3e17 with the Non-Decreasing constraint, ~4.0e21 without.
  assert isinstance(counts["architectures_nd"], int)
  assert f"{counts['architectures_nd']:.1e}" == "3.3e+17"
  assert f"{counts['architectures_no_nd']:.1e}" == "4.0e+21"
