"""Input pipeline: sharding, coverage, resume, shuffling, eval padding."""

import numpy as np
import pytest

from common.data import pipeline


def _arrays(n, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.random((n, 3), dtype=np.float32),
          "labels": (rng.random((n, 4)) < 0.5).astype(np.float32),
          "row": np.arange(n)}


@pytest.mark.parametrize("n, b", [(10, 3), (9, 3), (7, 7), (1, 1)])
def test_steps_per_epoch(n, b):
  assert pipeline.steps_per_epoch(n, b) == n // b


def test_steps_per_epoch_too_few_items():
  with pytest.raises(ValueError, match=r"num_items=5.*global_batch_size=8"):
    pipeline.steps_per_epoch(5, 8)
  with pytest.raises(ValueError, match=r"global_batch_size=0"):
    pipeline.steps_per_epoch(5, 0)


def test_epoch_permutation_seeding():
  ref = np.random.Generator(np.random.PCG64([3, 2])).permutation(50)
  perm = pipeline.epoch_permutation(50, seed=3, epoch=2)
  np.testing.assert_array_equal(perm, ref)
  np.testing.assert_array_equal(np.sort(perm), np.arange(50))
  assert not np.array_equal(perm, pipeline.epoch_permutation(50, 3, 3))
  assert not np.array_equal(perm, pipeline.epoch_permutation(50, 4, 2))
  with pytest.raises(ValueError, match=r"epoch=-1"):
    pipeline.epoch_permutation(5, 0, -1)


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_processes_cover_each_index_once(processes):
  n, b = 103, 8
  arrays = _arrays(n)
  seen = []
  per_step = {}
  for p in range(processes):
    for step, batch in enumerate(pipeline.train_batches(
        arrays, global_batch_size=b, seed=5, epoch=1, process_index=p,
        process_count=processes)):
      assert batch["index"].dtype == np.int32
      assert batch["index"].shape == (b // processes,)
      # Every array is gathered at the row positions in "index".
      np.testing.assert_array_equal(batch["row"], batch["index"])
      np.testing.assert_array_equal(batch["image"],
                                    arrays["image"][batch["index"]])
      seen.extend(batch["index"].tolist())
      per_step.setdefault(step, {})[p] = batch["index"]
  steps = n // b
  assert len(per_step) == steps
  assert len(seen) == len(set(seen)) == steps * b
  # Process slices are the contiguous parts of the single-process batch.
  perm = np.random.Generator(np.random.PCG64([5, 1])).permutation(n)
  for step, parts in per_step.items():
    glued = np.concatenate([parts[p] for p in range(processes)])
    np.testing.assert_array_equal(glued, perm[step * b:(step + 1) * b])


def test_resume_equals_uninterrupted():
  arrays = _arrays(50)
  kw = dict(global_batch_size=6, seed=0, epoch=4, process_index=1,
            process_count=2)
  full = list(pipeline.train_batches(arrays, **kw))
  resumed = list(pipeline.train_batches(arrays, start_step=3, **kw))
  assert len(resumed) == len(full) - 3
  for a, b in zip(full[3:], resumed):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  assert not list(pipeline.train_batches(arrays, start_step=len(full), **kw))


@pytest.mark.parametrize("n, b", [(10, 3), (9, 3), (7, 7), (1, 1)])
def test_steps_per_epoch_keep_partial(n, b):
  assert pipeline.steps_per_epoch(n, b, keep_partial=True) == -(-n // b)


@pytest.mark.parametrize("processes", [1, 2])
def test_keep_partial_yields_the_remainder_last(processes):
  # 50 = 4 x 12 + 2: the releases' DataLoader (drop_last=False) trains a last
  # batch of 2 rows; every row is seen exactly once per epoch.
  n, b = 50, 12
  arrays = _arrays(n)
  kw = dict(global_batch_size=b, seed=3, epoch=2, keep_partial=True,
            process_count=processes)
  parts = [list(pipeline.train_batches(arrays, process_index=p, **kw))
           for p in range(processes)]
  steps = len(parts[0])
  assert steps == pipeline.steps_per_epoch(n, b, keep_partial=True) == 5
  glued = [np.concatenate([parts[p][s]["index"] for p in range(processes)])
           for s in range(steps)]
  assert [len(g) for g in glued] == [12, 12, 12, 12, 2]
  perm = pipeline.epoch_permutation(n, 3, 2)
  np.testing.assert_array_equal(np.concatenate(glued), perm)
  for batch in parts[0]:
    np.testing.assert_array_equal(batch["row"], batch["index"])
  # The full batches are those of the default (drop_last) epoch.
  dropped = list(pipeline.train_batches(arrays, process_index=0, **dict(
      kw, keep_partial=False)))
  assert len(dropped) == 4
  for a, c in zip(dropped, parts[0]):
    np.testing.assert_array_equal(a["index"], c["index"])
  # Resume inside the epoch and at the partial batch itself.
  for start in (3, 4, 5):
    resumed = list(pipeline.train_batches(arrays, start_step=start, **kw))
    assert len(resumed) == steps - start
    for a, c in zip(parts[0][start:], resumed):
      np.testing.assert_array_equal(a["index"], c["index"])


def test_keep_partial_needs_a_remainder_divisible_by_processes():
  with pytest.raises(ValueError, match=r"partial last batch of 3 rows"):
    next(pipeline.train_batches(_arrays(27), global_batch_size=8, seed=0, epoch=0,
                                keep_partial=True, process_count=2))
  # Without a remainder there is nothing to keep.
  assert len(list(pipeline.train_batches(_arrays(24), global_batch_size=8, seed=0,
                                         epoch=0, keep_partial=True))) == 3


def test_orders_differ_by_epoch_and_match_by_seed():
  arrays = _arrays(40)
  run = lambda seed, epoch: np.concatenate([
      b["index"] for b in pipeline.train_batches(
          arrays, global_batch_size=8, seed=seed, epoch=epoch)])
  np.testing.assert_array_equal(run(1, 0), run(1, 0))
  assert not np.array_equal(run(1, 0), run(1, 1))
  assert not np.array_equal(run(1, 0), run(2, 0))


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(global_batch_size=6, process_count=4), r"not divisible"),
    (dict(process_index=2, process_count=2), r"process_index=2"),
    (dict(global_batch_size=64), r"num_items=20.*global_batch_size=64"),
    (dict(start_step=9), r"start_step=9"),
])
def test_train_batches_bad_arguments(kwargs, pattern):
  args = dict(global_batch_size=4, seed=0, epoch=0)
  args.update(kwargs)
  with pytest.raises(ValueError, match=pattern):
    next(pipeline.train_batches(_arrays(20), **args))


