r"""Times the official NAS-BNN PyTorch code on the setting of `nasbnn_supernet.py`.

  /path/to/torch/venv/bin/python benchmarks/official_nasbnn_step.py \
      --reference_dir=/path/to/NAS-BNN [--steps=3] [--rounds=3] [--threads=2] [--json]

Issue 12 asks for the speed of bnas_jax's supernet as a ratio against the
public NAS-BNN code (Lin et al. 2024) measured on the same machine in the same
time window, not against remembered constants. This script does the PyTorch
half: it imports the official repository's `models` package and its loss
module from `--reference_dir` (a checkout of the public VDIGPKU/NAS-BNN
repository; nothing of it is part of this project) and times, with random
data of the shape `benchmarks/nasbnn_supernet.py` uses (64 x 64, batch 16,
100 classes, the imagenet space of NAS-BNN Table 1 = `superbnn_100`):

* the sandwich step as the official `train.py` runs it (Sec. 3.3, Eq. 4): FP
  weights with binary activations for the biggest subnet and a label-smoothed
  CE (0.1), backward; binary weights for the smallest and two random subnets,
  each with the soft-label KD loss against the detached teacher logits and
  its own backward; one Adam step (lr 2.5e-3; weight decay 0 on conv/fc
  weights, the script's `--wd` default); median over `--steps` steps after
  one warm-up step, new random subnets every step;
* the eval forward (`model.eval()`, `torch.no_grad()`, binary weights) of the
  biggest, the smallest and one random subnet, interleaved over `--rounds`
  rounds (median);
* the start-up time (imports and model construction) and the 1-minute load
  average at the start and the end.

It needs only `torch` and `numpy` (the official `utils` package imports
torchvision, so its loss module is loaded from its file). Run it in the same
time window as `python benchmarks/nasbnn_supernet.py --devices=1` and compare
the two reports; `--json` prints one JSON object as the last line.
"""

import argparse
import importlib.util
import json
import os
import random
import statistics
import sys
import time

_START = time.perf_counter()

import numpy as np  # pylint: disable=g-import-not-at-top
import torch  # pylint: disable=g-import-not-at-top


def _load_reference(reference_dir: str):
  """The official `models` package and `utils/loss.py`, imported from the checkout."""
  if not os.path.isfile(os.path.join(reference_dir, "models", "superbnn.py")):
    sys.exit(
      f"--reference_dir={reference_dir!r} is not a checkout of the NAS-BNN repository "
      "(models/superbnn.py is missing)."
    )
  sys.path.insert(0, reference_dir)
  import models  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  spec = importlib.util.spec_from_file_location(
    "nasbnn_reference_loss", os.path.join(reference_dir, "utils", "loss.py")
  )
  loss = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(loss)
  return models, loss


def _optimizer(model, lr: float, weight_decay: float):
  """Adam with the official parameter groups (decay on conv/fc weights only)."""
  weights = [
    p
    for name, p in model.named_parameters()
    if (p.ndimension() == 4 and "conv" in name)
    or (p.ndimension() == 2 and ("linear" in name or "fc" in name))
  ]
  ids = {id(p) for p in weights}
  others = [p for p in model.parameters() if id(p) not in ids]
  return torch.optim.Adam(
    [{"params": others}, {"params": weights, "weight_decay": weight_decay}], lr=lr
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
  parser.add_argument(
    "--reference_dir", required=True, help="checkout of the official NAS-BNN repository"
  )
  parser.add_argument("--steps", type=int, default=3, help="timed sandwich steps")
  parser.add_argument("--rounds", type=int, default=3, help="interleaved eval rounds")
  parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args()
  load = [os.getloadavg()[0]]
  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  random.seed(args.seed)
  models, loss_lib = _load_reference(args.reference_dir)
  # `superbnn_100` builds the space for 224 x 224 (its convs assert the input
  # side); the same stage table at this input side:
  supernet_module = sys.modules[models.superbnn_100.__module__]
  model = supernet_module.SuperBNN(models.superbnn_100().cfg, 100, args.image_size)
  criterion_soft = loss_lib.CrossEntropyLossSmooth(0.1)
  criterion_kd = loss_lib.KLLossSoft()
  optimizer = _optimizer(model, 2.5e-3, 0.0)
  rng = np.random.default_rng(args.seed)
  images = torch.from_numpy(
    rng.standard_normal((args.batch, 3, args.image_size, args.image_size), np.float32)
  )
  target = torch.from_numpy(rng.integers(0, 100, args.batch).astype(np.int64))
  startup = time.perf_counter() - _START

  def sandwich_step():
    """The loop body of the official `train()`, without logging and accuracy."""
    optimizer.zero_grad()
    model.set_fp_weight()
    output, _ = model(images, model.biggest_cand)
    criterion_soft(output, target).backward()
    soft_logits = output.clone().detach()
    model.set_bin_weight()
    output, _ = model(images, model.smallest_cand)
    criterion_kd(output, soft_logits).backward()
    ops = []
    for _ in range(2):
      cand = model.get_random_cand()
      ops.append(model.get_ops(cand)[2])
      output, _ = model(images, cand)
      criterion_kd(output, soft_logits).backward()
    optimizer.step()
    return ops

  model.train()
  start = time.perf_counter()
  sandwich_step()  # warm-up
  first_step = time.perf_counter() - start
  times, student_ops = [], []
  for _ in range(args.steps):
    start = time.perf_counter()
    student_ops += sandwich_step()
    times.append(time.perf_counter() - start)

  model.eval()
  model.set_bin_weight()
  cands = {
    "biggest": model.biggest_cand,
    "smallest": model.smallest_cand,
    "random": model.get_random_cand(),
  }
  eval_times = {name: [] for name in cands}
  with torch.no_grad():
    for cand in cands.values():
      model(images, cand)
    for _ in range(args.rounds):
      for name, cand in cands.items():
        start = time.perf_counter()
        model(images, cand)
        eval_times[name].append(time.perf_counter() - start)
  load.append(os.getloadavg()[0])
  result = {
    "torch": torch.__version__,
    "threads": torch.get_num_threads(),
    "batch": args.batch,
    "image_size": args.image_size,
    "num_classes": 100,
    "startup": startup,
    "first_step": first_step,
    "sandwich_step": statistics.median(times),
    "sandwich_step_min": min(times),
    "students_mean_mops": float(np.mean(student_ops)),
    "random_eval_mops": float(model.get_ops(cands["random"])[2]),
    "load_average": load,
  }
  for name, ts in eval_times.items():
    result[f"eval_{name}"] = statistics.median(ts)
  result["first_100_steps_estimate"] = startup + first_step + 99 * result["sandwich_step"]
  print(
    f"official NAS-BNN (PyTorch {result['torch']}, {result['threads']} threads), "
    f"{args.image_size}x{args.image_size}, batch {args.batch}, 100 classes"
  )
  for key in (
    "startup",
    "first_step",
    "sandwich_step",
    "sandwich_step_min",
    "eval_biggest",
    "eval_smallest",
    "eval_random",
    "first_100_steps_estimate",
  ):
    print(f"{key:<28}{result[key]:>10.3f} s")
  print(
    f"random students: {result['students_mean_mops']:.2f} M OPs on average; random eval "
    f"subnet {result['random_eval_mops']:.2f} M OPs"
  )
  print("load average (start, end): " + ", ".join(f"{a:.2f}" for a in load))
  if args.json:
    print(json.dumps(result))


if __name__ == "__main__":
  main()
