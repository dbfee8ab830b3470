r"""Cost summary of a config's network: larq-style table or JSON.

  python -m bnas_jax.summary --config=configs/reactnet.py[:preset] [--arch=NAME_OR_SPEC] [--json]

With `--json` the last line printed is one JSON object with raw counts (not
millions): flops, int8_ops, bops, ops, params, binary_params, model_size_bytes,
plus per-layer rows. Counts come from `cost_model.count_costs`, which runs the
same module definitions that train.

For configs whose model is chosen from a search space, `--arch` is resolved by the
config's family (`models/families.py`: `family.space.resolve(spec)`, then
`family.network(arch)`); fixed-network configs reject it.
`--space` prints the space's exact architecture counts (`family.space.count()`).
Library log lines are dropped (`--verbose` shows them); bad input prints one
paragraph on stderr and exits with status 2.
"""

import json
import sys
from typing import Optional

from bnas_jax import cli

from absl import flags  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags

from bnas_jax import config_validation
from bnas_jax import cost_model
from bnas_jax import input_pipeline
from bnas_jax import user_files
from bnas_jax.errors import UserInputError
from bnas_jax.models import build_model
from bnas_jax.models import families


def define_flags(
  flag_values: flags.FlagValues = flags.FLAGS, sys_argv: Optional[list[str]] = None
) -> None:
  """This CLI's flags (`sys_argv`: where `--config.KEY` overrides are found; tests)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string("arch", None, "Architecture name or spec (search-space configs only).", **fv)
  flags.DEFINE_bool("json", False, "Print one JSON object as the last line.", **fv)
  flags.DEFINE_bool(
    "space", False, "Count the architectures of the config's search space instead.", **fv
  )
  flags.DEFINE_bool("verbose", False, "Show library log lines (absl, JAX, XLA) on stderr.", **fv)
  flags.DEFINE_integer(
    "batch", 1, "Batch size of the counted input.", lower_bound=1, upper_bound=4096, **fv
  )
  config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file, optionally with :preset.",
    lock_config=True,
    sys_argv=sys_argv,
    **fv,
  )
  flags.mark_flags_as_required(["config"], **fv)


def summarize(config, arch=None, batch: int = 1) -> cost_model.CostReport:
  """The cost report of the network `config` (and `arch`) describes."""
  num_classes, image_shape = input_pipeline.model_input_spec(config.data)
  if arch is None:
    try:
      model = build_model(config.model, num_classes)
    except (AttributeError, KeyError) as e:  # config.model is a search space's template
      raise UserInputError(
        f"config.model does not describe one network (no field {str(e).strip(chr(34))}): "
        "this config's networks are chosen from its search space; pass --arch=NAME_OR_SPEC "
        "(see the config file's docstring) or --space."
      ) from None
  else:
    family = families.from_config(config, f"--arch={user_files.quote(arch)}")
    model = family.network(family.space.resolve(arch), num_classes)
  return cost_model.count_costs(
    model,
    (batch, *image_shape),
    train=False,
    real_param_bits=config.get("cost", {}).get("real_param_bits", 32),
  )


def main(argv: list[str], fv: Optional[flags.FlagValues] = None) -> None:
  fv = flags.FLAGS if fv is None else fv
  if len(argv) > 1:
    cli.fail(f"Unexpected positional arguments {argv[1:]!r}; all options are --flags.")
  with cli.user_errors_exit():
    config_validation.validate_for_file(fv.config, config_flags.get_config_filename(fv["config"]))
    if fv.arch is not None:
      user_files.check_spec(fv.arch, "--arch")
    if fv.space:
      counts = families.from_config(fv.config, "--space").space.count()
      print(
        json.dumps(counts)
        if fv.json
        else "\n".join(
          f"{k}: {v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k}: {v}"
          for k, v in counts.items()
        )
      )
      return
    report = summarize(fv.config, fv.arch, fv.batch)
  if fv.json:
    print(json.dumps(report.to_dict()))
  else:
    print(cost_model.format_table(report, title=f"{fv.config.model.get('name', fv.arch)}"))
  sys.stdout.flush()


def _main_without_library_logs(argv: list[str]) -> None:
  """`main` with library log lines dropped (a summary has no run directory to keep them)."""
  cli.LibraryLogs(verbose=flags.FLAGS.verbose)
  main(argv)


if __name__ == "__main__":
  define_flags()
  cli.run(_main_without_library_logs)
