r"""Bimodal parameter perturbation (Ahn et al., WACV 2023) on the BNAS cell space.

COMMAND (search with noise on alpha and weights + derive + train on the embedded digits data):
  python -m bnas_jax.main --config=configs/bimodal.py --workdir=/tmp/bimodal

Presets (`--config=configs/bimodal.py:PRESET`):
  digits    (default) the BNAS digits setting of configs/bnas.py with epsilon_A = 0.2,
            epsilon_W = 0.25 (the supplement's operating point, Figs. 3-5).
  cifar100  the BNAS search of Sec. 5.1 on CIFAR-100 and the supplement's BNAS-A
            model (20 cells, 32 channels; Table 3: mini = (10, 24), C_m = (16, 48)).
Noise on/off: --config.search.noise.arch_scale=0 / --config.search.noise.weight_scale=0.

Only the supplement is available, so the form of the noise is RECONSTRUCTED
(seed_methods_reference.md Sec. 6): uniform U(-eps, eps) (SDARTS-RS, which the
supplement cites) added to alpha before the softmax (absolute scale) and to the
latent conv kernels (scale relative to each kernel's mean |w|: absolute 0.25 would
swamp weights initialised at ~1/sqrt(fan_in)), in the forward pass of the weight
step only; the gradient at the perturbed point updates the clean parameters.
Every one of these is a switch in config.search.noise (distribution,
*_relative, arch_placement "alpha"/"softmax", steps ("weights", "arch")).

NOT IMPLEMENTED here: the binary MBConv space (layer-wise kernel/expansion/width
with g = 2 group convs and the 'partially duplicate' AvgPool shortcut, supp. Sec. 1).
"""

from bnas_jax import presets
from configs import bnas as bnas_config

PRESETS = ("digits", "cifar100")


def get_config(arg=None):
  preset = presets.select(arg, PRESETS, "configs/bimodal.py")
  c = bnas_config.base_config("bnas")
  c.search.noise.update(dict(arch_scale=0.2, weight_scale=0.25, distribution="uniform",
                             arch_relative=False, weight_relative=True,
                             arch_placement="alpha", steps=("weights",)))
  if preset == "cifar100":
    c.data.name = "cifar100"
    bnas_config.apply_paper_search(c)
    c.final.update(dict(num_cells=20, channels=32, num_epochs=600, batch_size=256,
                        drop_path_prob=0.2))
    c.final.optimizer.update(dict(learning_rate=0.05, weight_decay=3e-6))
    c.eval_batch_size = 500
    c.log_every_steps = 50
  return c
