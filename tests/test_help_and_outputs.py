"""Help that lists the config, and output hygiene (issue 18): files follow the
umask, temporary files never follow a planted link, a full disk under
TensorBoard is one error, and own data far from the presets' schedule gets a
one-line hint."""

import errno
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
ENV.pop("NHJ_TRACEBACK", None)


def _run(*args):
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=ENV,
                        capture_output=True, text=True, timeout=120)


def _docs_of(path):
  """DOCS of a configs/ file, read with ast (independent of configs/__init__)."""
  import ast
  tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())
  for node in tree.body:
    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "DOCS":
      return ast.literal_eval(node.value)
  raise AssertionError(f"no DOCS in {path}")


def _as_flag_value(value):
  if isinstance(value, tuple):
    return ",".join(map(str, value)) + ("," if len(value) == 1 else "")
  return str(value)


@pytest.mark.parametrize("method,arg,help_flag", [
    ("scbch", "mirflickr25k", "--help"), ("dcgmh", None, "--helpshort")])
def test_trainer_help_exits_0_and_lists_flags_config_forms_and_every_key(
    method, arg, help_flag):
  import importlib
  config_arg = [f"--config=configs/{method}.py" + (f":{arg}" if arg else "")]
  proc = _run(f"launch.{method}", *config_arg, "--config.bits=64", help_flag)
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout
  for flag in ("--workdir", "--eval_only", "--eval_step", "--compilation_cache_dir",
               "--distributed"):
    assert f"  {flag}" in out, flag
  assert f"--config=configs/{method}.py:<benchmark>" in out
  assert "--config.<key>=<value>" in out
  config = importlib.import_module(f"configs.{method}").get_config(arg)
  docs = {**_docs_of("configs/base.py"), **_docs_of(f"configs/{method}.py")}
  lines = out.splitlines()
  for key in config.keys():
    value = 64 if key == "bits" else config[key]
    line = f"  --config.{key}={_as_flag_value(value)}"
    assert line in lines, line
    # the next line is the key's one line of doc
    assert lines[lines.index(line) + 1].strip() == docs[key], key
  assert "Try --helpfull" not in out


def test_other_launchers_help_exits_0_with_their_flags():
  proc = _run("launch.encode", "--help")
  assert proc.returncode == 0, proc.stderr
  for flag in ("--workdir", "--data", "--out", "--overwrite"):
    assert f"  {flag}" in proc.stdout
  assert "--config." not in proc.stdout


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_atomic_writes_follow_the_umask(tmp_path, mask):
  from common import workdir as workdir_lib
  old = os.umask(mask)
  try:
    plain = tmp_path / "plain.txt"
    with open(plain, "w") as f:  # what open() gives: the reference
      f.write("x")
    workdir_lib.atomic_write_json(str(tmp_path / "a.json"), {"a": 1})
    workdir_lib.atomic_savez(str(tmp_path / "c.npz"), x=np.zeros(3))
    workdir_lib.atomic_write_text(str(tmp_path / "t.txt"), "x")
  finally:
    os.umask(old)
  expected = os.stat(plain).st_mode & 0o777
  assert expected == 0o666 & ~mask
  for name in ("a.json", "c.npz", "t.txt"):
    assert os.stat(tmp_path / name).st_mode & 0o777 == expected, name


def _python(code):
  """Runs `code` in a fresh interpreter: launch/ modules define absl flags,
  and two of them cannot be imported into one process."""
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return proc.stdout


def test_metrics_rewrite_and_search_csv_never_follow_a_planted_link(tmp_path):
  """The old fixed temporary names (<file>.tmp, <out>.tmp-<pid>) were links an
  attacker could plant in a shared folder; the writers now use mkstemp."""
  from common import reporting
  victim = tmp_path / "victim.txt"
  victim.write_text("precious\n")
  metrics = tmp_path / "metrics.jsonl"
  metrics.write_text("".join(json.dumps({"kind": "train", "step": s}) + "\n"
                             for s in (1, 2, 3)))
  os.symlink(victim, str(metrics) + ".tmp")
  reporting._drop_after(str(metrics), 2)  # pylint: disable=protected-access
  assert [json.loads(l)["step"] for l in metrics.read_text().splitlines()] == [1, 2]
  assert victim.read_text() == "precious\n"
  out = tmp_path / "hits.csv"
  _python(f"""
import os
from launch import search
for pid in range(os.getpid(), os.getpid() + 50):  # this process's pid among them
  os.symlink({str(victim)!r}, f"{str(out)}.tmp-{{pid}}")
search.write_hits({{"direction": "i2t", "k": 1, "radius": None,
                   "queries": [{{"query": 7, "ids": [3], "distances": [2]}}]}}, {str(out)!r})
""")
  assert out.read_text().splitlines() == ["query,rank,id,distance", "7,1,3,2"]
  assert victim.read_text() == "precious\n"


def test_search_out_refused_when_it_exists_or_is_a_folder(tmp_path):
  existing = tmp_path / "hits.json"
  existing.write_text("{}")
  folder = tmp_path / "d.json"
  folder.mkdir()
  _python(f"""
import pytest
from launch import search
with pytest.raises(ValueError, match="exists; pass --overwrite"):
  search.check_out_file({str(existing)!r}, overwrite=False)
search.check_out_file({str(existing)!r}, overwrite=True)
with pytest.raises(ValueError, match="is a folder"):
  search.check_out_file({str(folder)!r}, overwrite=True)
search.check_out_file({str(tmp_path / "new.csv")!r}, overwrite=False)
""")


