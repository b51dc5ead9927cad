"""The method seam (common.methods): a toy method registered by one REGISTRY
entry runs through `experiment.run` with no other library edit; the loop's
per-epoch channel carries per-item arrays AND scalars; no ground truth enters
a training batch; the reported model is encoded once; the plan is resolved once."""

import sys
import types

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from common import experiment
from common import methods
from common import parallel
from common import quirks
from common import train_loop
from common.codes import to_codes
from common.data import pipeline
from configs import scbch as scbch_configs

SEEN: dict = {}


@flax.struct.dataclass
class ToyState:
  params: dict
  opt_state: dict
  step: jax.Array


class ToyMethod:
  """Linear image/text projections trained to agree; reads an epoch scalar."""

  name = "toy"
  phases = (None,)
  resolved = {"toy_scale": 2.0}

  def __init__(self, config, image_dim, text_dim, plan):
    self.config, self.plan = config, plan
    self.image_dim, self.text_dim = image_dim, text_dim
    self.tx = optax.sgd(0.01)
    SEEN.setdefault("plans", []).append(plan)

  def init_state(self):
    key_image, key_text = jax.random.split(jax.random.key(self.config.seed))
    params = {"image": 0.1 * jax.random.normal(key_image, (self.image_dim, self.config.bits)),
              "text": 0.1 * jax.random.normal(key_text, (self.text_dim, self.config.bits))}
    return ToyState(params=params, opt_state=self.tx.init(params),
                    step=jnp.zeros((), jnp.int32))

  def phase(self, epoch):
    return None

  def step_body(self, state, batch, extras, context, *, phase):
    SEEN["batch_keys"] = sorted(batch)
    SEEN["context_keys"] = sorted(context)

    def share(params):
      u = jnp.tanh(batch["image"] @ params["image"])
      v = jnp.tanh(batch["text"] @ params["text"])
      per_item = extras["weight"] * jnp.sum((u - v) ** 2, axis=1)
      # This device's share of the global mean (the objective convention).
      return jnp.sum(per_item) / (per_item.shape[0] * parallel.num_shards())

    loss, _, grads = parallel.global_value_and_grad(share, state.params)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    return (state.replace(params=optax.apply_updates(state.params, updates),
                          opt_state=opt_state, step=state.step + 1),
            {"loss": loss, "scale": context["scale"]})

  def epoch_extras(self, state, epoch, train):
    n = len(train["labels"])
    return {"weight": np.full(n, 1.0 + epoch, np.float32),
            "scale": np.float32(0.25 * (epoch + 1))}

  def epoch_summary(self, state, epoch, extras, train, truth):
    SEEN.setdefault("truth", []).append(truth)
    return {"scale": float(extras["scale"]), "weight": float(extras["weight"][0])}, ""

  def encode(self, state, image, text, *, map_batches=pipeline.map_batches):
    SEEN["encodes"] = SEEN.get("encodes", 0) + 1
    return {"image": np.asarray(to_codes(image @ state.params["image"]), np.int8),
            "text": np.asarray(to_codes(text @ state.params["text"]), np.int8)}


def _check_config(config):
  pass


def _build(config, data, plan):
  return ToyMethod(config, data.splits.image_dim, data.splits.text_dim, plan)


def _for_inference(config, resolved, plan):
  return ToyMethod(config, resolved["image_dim"], resolved["text_dim"], plan)


SPEC = methods.MethodSpec(
    name="toy", config_module="configs.scbch", check_config=_check_config,
    build=_build, for_inference=_for_inference, directions=methods.CROSS_MODAL,
    empty_queries="skip",
    quirks=quirks.quirk_registry(
        quirks.Quirk("toy_eval_start_every_2", "evaluation at the start of every "
                     "2nd epoch", ("toy",), {"eval_at_epoch_start": True,
                                             "eval_every": 2,
                                             "selection": "test_queries"})),
    diagnostics={"epoch scale": "scale"})


@pytest.fixture
def toy_registered(monkeypatch):
  module = types.ModuleType("toy_method_for_tests")
  module.SPEC = SPEC
  monkeypatch.setitem(sys.modules, "toy_method_for_tests", module)
  monkeypatch.setitem(methods.REGISTRY, "toy", "toy_method_for_tests:SPEC")
  SEEN.clear()
  yield


def _config(**overrides):
  config = scbch_configs.get_config("synthetic:tiny")
  config.method = "toy"
  config.update(dict(batch_size=32, bits=8, epochs=2, progress=False, eval_every=0,
                     checkpoint_every=0))
  config.update(overrides)
  return config


