"""The guarded reader of user files (issue 18 Sec. 2): every failure is one short paragraph."""

import os

import ml_collections
import pytest

from bnas_jax import user_files
from bnas_jax.errors import UserInputError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _error(fn, *args, **kwargs) -> str:
  with pytest.raises(UserInputError) as e:
    fn(*args, **kwargs)
  message = str(e.value)
  assert "\n" not in message
  return message


def test_read_text_accepts_plain_utf8(tmp_path):
  path = tmp_path / "g.json"
  path.write_text('{"a": "é"}\n', encoding="utf-8")
  assert user_files.read_text(str(path), "f") == '{"a": "é"}\n'


@pytest.mark.parametrize(
  "content,expected",
  [
    (b"\xff\xfe{}", "not UTF-8 text (byte 0xff at offset 0)"),
    (b'{"a": 1}\x00', "control character '\\x00'"),
    ("stem:１６".encode(), "non-ASCII character '１' (U+FF11)"),
    ("stem:٣".encode(), "non-ASCII character '٣' (U+0663)"),  # Arabic-Indic three
  ],
)
def test_read_text_rejects_bad_bytes(tmp_path, content, expected):
  path = tmp_path / "f"
  path.write_bytes(content)
  assert expected in _error(user_files.read_text, str(path), "the file", ascii_only=True)


def test_read_text_missing_directory_and_too_large(tmp_path):
  assert "does not exist" in _error(user_files.read_text, str(tmp_path / "nope"), "f")
  assert "is a directory" in _error(user_files.read_text, str(tmp_path), "f")
  big = tmp_path / "big"
  big.write_bytes(b"[" + b"1," * 600_000 + b"1]")
  message = _error(user_files.read_text, str(big), "f")
  assert "1,200,003 bytes, more than the 1,048,576" in message and len(message) < 400


def test_parse_json_limits():
  assert user_files.parse_json("[" * 32 + "]" * 32, "j") == eval("[" * 32 + "]" * 32)  # pylint: disable=eval-used
  assert "deeper than 32 levels" in _error(user_files.parse_json, "[" * 33 + "]" * 33, "j")
  # Deep enough to overflow Python's recursion without the pre-scan.
  assert "deeper than 32" in _error(user_files.parse_json, "[" * 100_000 + "]" * 100_000, "j")
  assert user_files.parse_json("[999999999999999999]", "j") == [10**18 - 1]
  assert "more than 18 digits" in _error(user_files.parse_json, "[" + "9" * 19 + "]", "j")
  assert "more than 18 digits" in _error(user_files.parse_json, "[" + "9" * 5000 + "]", "j")
  # Long fractions, exponents and digits inside strings are fine.
  assert user_files.parse_json('[0.30000000000000004, 1e-05, "12345678901234567890"]', "j") == [
    0.30000000000000004,
    1e-05,
    "12345678901234567890",
  ]
  assert "not a finite number" in _error(user_files.parse_json, "[NaN]", "j")
  assert "not a finite number" in _error(user_files.parse_json, "[Infinity]", "j")
  assert "not valid JSON" in _error(user_files.parse_json, '{"a": }', "j")


def test_messages_quote_at_most_about_200_characters():
  text = '{"a": [' + "1, " * 3_000_000 + "x]}"  # 9 MB, invalid at the end
  message = _error(user_files.parse_json, text, "the genotype")
  assert len(message) < 400
  assert len(_error(user_files.check_spec, "stem" + "é" * 10_000, "--arch")) < 400
  assert len(_error(user_files.check_spec, "s" * 100_000, "--arch")) < 400


def test_check_spec_reads_files_and_inline_strings(tmp_path):
  user_files.check_spec("stem24|s1:48k3g1", "--arch")
  user_files.check_spec("[16, 32]", "--arch")
  path = tmp_path / "w.json"
  path.write_text('{"widths": [16, 32]}')
  user_files.check_spec(str(path), "--arch")
  path.write_text("[" * 50 + "]" * 50)
  assert "deeper than 32" in _error(user_files.check_spec, str(path), "--arch")
  assert "non-ASCII" in _error(user_files.check_spec, "c１６[MB3(6)]", "--arch")
  assert "the number 1,000,000,000; no width" in _error(
    user_files.check_spec, "[16, 1000000000]", "--arch"
  )
  path.write_text('{"widths": [16, 70000]}')
  assert "70,000" in _error(user_files.check_spec, str(path), "--arch")


