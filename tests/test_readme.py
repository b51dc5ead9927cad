"""The README and docs/ stay in sync: the README's test command is CI's, every
launcher flag is documented, and docs/config.md's key table is the one
generated from configs/."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
DOCS_DIR = os.path.join(ROOT, "docs")
DOCS = {name: open(os.path.join(DOCS_DIR, name), encoding="utf-8").read()
        for name in sorted(os.listdir(DOCS_DIR)) if name.endswith(".md")}
ALL_TEXT = README + "".join(DOCS.values())


def _bash_blocks():
  return re.findall(r"```bash\n(.*?)```", README, re.S)


def test_ci_runs_exactly_the_readme_test_command():
  test_commands = [b.strip() for b in _bash_blocks() if "pytest" in b]
  assert len(test_commands) == 1, test_commands
  ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
  assert test_commands[0] in ci.splitlines()


@pytest.mark.parametrize("launcher", ["scbch", "dcgmh", "evaluate", "prepare_data",
                                      "encode", "search", "sweep", "report"])
def test_every_launcher_flag_is_documented(launcher):
  code = (f"import sys; sys.argv=['x']; import launch.{launcher}; "
          "from absl import flags; "
          f"mods=['launch.{launcher}', 'launch.cli', 'launch.prepare_data']; "
          "print(' '.join(f.name for m in mods for f in flags.FLAGS.get_flags_for_module(m)))")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, check=True, env=dict(os.environ, PYTHONPATH=ROOT))
  names = out.stdout.split()
  assert names
  missing = [n for n in names if f"`--{n}`" not in ALL_TEXT]
  assert not missing, f"flags of launch/{launcher}.py missing from README.md and docs/: {missing}"


@pytest.mark.parametrize("method", ["scbch", "dcgmh"])
def test_every_config_key_is_in_docs_config_md_with_a_doc_line(method):
  import importlib
  import configs
  config = importlib.import_module(f"configs.{method}").get_config()
  missing = [k for k in config.keys() if f"`config.{k}`" not in DOCS["config.md"]]
  assert not missing, f"keys of configs/{method}.py missing from docs/config.md: {missing}"
  docs = configs.key_docs(method)
  undocumented = [k for k in config.keys() if not docs.get(k, "").strip()]
  assert not undocumented, f"keys of configs/{method}.py without a DOCS line: {undocumented}"
  stale = sorted(set(importlib.import_module(f"configs.{method}").DOCS) - set(config.keys()))
  assert not stale, f"DOCS of configs/{method}.py names keys it does not have: {stale}"


def test_docs_config_md_key_table_is_the_generated_one():
  import configs
  text = DOCS["config.md"]
  begin = text.index("<!-- config-keys:begin")
  begin = text.index("\n", begin) + 1
  end = text.index("<!-- config-keys:end -->")
  assert text[begin:end] == configs.markdown_table(), (
      "docs/config.md's key table is stale: regenerate it with `python -m configs`")


def test_readme_is_short_and_links_only_existing_docs():
  assert len(README.encode("utf-8")) < 15_000
  linked = set(re.findall(r"docs/([\w.]+\.md)", README))
  assert linked and linked <= set(DOCS), linked - set(DOCS)
  # every docs page is reachable from the README
  assert set(DOCS) <= linked, set(DOCS) - linked
