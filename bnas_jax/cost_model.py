"""Cost model: MACs, parameters and model size, read from the running modules.

There is no formula table here. `count_costs` runs the model abstractly
(`jax.eval_shape`, nothing is computed) with a Flax method interceptor; every
module that multiplies reports, for the exact shapes it sees, its
multiply-accumulates and their precision through its own `macs()` method, and
every parameter's bit width comes from its module's `param_precision()`. The
model that trains is the model that is counted.

Conventions (NAS-BNN Sec. 4.1 / ReActNet, larq's summary):
  * MACs, not 2x FLOPs. Only convolutions and dense layers count; BN, PReLU,
    biases of RSign/RPReLU, pooling, shortcut additions and sign are free.
  * A MAC's precision is max(input bits, weight bits): 1 = binary (BOPs),
    8 = int8 (the 8-bit stem), 32 = full precision (FLOPs).
  * OPs = FLOPs + Int8OPs / 8 + BOPs / 64.
  * Model size: binary weights 1 bit, int8 8 bits, every real-valued
    parameter `real_param_bits` (32 unless the caller says otherwise; the
    `params` collection only, BN running statistics are not counted).
    NAS-BNN Sec. 4.5 counts real-valued parameters at 16 bits: NAS-BNN-F's
    5.92e6 bytes of binary weights plus 1.686 M real parameters x 2 bytes give
    its 9.3 MB (MB = 10^6 bytes), which `real_param_bits=16` reproduces
    (tested); at 32 bits the same network is 12.67e6 bytes.
"""

import dataclasses
import json
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bnas_jax.errors import UserInputError

PRECISION_NAMES = {1: "binary", 8: "int8", 32: "fp32"}


