"""The README stays in sync: its test command is CI's, and every launcher flag is
documented."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()


def _bash_blocks():
  return re.findall(r"```bash\n(.*?)```", README, re.S)


def test_ci_runs_exactly_the_readme_test_command():
  test_commands = [b.strip() for b in _bash_blocks() if "pytest" in b]
  assert len(test_commands) == 1, test_commands
  ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
  assert test_commands[0] in ci.splitlines()


@pytest.mark.parametrize("launcher", ["scbch", "dcgmh", "evaluate", "prepare_data",
                                      "encode", "search", "sweep", "report"])
def test_every_launcher_flag_is_in_the_readme(launcher):
  code = (f"import sys; sys.argv=['x']; import launch.{launcher}; "
          "from absl import flags; "
          f"mods=['launch.{launcher}', 'launch.cli', 'launch.prepare_data']; "
          "print(' '.join(f.name for m in mods for f in flags.FLAGS.get_flags_for_module(m)))")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, check=True, env=dict(os.environ, PYTHONPATH=ROOT))
  names = out.stdout.split()
  assert names
  missing = [n for n in names if f"`--{n}`" not in README]
  assert not missing, f"flags of launch/{launcher}.py missing from README.md: {missing}"


@pytest.mark.parametrize("method", ["scbch", "dcgmh"])
def test_every_config_key_is_in_the_readme(method):
  import importlib
  config = importlib.import_module(f"configs.{method}").get_config()
  missing = [k for k in config.keys() if f"`config.{k}`" not in README]
  assert not missing, f"keys of configs/{method}.py missing from README.md: {missing}"
