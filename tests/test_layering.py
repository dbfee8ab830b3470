"""The import layering of `bnas_jax` (issue 16): no module imports a layer above its own.

Layers, bottom up (a module may import its own layer and the ones below):

0. foundations: errors, quantizers, convolution, the cost model, optimizer and
   state primitives, sharding, checkpointing, data, run bookkeeping;
1. `layers` (binarized Flax layers);
2. `search_spaces` (architectures as data + pure functions: no JAX, no Flax);
3. `models` (the networks of the spaces);
4. `search` (search algorithms over spaces and their networks);
5. `training_loop` (the phase machinery trainers share);
6. `trainers`;
7. the command lines (`main`, `summary`, `deploy`, `cli`).
Every module of the package must be placed here: a new one is a decision.
"""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bnas_jax")

FOUNDATIONS = (
  "errors",
  "atomic_files",
  "quantizers",
  "convolution",
  "packed",
  "cost_model",
  "param_policies",
  "optimizers",
  "train_state",
  "sharding",
  "checkpointing",
  "input_pipeline",
  "data",
  "presets",
  "preemption",
  "distributed",
  "nonfinite_guard",
  "reporting",
  "run_directory",
  "compile_cache",
  "config_validation",
  "user_files",
  "console",
)
LAYERS = {
  **{name: 0 for name in FOUNDATIONS},
  "layers": 1,
  "search_spaces": 2,
  "models": 3,
  "search": 4,
  "training_loop": 5,
  "trainers": 6,
  "main": 7,
  "summary": 7,
  "deploy": 7,
  "cli": 7,
}


def _modules():
  for root, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(root, name)
        rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
        yield rel.removesuffix(".__init__"), path


def _layer(module: str) -> int:
  parts = module.split(".")
  if parts == ["bnas_jax"]:
    return -1  # the package docstring
  if parts[1] not in LAYERS:
    raise AssertionError(f"{module} has no layer: add it to tests/test_layering.py's LAYERS")
  return LAYERS[parts[1]]


def _imports(path: str, module: str):
  """(imported bnas_jax module, line) pairs, lazy imports inside functions included."""
  tree = ast.parse(open(path).read())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.startswith("bnas_jax"):
          yield alias.name, node.lineno
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative
        base = ".".join(module.split(".")[: -node.level] + ([base] if base else []))
      if not base.startswith("bnas_jax"):
        continue
      for alias in node.names:
        # `from <package> import x` names module x; `from <module> import x` a member.
        package = os.path.isdir(os.path.join(os.path.dirname(PACKAGE), *base.split(".")))
        yield (f"{base}.{alias.name}" if package else base), node.lineno


MODULES = sorted(_modules())


@pytest.mark.parametrize("module,path", MODULES, ids=[m for m, _ in MODULES])
def test_imports_go_down(module, path):
  own = _layer(module)
  upward = [
    f"{path}:{line} imports {name} (layer {_layer(name)} > {own})"
    for name, line in _imports(path, module)
    if _layer(name) > own
  ]
  assert not upward, "\n".join(upward)


@pytest.mark.parametrize("module,path", [(m, p) for m, p in MODULES if ".search_spaces" in m])
def test_search_spaces_are_pure_data(module, path):
  tree = ast.parse(open(path).read())
  names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
  names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
  assert not [n for n in names if n.split(".")[0] in ("jax", "flax", "optax")], module


def test_the_walk_sees_an_upward_import(tmp_path):
  """The checker itself: an upward edge written into a module is reported."""
  path = tmp_path / "m.py"
  path.write_text("from bnas_jax.trainers import darts\nimport bnas_jax.layers\n")
  found = dict(_imports(str(path), "bnas_jax.models.m"))
  assert found == {"bnas_jax.trainers.darts": 1, "bnas_jax.layers": 2}
  assert _layer("bnas_jax.trainers.darts") > _layer("bnas_jax.models.m")