def test_train_batches_bad_arrays():
  with pytest.raises(ValueError, match=r"first dimension"):
    next(pipeline.train_batches({"a": np.zeros(4), "b": np.zeros(5)},
                                global_batch_size=2, seed=0, epoch=0))
  with pytest.raises(ValueError, match=r"'index' is reserved"):
    next(pipeline.train_batches({"index": np.zeros(4)}, global_batch_size=2,
                                seed=0, epoch=0))


@pytest.mark.parametrize("n, b", [(10, 4), (8, 4), (1, 3), (3, 1)])
def test_eval_batches_cover_in_order_with_padding(n, b):
  arrays = _arrays(n)
  batches = list(pipeline.eval_batches(arrays, b))
  assert len(batches) == -(-n // b)
  for batch in batches:
    assert batch["mask"].dtype == bool
    for k, v in arrays.items():
      assert batch[k].shape == (b,) + v.shape[1:]
  mask = np.concatenate([x["mask"] for x in batches])
  assert mask.sum() == n and mask[:n].all()
  for k, v in arrays.items():
    got = np.concatenate([x[k] for x in batches])
    np.testing.assert_array_equal(got[mask], v)
    assert not got[~mask].any()  # zero padding


def test_eval_batches_empty_and_bad():
  assert not list(pipeline.eval_batches(_arrays(0), 4))
  with pytest.raises(ValueError, match=r"batch_size=0"):
    next(pipeline.eval_batches(_arrays(3), 0))
  with pytest.raises(ValueError, match=r"'mask' is reserved"):
    next(pipeline.eval_batches({"mask": np.zeros(3)}, 2))
