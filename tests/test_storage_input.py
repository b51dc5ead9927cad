"""config.input='storage': features read by row from array_record give exactly
the run that in-memory features give (batches, params, CSCC weights, τ̂, mAP),
and the stored column behaves like the array it stands for."""

import threading
import time

import jax
import numpy as np
import pytest

from common import experiment
from common.data import pipeline
from common.data import stored
from common.run_config import ConfigError


class _FakeSource:
  """A random-access record source as tfds.data_source returns, counting reads."""

  def __init__(self, arrays):
    self.arrays = arrays
    self.reads = 0

  def __len__(self):
    return len(next(iter(self.arrays.values())))

  def __getitem__(self, row):
    return {k: v[row] for k, v in self.arrays.items()}

  def __getitems__(self, rows):
    self.reads += 1
    assert rows == sorted(set(rows)), "reads are sorted and unique"
    return [self[r] for r in rows]


def _columns(n=11, seed=0):
  rng = np.random.default_rng(seed)
  arrays = {"image": rng.normal(size=(n, 3)).astype(np.float32),
            "text": rng.normal(size=(n, 2)).astype(np.float32)}
  source = _FakeSource(arrays)
  reader = stored.StoredRows(source, where="f/train", dims={"image": 3, "text": 2})
  return arrays, source, {k: stored.StoredColumn(reader, k) for k in arrays}


def test_stored_column_indexes_like_the_array():
  arrays, source, cols = _columns()
  image, col = arrays["image"], cols["image"]
  assert col.shape == image.shape and col.dtype == np.float32 and len(col) == 11
  for idx in ([3, 1, 3, 0], np.array([10, -1, 2]), np.array([], np.int64)):
    np.testing.assert_array_equal(col[idx], image[idx])
  np.testing.assert_array_equal(col[4], image[4])
  view = col[2:9]                          # basic slicing: a lazy view
  assert isinstance(view, stored.StoredColumn) and view.shape == (7, 3)
  np.testing.assert_array_equal(view[[0, 6]], image[2:9][[0, 6]])
  np.testing.assert_array_equal(np.asarray(view[1:3]), image[2:9][1:3])
  taken = stored.take_rows(col, np.array([8, 0, 5]))
  np.testing.assert_array_equal(np.asarray(taken), image[[8, 0, 5]])
  np.testing.assert_array_equal(np.asarray(stored.take_rows(taken, [2, 0])),
                                image[[5, 8]])
  np.testing.assert_array_equal(stored.take_rows(image, [1]), image[[1]])
  with pytest.raises(IndexError, match="out of range"):
    col[[11]]
  with pytest.raises(TypeError, match="boolean"):
    col[np.ones(11, bool)]


def test_image_and_text_of_a_batch_cost_one_read():
  _, source, cols = _columns()
  rows = np.array([5, 2, 7])
  cols["image"][rows]
  cols["text"][rows]
  assert source.reads == 1
  cols["text"][rows[::-1]]
  assert source.reads == 2


def test_a_non_finite_stored_row_is_named():
  arrays, source, cols = _columns()
  arrays["text"][6, 1] = np.nan
  np.testing.assert_array_equal(cols["text"][[1, 2]], arrays["text"][[1, 2]])
  with pytest.raises(ValueError, match=r"f/train.text: non-finite .* row 6"):
    cols["text"][[1, 6]]


@pytest.mark.parametrize("keep_partial", [False, True])
@pytest.mark.parametrize("processes", [1, 2])
def test_train_batches_read_only_this_process_rows(processes, keep_partial):
  arrays, source, cols = _columns(n=22)
  labels = np.arange(22, dtype=np.float32)[:, None]
  for p in range(processes):
    kwargs = dict(global_batch_size=4, seed=3, epoch=1, start_step=1,
                  process_index=p, process_count=processes, keep_partial=keep_partial)
    want = list(pipeline.train_batches(dict(arrays, labels=labels), **kwargs))
    got = list(pipeline.train_batches(dict(cols, labels=labels), **kwargs))
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
      assert sorted(g) == sorted(w)
      for k in w:
        np.testing.assert_array_equal(g[k], w[k])
        assert g[k].dtype == w[k].dtype
  # Every read was of one process's batch rows only (never the whole split).
  assert source.reads <= sum(len(want) for _ in range(processes)) * 2


def test_eval_batches_and_map_batches_over_stored_columns():
  arrays, _, cols = _columns(n=11)
  fn = lambda b: b["image"].sum(axis=1) + b["text"][:, 0]
  want = pipeline.map_batches(fn, arrays, 4)
  np.testing.assert_array_equal(pipeline.map_batches(fn, cols, 4), want)
  np.testing.assert_array_equal(
      pipeline.map_batches(fn, {k: v[3:8] for k, v in cols.items()}, 4), want[3:8])
  # No rows (a process's empty share): an empty result of the right shape.
  empty = pipeline.map_batches(lambda b: b["image"] * 2, {"image": cols["image"][5:5]}, 4)
  assert empty.shape == (0, 3) and empty.dtype == np.float32