def test_encode_out_refused_when_it_holds_files(tmp_path):
  out = tmp_path / "index"
  _python(f"""
import os, pytest
from launch import encode
out = {str(out)!r}
encode.check_out_folder(out, overwrite=False)      # new: fine
os.mkdir(out)
encode.check_out_folder(out, overwrite=False)      # empty: fine
open(os.path.join(out, "codes.npz"), "wb").close()
with pytest.raises(ValueError, match="not empty; pass --overwrite"):
  encode.check_out_folder(out, overwrite=False)
encode.check_out_folder(out, overwrite=True)
""")


def test_tensorboard_disk_full_is_one_oserror_and_no_thread_traceback(
    tmp_path, monkeypatch, capfd):
  """A full disk under tensorboardX's writer thread: no thread traceback on
  stderr; the next write raises one OSError naming the tensorboard folder."""
  import threading
  import time
  from tensorboardX import record_writer
  from common import reporting

  def full(self, *data):
    raise OSError(errno.ENOSPC, "No space left on device")
  writer = reporting.MetricsWriter(str(tmp_path))
  writer.write("train", 1, {"loss": 1.0})
  monkeypatch.setattr(record_writer.RecordWriter, "write", full)
  monkeypatch.setattr(record_writer.RecordWriter, "flush", full)
  with pytest.raises(OSError) as error:
    for step in range(2, 50):  # the thread fails, the main thread then raises
      writer.write("train", step, {"loss": 1.0})
      time.sleep(0.02)
  assert error.value.errno == errno.ENOSPC
  assert error.value.filename == os.path.join(str(tmp_path), "tensorboard")
  writer.close()
  for thread in threading.enumerate():
    if type(thread).__module__.startswith("tensorboardX"):
      thread.join(timeout=5)
  assert "Traceback" not in capfd.readouterr().err


def test_a_failing_tensorboard_thread_never_makes_another_writer_raise(
    tmp_path, monkeypatch):
  """Thread failures are kept per writer: writer A's thread failing (even after
  A reported it) leaves writer B, opened later, writing normally."""
  import threading
  import time
  from tensorboardX import record_writer
  from common import reporting

  def full(self, *data):
    raise OSError(errno.ENOSPC, "No space left on device")
  first = reporting.MetricsWriter(str(tmp_path / "a"))
  assert reporting._event_thread(first._events) is not None  # pylint: disable=protected-access
  monkeypatch.setattr(record_writer.RecordWriter, "write", full)
  monkeypatch.setattr(record_writer.RecordWriter, "flush", full)
  with pytest.raises(OSError):
    for step in range(1, 50):
      first.write("train", step, {"loss": 1.0})
      time.sleep(0.02)
  first.close()
  # A's thread may still fail once more; give it the chance.
  time.sleep(0.2)
  monkeypatch.undo()
  second = reporting.MetricsWriter(str(tmp_path / "b"))
  for step in range(1, 5):
    second.write("train", step, {"loss": 1.0})
  second.close()
  assert len(reporting.read_jsonl(str(tmp_path / "b" / "metrics.jsonl"))) == 4
  for thread in threading.enumerate():
    if type(thread).__module__.startswith("tensorboardX"):
      thread.join(timeout=5)


@pytest.mark.parametrize("method", ["scbch", "dcgmh"])
@pytest.mark.parametrize("items", [200, 1000, 4000, 200_000])
def test_schedule_hint_for_own_data_far_from_the_preset(method, items):
  import importlib
  import configs
  config = importlib.import_module(f"configs.{method}").get_config()
  config.unlock()
  config.dataset = "folder:/data/mine"
  # Reference: the preset trains `epochs` epochs of 4000 // batch_size steps.
  preset_steps = config.epochs * (4000 // config.batch_size)
  steps = config.epochs * (items // config.batch_size)
  hint = configs.schedule_hint(config, items)
  far = not preset_steps / 3 <= steps <= preset_steps * 3
  assert (hint is not None) == far, (items, hint)
  if hint:
    assert "\n" not in hint
    assert f"{items // config.batch_size} steps an epoch" in hint
    assert "config.epochs" in hint and "config.batch_size" in hint
  config.dataset = "synthetic:demo"
  assert configs.schedule_hint(config, items) is None


def test_os_errors_become_one_line_naming_the_path(tmp_path):
  from launch import cli
  os.symlink(tmp_path / "gone", tmp_path / "link")
  cases = [
      (OSError(errno.ENOSPC, "No space left on device",
               str(tmp_path / ".scbch_final_results.json.k3j_x9q2.tmp")),
       f"{tmp_path / 'scbch_final_results.json'}: no space left on device (writing it)"),
      (OSError(errno.EROFS, "Read-only file system", str(tmp_path / "config.json")),
       f"{tmp_path / 'config.json'}: Read-only file system"),
      (FileExistsError(errno.EEXIST, "File exists", str(tmp_path / "link")),
       f"{tmp_path / 'link'}: a symbolic link to '{tmp_path / 'gone'}', which does "
       "not exist"),
      (KeyError("config.json: key 'x' missing"), "config.json: key 'x' missing"),
  ]
  for error, expected in cases:
    assert cli.user_error_line(error) == expected
  assert issubclass(MemoryError, cli.USER_ERRORS)
  import zipfile
  assert issubclass(zipfile.BadZipFile, cli.USER_ERRORS)
  assert issubclass(PermissionError, cli.USER_ERRORS)