@pytest.mark.parametrize(
  "source,expected",
  [
    (None, "does not exist"),
    ("def get_config(:\n", "is not valid Python (invalid syntax on line 1)"),
    ("raise RuntimeError('boom')\n", "fails while loading: RuntimeError: 'boom'"),
    ("x = 1\n", "defines no get_config() function"),
    ("def get_config():\n  return 1 / 0\n", "get_config() raised ZeroDivisionError"),
    ("def get_config():\n  return {'a': 1}\n", "returned a dict, not an ml_collections.ConfigDict"),
    ("def get_config(arg):\n  return None\n", "returned a NoneType"),
  ],
)
def test_load_config_failures(tmp_path, source, expected):
  path = tmp_path / "c.py"
  if source is not None:
    path.write_text(source)
  spec = str(path) + (":p" if "arg" in (source or "") else "")
  assert expected in _error(user_files.load_config, spec)


@pytest.mark.parametrize(
  "spec,expected",
  [
    ("", "not a Python config file"),
    ("configs", "not a Python config file"),
    ("README.md", "not a Python config file"),
    ("configs/reactnet.py:", "ends with ':' but names no preset"),
    ("configs/reactnet.py:nope", "Unknown preset 'nope'"),
  ],
)
def test_load_config_specs(monkeypatch, spec, expected):
  monkeypatch.chdir(REPO)
  assert expected in _error(user_files.load_config, spec)


def test_load_config_of_a_real_file(monkeypatch):
  monkeypatch.chdir(REPO)
  config = user_files.load_config("configs/reactnet.py:cifar10")
  assert isinstance(config, ml_collections.ConfigDict) and config.data.name == "cifar10"


def test_architecture_parsers_quote_at_most_about_200_characters(tmp_path):
  """Each family's architecture reader, handed a 5,000-character spec inline or in a file."""
  from bnas_jax.models import dms_arch  # pylint: disable=g-import-not-at-top
  from bnas_jax.models import nasbnn_subnet  # pylint: disable=g-import-not-at-top
  from bnas_jax.search_spaces import darts  # pylint: disable=g-import-not-at-top
  from bnas_jax.search_spaces import mbconv  # pylint: disable=g-import-not-at-top
  from bnas_jax.search_spaces import nasbnn  # pylint: disable=g-import-not-at-top
  from configs import bimodal as bimodal_config  # pylint: disable=g-import-not-at-top
  from configs import dms as dms_config  # pylint: disable=g-import-not-at-top
  from configs import nasbnn as nasbnn_config  # pylint: disable=g-import-not-at-top

  junk = "s0:" + "x" * 5_000
  junk_file = tmp_path / ("y" * 200 + ".txt")
  junk_file.write_text(junk)
  genotype_file = tmp_path / "g.json"
  genotype_file.write_text('{"space": "bnas", "normal": [["conv' + "x" * 5_000 + '", 0]]}')
  nasbnn_space = nasbnn_subnet.space_from_config(nasbnn_config.get_config())
  mbconv_space = mbconv.space_from_config(bimodal_config.get_config("mbconv").model)
  readers = [
    lambda spec: nasbnn.resolve(nasbnn_space, spec),
    lambda spec: darts.load(spec),
    lambda spec: mbconv.load(spec, mbconv_space),
    lambda spec: dms_arch.resolve(dms_config.get_config(), spec),
  ]
  for read in readers:
    for spec in (junk, str(junk_file), str(genotype_file), str(tmp_path / ("z" * 5_000))):
      message = _error(read, spec)
      assert len(message) < 800, message
      assert "x" * 201 not in message and "z" * 201 not in message, message