def test_a_registered_toy_method_runs_end_to_end(tmp_path, toy_registered, monkeypatch):
  resolved = []
  resolve = methods.resolve_plan
  monkeypatch.setattr(methods, "resolve_plan",
                      lambda *a, **k: resolved.append(1) or resolve(*a, **k))
  results = experiment.run(_config(log_every=1), str(tmp_path), log=lambda _: None)
  assert len(resolved) == 1  # config.release_compat parsed once per run
  assert set(results) >= {"i2t", "t2i"}
  assert results["settings"]["toy_scale"] == 2.0           # method.resolved recorded
  # No ground truth in a training batch; the epoch scalar in the step's context,
  # as float32 (not cast to the int32 of epoch and step_in_epoch).
  assert SEEN["batch_keys"] == ["image", "index", "labels", "text"]
  assert SEEN["context_keys"] == ["epoch", "scale", "step_in_epoch"]
  from common.reporting import read_jsonl  # pylint: disable=g-import-not-at-top
  records = read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert {r["epoch"]: r["scale"] for r in records if r["kind"] == "train"} == {
      0: 0.25, 1: 0.5}
  truth = SEEN["truth"][0]
  assert set(truth) == {"corrupted", "labels"} and truth["corrupted"].dtype == bool
  # One plan, resolved once, handed to build.
  assert len(SEEN["plans"]) == 1 and SEEN["plans"][0].quirks == frozenset()
  # The final model encoded once (query + database of "test"), then exported.
  assert SEEN["encodes"] == 2
  with np.load(tmp_path / "toy_codes.npz") as f:
    assert set(f.files) == {"image_query", "text_query", "image_db", "text_db",
                            "query_labels", "db_labels"}
  assert (tmp_path / "toy_diagnostics.png").exists()


def test_a_method_quirk_sets_the_loop_plan_and_eval_every_at_epoch_start(
    tmp_path, toy_registered):
  config = _config(epochs=5, release_compat="toy_eval_start_every_2")
  plan = methods.resolve_plan(config)
  assert plan.has("toy_eval_start_every_2")
  assert plan.loop == quirks.LoopPlan(selection="test_queries", eval_every=2,
                                      eval_at_epoch_start=True)
  experiment.run(config, str(tmp_path), log=lambda _: None)
  from common.reporting import read_jsonl  # pylint: disable=g-import-not-at-top
  evals = [r for r in read_jsonl(str(tmp_path / "metrics.jsonl")) if r["kind"] == "eval"]
  from common import data as data_lib  # pylint: disable=g-import-not-at-top
  steps_per_epoch = len(data_lib.make_synthetic("tiny").train) // 32
  # At the start of epoch e when (e + 1) % 2 == 0: the models after 1 and 3 of
  # the 5 epochs; neither the initial nor the final model is evaluated.
  assert [r["step"] for r in evals] == [1 * steps_per_epoch, 3 * steps_per_epoch]
  assert all(r["at"] == "epoch_start" for r in evals)


def test_split_extras_names_a_bad_key():
  rows, scalars = train_loop.split_extras(
      {"w": np.ones(5), "tau": np.float32(0.3)}, 5)
  assert list(rows) == ["w"] and float(scalars["tau"]) == pytest.approx(0.3)
  with pytest.raises(ValueError, match=r"epoch_extras\['w'\]: shape \(4,\); expected "
                                       r"a scalar or 5 rows"):
    train_loop.split_extras({"w": np.ones(4)}, 5)


def test_an_unknown_method_is_refused_naming_config_method():
  with pytest.raises(methods.ConfigError, match=r"config.method='nope': expected one of"):
    methods.get_spec("nope")


def test_evaluator_directions_come_from_the_spec(toy_registered):
  from common import data as data_lib  # pylint: disable=g-import-not-at-top
  from common.evaluator import RetrievalEvaluator  # pylint: disable=g-import-not-at-top
  splits = data_lib.make_synthetic("tiny", seed=0)
  only_i2t = RetrievalEvaluator({"test": (splits.query, splits.database)},
                                directions={"i2t": ("image", "text")},
                                empty_queries="skip")
  method = ToyMethod(_config(), splits.image_dim, splits.text_dim, None)
  results, score, codes = only_i2t.evaluate(method, method.init_state())
  assert [k for k in results if k != "settings"] == ["i2t"]
  assert score == results["i2t"]["map"]
  assert set(only_i2t.export(codes)) == {"image_query", "image_db", "text_query",
                                         "text_db", "query_labels", "db_labels"}