@dataclasses.dataclass
class LayerCost:
  """Cost of one module: MACs by precision (per call, summed) and its params."""

  name: str
  kind: str
  output_shape: tuple[int, ...]
  input_precision: int = 32
  macs: dict[int, int] = dataclasses.field(default_factory=dict)
  params: dict[int, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class CostReport:
  """Per-layer costs and totals of one network at one input shape."""

  layers: list[LayerCost]
  real_param_bits: int = 32

  def _total(self, field: str, bits: int) -> int:
    return sum(getattr(l, field).get(bits, 0) for l in self.layers)

  @property
  def flops(self) -> int:
    return self._total("macs", 32)

  @property
  def int8_ops(self) -> int:
    return self._total("macs", 8)

  @property
  def bops(self) -> int:
    return self._total("macs", 1)

  @property
  def ops(self) -> float:
    """OPs = FLOPs + Int8OPs/8 + BOPs/64 (NAS-BNN, ReActNet)."""
    return self.flops + self.int8_ops / 8 + self.bops / 64

  @property
  def params(self) -> int:
    return sum(sum(l.params.values()) for l in self.layers)

  @property
  def binary_params(self) -> int:
    return self._total("params", 1)

  @property
  def int8_params(self) -> int:
    return self._total("params", 8)

  @property
  def fp_params(self) -> int:
    return self._total("params", 32)

  @property
  def model_size_bytes(self) -> float:
    """Bytes of all parameters: 1-bit and 8-bit ones at their width, real ones at
    `real_param_bits`."""
    bits = sum(
      (self.real_param_bits if b == 32 else b) * n for l in self.layers for b, n in l.params.items()
    )
    return bits / 8

  def to_dict(self) -> dict[str, Any]:
    return {
      "flops": self.flops,
      "int8_ops": self.int8_ops,
      "bops": self.bops,
      "ops": self.ops,
      "params": self.params,
      "binary_params": self.binary_params,
      "int8_params": self.int8_params,
      "fp_params": self.fp_params,
      "model_size_bytes": self.model_size_bytes,
      "real_param_bits": self.real_param_bits,
      "layers": [
        {
          "name": l.name,
          "kind": l.kind,
          "output_shape": list(l.output_shape),
          "macs": {PRECISION_NAMES.get(b, f"{b}bit"): n for b, n in sorted(l.macs.items())},
          "params": {PRECISION_NAMES.get(b, f"{b}bit"): n for b, n in sorted(l.params.items())},
        }
        for l in self.layers
      ],
    }

  def to_json(self) -> str:
    return json.dumps(self.to_dict())


def _leaf_count(x: Any) -> int:
  return int(np.prod(x.shape)) if hasattr(x, "shape") else 0


def count_costs(
  model: nn.Module,
  input_shape: tuple[int, ...],
  *,
  method: Optional[Callable[..., Any]] = None,
  real_param_bits: int = 32,
  **apply_kwargs: Any,
) -> CostReport:
  """Counts the cost of `model` on an input of `input_shape` (batch 1 is usual).

  Args:
    model: a linen module whose layers implement `macs(inputs, output)` and
      `param_precision(name)` where they multiply (see `layers.py`).
    input_shape: shape of the input array, e.g. (1, 224, 224, 3).
    method: optional module method to run instead of `__call__`.
    real_param_bits: bits per real-valued parameter in `model_size_bytes` (32;
      16 is NAS-BNN Sec. 4.5's convention). MACs and parameter counts do not
      depend on it.
    **apply_kwargs: extra keyword arguments of the call (e.g. `train=False`).

  Returns:
    A `CostReport` with one row per module that has parameters or MACs, in call
    order.
  """
  rows: dict[str, LayerCost] = {}
  owners: dict[tuple[str, ...], nn.Module] = {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name != "__call__" or module.scope is None:
      return out
    path = tuple(module.scope.path)
    owners.setdefault(path, module)
    if hasattr(module, "macs"):
      name = "/".join(path)
      n, bits = module.macs(args, out)
      row = rows.setdefault(name, LayerCost(name, type(module).__name__, tuple(out.shape)))
      row.macs[bits] = row.macs.get(bits, 0) + int(n)
      row.input_precision = bits
    return out

  def init(rng):
    x = jnp.zeros(input_shape, jnp.float32)
    with nn.intercept_methods(interceptor):
      return model.init(rng, x, method=method, **apply_kwargs)

  variables = jax.eval_shape(init, jax.random.key(0))
  params = variables.get("params", {})
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = tuple(str(getattr(k, "key", k)) for k in path)
    owner_path, pname = keys[:-1], keys[-1]
    owner = owners.get(owner_path)
    bits = owner.param_precision(pname) if hasattr(owner, "param_precision") else 32
    name = "/".join(owner_path)
    row = rows.get(name)
    if row is None:
      row = rows[name] = LayerCost(name, type(owner).__name__ if owner else "?", ())
    row.params[bits] = row.params.get(bits, 0) + _leaf_count(leaf)
  order = {"/".join(p): i for i, p in enumerate(owners)}
  if real_param_bits not in (8, 16, 32):
    raise UserInputError(
      f"real_param_bits={real_param_bits!r}: real-valued parameters are counted at 32 bits "
      "(float32), 16 (NAS-BNN's model sizes) or 8; pass one of these."
    )
  return CostReport(
    sorted(rows.values(), key=lambda r: order.get(r.name, len(order))),
    real_param_bits=int(real_param_bits),
  )


def _si(n: float) -> str:
  """3 significant figures with k/M/B/T suffixes (larq's summary format)."""
  for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
    if abs(n) >= div:
      return f"{n / div:.3g}{suffix}"
  return f"{n:.3g}" if isinstance(n, float) and not float(n).is_integer() else f"{int(n)}"


def format_table(report: CostReport, title: str = "") -> str:
  """A larq-style summary table: one row per layer, precision columns, totals."""
  precisions = sorted({b for l in report.layers for b in list(l.macs) + list(l.params)})
  header = ["Layer", "Kind", "Outputs"]
  header += [f"# {b}-bit params" for b in precisions]
  header += ["Memory (kB)"] + [f"{b}-bit MACs" for b in precisions]
  rows = []
  for l in report.layers:
    mem_kb = sum(b * n for b, n in l.params.items()) / 8 / 1024
    rows.append(
      [l.name, l.kind, "x".join(map(str, l.output_shape)) or "-"]
      + [_si(l.params.get(b, 0)) for b in precisions]
      + [f"{mem_kb:.2f}"]
      + [_si(l.macs.get(b, 0)) for b in precisions]
    )
  widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
  line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
  fmt = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
  total_macs = report.flops + report.int8_ops + report.bops
  fp32_size = report.params * 4
  out = [title] if title else []
  out += [line, fmt(header), line] + [fmt(r) for r in rows] + [line]
  out += [
    f"Total params: {_si(report.params)} (binary {_si(report.binary_params)}, "
    f"int8 {_si(report.int8_params)}, fp32 {_si(report.fp_params)})",
    f"Model size: {report.model_size_bytes / 1024**2:.2f} MiB = "
    f"{report.model_size_bytes / 1e6:.2f} MB (real-valued params at "
    f"{report.real_param_bits} bits; float-32 equivalent {fp32_size / 1024**2:.2f} MiB, "
    f"compression {fp32_size / max(report.model_size_bytes, 1):.2f}x)",
    f"MACs: {_si(total_macs)} (FLOPs {_si(report.flops)}, Int8OPs {_si(report.int8_ops)}, "
    f"BOPs {_si(report.bops)}; binarized share "
    f"{report.bops / max(total_macs, 1):.2%})",
    f"OPs = FLOPs + Int8OPs/8 + BOPs/64 = {_si(report.ops)}",
  ]
  return "\n".join(out)
