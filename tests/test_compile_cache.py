"""The persistent compilation cache: a relaunch loads what the first launch compiled."""

import os
import subprocess
import sys

import pytest

from bnas_jax import compile_cache
from bnas_jax.errors import UserInputError

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One "launch": configure the cache as main.py does, compile one program, and
# print JAX's cache events (misses on a cold cache, hits on a warm one).
_LAUNCH = """
import sys
import jax, jax.numpy as jnp
from jax import monitoring
from bnas_jax import compile_cache
events = []
monitoring.register_event_listener(lambda name, **kw: events.append(name))
arg = sys.argv[1] if len(sys.argv) > 1 else None
print("dir", compile_cache.configure(arg))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.jit(lambda x: jnp.tanh(x) @ x.T)(jnp.ones((4, 4))).block_until_ready()
print("hits", sum(e.endswith("cache_hits") for e in events))
print("misses", sum(e.endswith("cache_misses") for e in events))
"""


def _launch(env_update, *args):
  env = dict(os.environ, PYTHONPATH=_REPO, TF_CPP_MIN_LOG_LEVEL="3")
  env.pop(compile_cache.ENV, None)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  env.update(env_update)
  out = subprocess.run(
    [sys.executable, "-c", _LAUNCH, *args], env=env, check=True, capture_output=True, text=True
  ).stdout
  return dict(
    line.split(" ", 1) for line in out.splitlines() if line[:4] in ("dir ", "hits", "miss")
  )


def test_on_by_default_in_the_user_cache_and_a_relaunch_hits_it(tmp_path):
  env = {"XDG_CACHE_HOME": str(tmp_path)}
  first, second = _launch(env), _launch(env)
  expected = os.path.join(str(tmp_path), "bnas_jax", "xla")
  assert first["dir"] == second["dir"] == expected
  assert int(first["misses"]) > 0 and int(first["hits"]) == 0
  assert int(second["hits"]) == int(first["misses"]) and int(second["misses"]) == 0
  assert os.listdir(expected)


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_off_switch_stores_nothing(tmp_path, how):
  env = {"XDG_CACHE_HOME": str(tmp_path)}
  args = ("off",) if how == "argument" else ()
  if how == "environment":
    env[compile_cache.ENV] = "off"
  for _ in range(2):
    out = _launch(env, *args)
    assert out["dir"] == "None" and int(out["hits"]) == 0
  assert not os.path.exists(os.path.join(str(tmp_path), "bnas_jax"))


def test_explicit_location_wins_over_the_default(tmp_path):
  out = _launch(
    {"XDG_CACHE_HOME": str(tmp_path / "default"), compile_cache.ENV: str(tmp_path / "env")},
    str(tmp_path / "arg"),
  )
  assert out["dir"] == str(tmp_path / "arg")
  assert os.listdir(tmp_path / "arg") and not (tmp_path / "env").exists()


def test_unusable_explicit_location_is_a_user_error(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(UserInputError, match="off"):
    compile_cache.configure(str(blocker / "cache"))
