"""Property tests of the real CLIs' argument handling (issue 18 Sec. 3).

Generated command lines (config files real and generated, overrides with valid
and nonsensical values, workdirs, architecture files and strings) go through
the CLIs' own flag definitions (`main.define_flags`, `summary.define_flags`),
`cli._parse_flags` and the launch checks (`main.prepare`, `summary.main`).
Every one must either exit with status 2 and one paragraph on stderr (no
traceback, nothing written to the workdir), or pass validation; a `main`
launch that passes is then trained for two steps, which must be finite.
"""

import math
import os

from absl import flags
from hypothesis import HealthCheck, given, settings, strategies as st
import pytest

from bnas_jax import cli
from bnas_jax import main as main_cli
from bnas_jax import run_directory
from bnas_jax import summary as summary_cli
from bnas_jax.errors import EXIT_BAD_INPUT

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_REACTNET = (
  "--config.batch_size=16",
  "--config.eval_batch_size=32",
  "--config.model.blocks=((8, 1, 3, 1), (16, 2, 3, 2))",
  "--config.model.stem_features=8",
  "--config.data.image_size=16",
  "--config.max_eval_examples=32",
  "--config.num_train_steps=2",
  "--config.progress_bar=False",
  "--config.log_every_steps=1",
)

# (field, values that must be accepted, values that must be rejected), for the tiny run.
REACTNET_FIELDS = (
  ("optimizer.learning_rate", ["0.001", "1.0"], ["0", "-1e-3", "nan", "inf", "1e30", "10"]),
  ("optimizer.b1", ["0.0", "0.5"], ["1.0", "2.0", "-0.1", "nan"]),
  ("optimizer.weight_decay", ["0.0", "1e-4"], ["-1e-4", "inf"]),
  ("optimizer.grad_clip_norm", ["1.0", "None"], ["0.0", "-1.0", "nan"]),
  ("label_smoothing", ["0.0", "0.1"], ["-0.5", "1.0", "1.5", "nan"]),
  ("num_train_steps", ["1", "2"], ["-5"]),
  ("keep_checkpoints", ["1", "3"], ["0", "-1"]),
  ("checkpoint_every_steps", ["0", "1"], ["-1"]),
  ("log_every_steps", ["1", "5"], ["0", "-2"]),
  ("num_devices", ["0", "1"], ["-1"]),
  ("seed", ["0", "2147483647"], ["-1", "2147483648", "99999999999999999999999"]),
  ("data.image_size", ["16", "24"], ["0", "7", "100000"]),
  ("model.stem_weight_bits", ["8"], ["3", "0"]),
  ("model.width_multiplier", ["1.0", "0.5"], ["0.0", "nan", "-1.0"]),
  (
    "model.blocks",
    ["((8, 1, 3, 1),)", "((8, 2, 3, 2), (8, 1, 5, 1))"],
    [
      "()",
      "((8, 3, 3, 1),)",
      "((8, 2, 3, 1),) * 4",
      "((8, 1, 4, 1),)",
      "((0, 1, 3, 1),)",
      "((1000000000, 1, 3, 1),)",
    ],
  ),
  ("batch_size", ["16", "32"], ["0", "-3", "100000"]),
  ("max_eval_examples", ["0", "32"], ["-1"]),
  ("num_epochs", ["1"], ["-1"]),
)
OTHER_CONFIGS = ("nasbnn", "bnas", "bats", "bimodal", "dms")
OTHER_FIELDS = (
  "seed",
  "batch_size",
  "num_devices",
  "keep_checkpoints",
  "log_every_steps",
  "search.sweep_chunk",
  "supernet.sampling",
  "search.optimizer.learning_rate",
  "final.drop_path_prob",
  "eval.arch",
  "genotype_file",
  "search.num_blocks",
  "data.holdout_fraction",
  "deploy.ops_targets",
  "model.widths",
)
JUNK_VALUES = st.one_of(
  st.text(max_size=10),
  st.integers(-(10**20), 10**20).map(str),
  st.floats(allow_nan=True, allow_infinity=True).map(repr),
  st.sampled_from(["True", "None", "()", "(1, 2)", "bogus", "''", "-1", "0", "1e308"]),
)

