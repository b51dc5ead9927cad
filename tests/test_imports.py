"""The project's import graph: every module imports alone, and no cycle exists.

A cycle among the project's modules works only in some import orders (the
module imported first sees a half-initialised partner); method packages plug
in through common.methods.REGISTRY strings, so common never imports them.
"""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("common", "configs", "launch", "scbch_jax", "dcgmh_jax", "nrch_jax")


def _modules() -> dict[str, str]:
  """{dotted name: path} of every module of the project's packages."""
  out = {}
  for package in PACKAGES:
    for folder, _, files in os.walk(os.path.join(ROOT, package)):
      for name in sorted(files):
        if name.endswith(".py"):
          path = os.path.join(folder, name)
          dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
          out[dotted.removesuffix(".__init__")] = path
  return out


def _imports(path: str, module: str, modules: dict[str, str]) -> set[str]:
  """Project modules `module` imports at module level or inside functions.

  `from pkg import name` counts as importing pkg.name when that is a module,
  else pkg; importing a package from inside itself (a submodule reaching its
  own package's __init__) is how Python loads packages, not a cycle.
  """
  tree = ast.parse(open(path, encoding="utf-8").read())
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
               else node.module for a in node.names]
    else:
      continue
    for name in names:
      if name in modules and name != module and not module.startswith(name + "."):
        found.add(name)
  return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []
  counter = [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_no_import_cycle_among_project_modules():
  modules = _modules()
  graph = {m: _imports(p, m, modules) for m, p in modules.items()}
  assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  assert _cycles({"a": {"b"}, "b": set()}) == []


def test_common_never_imports_a_method_package():
  modules = _modules()
  for module, path in modules.items():
    if module.startswith("common"):
      bad = {m for m in _imports(path, module, modules)
             if m.split(".")[0] in ("scbch_jax", "dcgmh_jax", "nrch_jax", "launch")}
      assert not bad, (module, bad)


def test_every_module_imports_alone():
  """Each module in a fresh interpreter of its own (one process runs them in
  turn, each after clearing the project's modules from sys.modules)."""
  modules = sorted(m for m in _modules() if not m.startswith("launch.")
                   or m == "launch")
  script = (
      "import importlib, sys\n"
      "failed = []\n"
      f"for name in {modules!r}:\n"
      f"  for loaded in [m for m in sys.modules if m.split('.')[0] in {PACKAGES!r}]:\n"
      "    del sys.modules[loaded]\n"
      "  try:\n"
      "    importlib.import_module(name)\n"
      "  except Exception as e:\n"
      "    failed.append(f'{name}: {type(e).__name__}: {e}')\n"
      "print('\\n'.join(failed))\n"
      "sys.exit(1 if failed else 0)\n")
  result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT))
  assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", ["scbch", "dcgmh"])
def test_registry_names_each_spec(name):
  from common import methods  # pylint: disable=g-import-not-at-top
  spec = methods.get_spec(name)
  assert spec.name == name
  assert spec.config_module == f"configs.{name}"
  assert spec.code_keys and all(k for pair in spec.directions.values() for k in pair)