def test_prefetch_keeps_order_raises_and_stops_early():
  assert list(pipeline.prefetch(iter(range(7)), size=2)) == list(range(7))
  assert list(pipeline.prefetch(iter([]))) == []

  def failing():
    yield 1
    raise ValueError("bad row 9")
  got = pipeline.prefetch(failing())
  assert next(got) == 1
  with pytest.raises(ValueError, match="bad row 9"):
    next(got)

  produced = []
  def endless():
    for i in range(10**6):
      produced.append(i)
      yield i
  before = threading.active_count()
  it = pipeline.prefetch(endless(), size=3)
  assert [next(it) for _ in range(5)] == list(range(5))
  it.close()  # the consumer stops (e.g. preemption): the reader stops too
  time.sleep(0.3)
  assert threading.active_count() == before
  assert len(produced) <= 5 + 3 + 2
  with pytest.raises(ValueError, match="size=-1"):
    next(pipeline.prefetch(iter([1]), size=-1))


def test_prefetch_zero_reads_in_the_consumer_thread():
  threads = []
  def batches():
    for i in range(4):
      threads.append(threading.current_thread())
      yield i
  assert list(pipeline.prefetch(batches(), size=0)) == list(range(4))
  assert threads == [threading.current_thread()] * 4
  assert list(pipeline.prefetch(batches(), size=1)) == list(range(4))
  assert threads[4:] and threading.current_thread() not in threads[4:]


# ------------------------------------------------------------- whole runs


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  from common.data import tfds_builder  # pylint: disable=g-import-not-at-top
  path = str(tmp_path_factory.mktemp("tfds"))
  tfds_builder.build_tfds("synthetic_tiny", path)
  return path


def _tiny(method, **overrides):
  from configs import dcgmh, scbch  # pylint: disable=g-import-not-at-top
  config = (scbch if method == "scbch" else dcgmh).get_config("synthetic")
  config.update(dict(epochs=2, batch_size=32, bits=16, progress=False, keep=100,
                     checkpoint_every=4, eval_every=0))
  if method == "scbch":
    config.update(dict(image_hidden=(32, 32), text_hidden=(32,), cscc_start_epoch=1))
  else:
    config.update(dict(hidden=32, fused=32, warmup_epochs=1))
  config.update(overrides)
  return config


# mid_epoch: a checkpoint inside epoch 2, which holds that epoch's extras
# (SCBCH: 216 items after the val split, 6 steps an epoch; DCGMH: 8).
@pytest.mark.parametrize("method,overrides,mid_epoch", [
    ("scbch", dict(selection="val", val_size=40), 8),
    ("dcgmh", dict(noise_ratio="auto"), 12),
])
def test_storage_input_trains_exactly_as_memory_input(tmp_path, tfds_dir, method,
                                                      overrides, mid_epoch,
                                                      restore_checkpoint):
  runs = {}
  for mode, dataset in (("memory", "synthetic:tiny"), ("storage", "tfds:synthetic_tiny")):
    config = _tiny(method, dataset=dataset, tfds_dir=tfds_dir, input=mode, **overrides)
    if mode == "storage" and method == "scbch":
      config.prefetch = 0  # read in the loop's thread: the same batches
    if mode == "storage" and method == "dcgmh":
      config.prefetch = 5
    runs[mode] = experiment.run(config, str(tmp_path / mode), log=lambda _: None)
  directions = [k for k, v in runs["memory"].items() if isinstance(v, dict) and "map" in v]
  assert directions
  for k in directions:
    assert runs["storage"][k]["map"] == runs["memory"][k]["map"]
  steps = [mid_epoch, max(int(p.name) for p in (tmp_path / "memory" / "checkpoints").iterdir()
                   if p.name.isdigit())]
  with_extras = 0
  for step in steps:  # params, and mid-epoch the per-item extras (CSCC weights / τ̂)
    (pm, em), (ps, es) = (restore_checkpoint(tmp_path / mode, step)
                          for mode in ("memory", "storage"))
    jax.tree.map(np.testing.assert_array_equal, pm, ps)
    assert sorted(em) == sorted(es)
    for k in em:
      np.testing.assert_array_equal(em[k], es[k])
    with_extras += bool(em)
  assert with_extras >= 1, steps


def test_storage_input_needs_a_prepared_dataset(tmp_path):
  config = _tiny("scbch", dataset="synthetic:tiny", input="storage")
  with pytest.raises(ConfigError, match=r"config.input=.*tfds:<name>"):
    experiment.run(config, str(tmp_path / "w"), log=lambda _: None)
  assert not (tmp_path / "w" / "config.json").exists()
  config = _tiny("scbch", prefetch=-1)
  with pytest.raises(ConfigError, match=r"config.prefetch=-1: must be an integer >= 0"):
    experiment.run(config, str(tmp_path / "w"), log=lambda _: None)
  config = _tiny("scbch", input="disk")
  with pytest.raises(ConfigError, match=r"config.input='disk'.*memory"):
    experiment.run(config, str(tmp_path / "w"), log=lambda _: None)


def test_prefetch_may_change_on_resume():
  from common import run_config  # pylint: disable=g-import-not-at-top
  saved = run_config.to_dict(_tiny("scbch"))
  for now in (dict(saved, prefetch=0), dict(saved, prefetch=7)):
    run_config.check_same_run(saved, now, workdir="w")
  older = {k: v for k, v in saved.items() if k != "prefetch"}  # before the key
  run_config.check_same_run(older, saved, workdir="w")
  with pytest.raises(ConfigError, match="config.bits"):
    run_config.check_same_run(saved, dict(saved, bits=32, prefetch=0), workdir="w")