# Generated config files: (file name, content).
CONFIG_FILES = {
  "valid.py": "from configs.reactnet import get_config  # noqa\n",
  "raises.py": "def get_config():\n  raise RuntimeError('boom ' * 1000)\n",
  "returns_dict.py": "def get_config():\n  return {'trainer': 'supervised'}\n",
  "no_get_config.py": "CONFIG = 1\n",
  "syntax.py": "def get_config(:\n",
  "import_error.py": "import no_such_module_anywhere\n",
  "binary.py": b"\xff\xfe\x00\x01" * 100,
  "not_python.txt": "trainer: supervised\n",
}


def _write_config_files(directory):
  os.makedirs(directory / "a_directory.py", exist_ok=True)
  for name, content in CONFIG_FILES.items():
    path = directory / name
    if isinstance(content, bytes):
      path.write_bytes(content)
    else:
      path.write_text(content)


@st.composite
def main_command_lines(draw):
  kind = draw(st.sampled_from(["reactnet"] * 6 + ["other", "generated"]))
  args, trains = [], False
  if kind == "reactnet":
    preset = draw(st.sampled_from(["", "", "", ":", ":nope", ":digits"]))
    args += [f"--config={REPO}/configs/reactnet.py{preset}", *TINY_REACTNET]
    valid = True
    for field, good, bad in draw(
      st.lists(st.sampled_from(REACTNET_FIELDS), max_size=3, unique_by=lambda f: f[0])
    ):
      if draw(st.integers(0, 2)) == 0:  # mostly nonsense: valid launches train (slow)
        value = draw(st.sampled_from(good))
      else:
        value, valid = draw(st.sampled_from(bad)), False
      args.append(f"--config.{field}={value}")
    # Expected: accepted exactly when every value is from the accepted lists.
    trains = valid and preset in ("", ":digits")
  elif kind == "other":
    name = draw(st.sampled_from(OTHER_CONFIGS))
    args.append(f"--config={REPO}/configs/{name}.py")
    for field in draw(st.lists(st.sampled_from(OTHER_FIELDS), max_size=2, unique=True)):
      args.append(f"--config.{field}={draw(JUNK_VALUES)}")
  else:
    name = draw(st.sampled_from(sorted(CONFIG_FILES) + ["a_directory.py", "missing.py"]))
    args.append(f"--config=GENERATED/{name}")
  workdir = draw(st.sampled_from(["RUN", "RUN", "RUN", "", "FILE/run"]))
  if workdir != "RUN":
    trains = False
  args.append(f"--workdir={workdir}")
  return args, trains


def _substitute(args, tmp_path):
  run = tmp_path / "run"
  (tmp_path / "a_file").write_text("a file, not a directory")
  out = [
    a.replace("GENERATED", str(tmp_path / "generated"))
    .replace("FILE", str(tmp_path / "a_file"))
    .replace("RUN", str(run))
    for a in args
  ]
  return out, run


def _assert_one_paragraph_exit(e, capsys):
  assert e.code == EXIT_BAD_INPUT, e.code
  err = capsys.readouterr().err
  # In-process, stderr may also hold this process's warnings (hypothesis, TF's
  # import); test_cli checks that a real run prints the paragraph alone.
  assert "error: " in err and "Traceback" not in err, err
  paragraph = err[err.index("error: ") :]
  assert "\n\n" not in paragraph.strip() and len(paragraph) < 2500, paragraph


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
  base = tmp_path_factory.mktemp("cli_properties")
  (base / "generated").mkdir()
  _write_config_files(base / "generated")
  return base


TRAINED_LAUNCHES = 3  # accepted tiny launches trained for two steps (compiles dominate)


