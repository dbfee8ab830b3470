"""Property-based checks of `--config.KEY=VALUE` overrides (issue 6 Sec. 5).

Any override of any config file either parses into a config whose overridden
field keeps its declared type, or exits with status 2 and one paragraph on
stderr (`cli._parse_flags`), never with a traceback.
"""

import os

from absl import flags
from hypothesis import HealthCheck, given, settings, strategies as st
from ml_collections import config_flags
import ml_collections
import pytest

from bnas_jax import cli
from bnas_jax.errors import EXIT_BAD_INPUT

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = ("reactnet", "nasbnn", "bnas", "bats", "bimodal", "dms")


def _leaf_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  keys = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      keys += _leaf_keys(value, f"{prefix}{key}.")
    else:
      keys.append(f"{prefix}{key}")
  return keys


def _flag_values(argv: list[str]) -> flags.FlagValues:
  """Fresh flags as main.py defines them; overrides are found in `argv` at definition."""
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file(
    "config", None, "", flag_values=fv, lock_config=True, sys_argv=argv
  )
  return fv


def _load(name: str) -> ml_collections.ConfigDict:
  argv = ["prog", f"--config={REPO}/configs/{name}.py"]
  fv = _flag_values(argv)
  fv(argv)
  return fv.config


KEYS = {name: _leaf_keys(_load(name)) for name in CONFIG_FILES}
_VALUES = st.one_of(
  st.text(max_size=12),
  st.integers(-(10**12), 10**12).map(str),
  st.floats(allow_nan=True, allow_infinity=True).map(repr),
  st.sampled_from(
    [
      "True",
      "false",
      "None",
      "()",
      "(1, 2)",
      "[3]",
      "{}",
      "'x'",
      "1e-3",
      "digits",
      "cifar10",
      "lax",
      "-1",
      "0",
      "",
    ]
  ),
)


@st.composite
def _overrides(draw):
  name = draw(st.sampled_from(CONFIG_FILES))
  key = draw(
    st.one_of(
      st.sampled_from(KEYS[name]),
      st.sampled_from(["no_such_key", "data.nope", "model..x", "search"]),
    )
  )
  return name, key, draw(_VALUES)


@settings(
  max_examples=150,
  deadline=None,
  derandomize=True,
  suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(_overrides())
def test_any_override_parses_with_its_type_or_exits_2_with_one_paragraph(
  monkeypatch, capsys, override
):
  name, key, value = override
  argv = ["prog", f"--config={REPO}/configs/{name}.py", f"--config.{key}={value}"]
  fv = _flag_values(argv)
  monkeypatch.setattr(flags, "FLAGS", fv)
  try:
    cli._parse_flags(argv)  # pylint: disable=protected-access
  except SystemExit as e:
    assert e.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert "\n\n" not in err.strip()  # one paragraph
    return
  default = _load(name)
  for part in key.split(".")[:-1]:
    default = default[part]
  old = default[key.split(".")[-1]]
  new = fv.config
  for part in key.split("."):
    new = new[part]
  if old is not None and new is not None:
    # bool and int fields accept only their own type; float fields accept ints.
    assert isinstance(new, type(old)) or (isinstance(old, float) and isinstance(new, int)), (
      key,
      value,
      old,
      new,
    )


@pytest.mark.parametrize(
  "override,expected",
  [
    ("batch_size=5", 5),
    ("optimizer.learning_rate=0.01", 0.01),
    ("data.name=cifar10", "cifar10"),
    ("batch_size=five", None),
    ("no_such_key=1", None),
    ("progress_bar=maybe", None),
  ],
)
def test_known_overrides(monkeypatch, capsys, override, expected):
  # Anchors the property test: the harness really applies valid overrides.
  argv = ["prog", f"--config={REPO}/configs/reactnet.py", f"--config.{override}"]
  fv = _flag_values(argv)
  monkeypatch.setattr(flags, "FLAGS", fv)
  if expected is None:
    with pytest.raises(SystemExit) as e:
      cli._parse_flags(argv)  # pylint: disable=protected-access
    assert e.value.code == EXIT_BAD_INPUT and capsys.readouterr().err.startswith("error: ")
  else:
    cli._parse_flags(argv)  # pylint: disable=protected-access
    value = fv.config
    for part in override.split("=")[0].split("."):
      value = value[part]
    assert value == expected