def test_main_exits_2_with_one_paragraph_or_runs_finite_steps(tmp_path_factory, generated, capsys):
  accepted = []

  @settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
  )
  @given(main_command_lines())
  def check(command_line):
    args, trains = command_line
    tmp_path = tmp_path_factory.mktemp("main")
    (tmp_path / "generated").symlink_to(generated / "generated")
    args, run = _substitute(args, tmp_path)
    argv = ["bnas_jax.main", *args]
    fv = flags.FlagValues()
    main_cli.define_flags(fv, sys_argv=argv)
    try:
      cli._parse_flags(argv, fv)  # pylint: disable=protected-access
      with cli.user_errors_exit():
        launch = main_cli.prepare(fv)
    except SystemExit as e:
      _assert_one_paragraph_exit(e, capsys)
      assert not run.exists()  # a rejected run creates nothing
      assert not trains, f"rejected although valid: {args}"
      return
    assert not run.exists()  # validation writes nothing
    if args[0].startswith(f"--config={REPO}/configs/reactnet.py"):
      assert trains, f"accepted although a value is nonsense: {args}"
      accepted.append((args, fv, launch))
    # Other accepted configs are full runs (minutes): validation is what is tested.

  check()
  # The most-overridden accepted launches (the most unusual values) train for
  # two steps through the real trainer; every number must stay finite.
  accepted.sort(key=lambda a: -len(a[0]))
  assert len(accepted) >= TRAINED_LAUNCHES
  for args, fv, launch in accepted[:TRAINED_LAUNCHES]:
    run_directory.create(fv.workdir)
    run_directory.record(launch.snapshot)
    results = launch.trainer.train_and_evaluate(fv.config, fv.workdir)
    assert math.isfinite(results["test_loss"]) and 0 <= results["test_accuracy"] <= 1, (
      args,
      results,
    )


@st.composite
def summary_command_lines(draw):
  name = draw(st.sampled_from(["nasbnn", "dms", "bnas", "reactnet"]))
  args = [f"--config={REPO}/configs/{name}.py"]
  arch = draw(
    st.one_of(
      st.none(),
      st.sampled_from(
        [
          "A",
          "smallest",
          "uniform2x",
          "fp",
          "stem:１６",
          "c１６[MB3(6)]",
          "[16, 32]",
          "[" * 40 + "]" * 40,
          "[" + "9" * 30 + "]",
          "{}",
          "",
        ]
      ),
      st.text(max_size=30),
      st.sampled_from(
        ["FILE:binary", "FILE:deep", "FILE:bigint", "FILE:widths", "FILE:nonascii", "FILE:empty"]
      ),
    )
  )
  if arch is not None:
    args.append(f"--arch={arch}")
  if draw(st.booleans()):
    args.append(f"--batch={draw(st.integers(-5, 5000))}")
  return args


ARCH_FILES = {
  "binary": b"\xff\xfe\x00" * 50,
  "deep": b"[" * 5000 + b"]" * 5000,
  "bigint": b"[" + b"9" * 5000 + b"]",
  "widths": b'{"widths": [16, 32]}',
  "nonascii": "stem:٣٢".encode(),
  "empty": b"",
}


@settings(
  max_examples=40,
  deadline=None,
  derandomize=True,
  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(summary_command_lines())
def test_summary_exits_2_with_one_paragraph_or_prints_a_report(
  tmp_path_factory, capsys, command_line
):
  tmp_path = tmp_path_factory.mktemp("summary")
  for name, content in ARCH_FILES.items():
    (tmp_path / name).write_bytes(content)
  args = [a.replace("FILE:", f"{tmp_path}/") for a in command_line]
  argv = ["bnas_jax.summary", *args]
  fv = flags.FlagValues()
  summary_cli.define_flags(fv, sys_argv=argv)
  try:
    summary_cli.main(cli._parse_flags(argv, fv), fv)  # pylint: disable=protected-access
  except SystemExit as e:
    _assert_one_paragraph_exit(e, capsys)
    return
  out = capsys.readouterr().out
  assert out.strip(), args  # a table or JSON was printed
