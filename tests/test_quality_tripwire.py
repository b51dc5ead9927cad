"""Quality tripwire on real data (benchmarks/quality.py, test-sized).

Both methods train on the real digits set (scikit-learn's wheel; the [test]
extra installs it) for a few seconds at benchmarks.quality.TRIPWIRE_BUDGET.
A run fails the test when it falls to within RANDOM_MARGIN of random ±1
codes on the same split, or more than DROP below the value recorded for this
budget (TRIPWIRE_RECORDED; `python benchmarks/quality.py --tripwire`). The
margins are wide on purpose: a regression tripwire, not a tuned threshold.
"""

import importlib.util

import pytest

from benchmarks import quality

RANDOM_MARGIN = 0.10  # mAP: "within a few points of random codes"
DROP = 0.10           # mAP below the recorded value: "far below"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("sklearn") is None,
    reason="the digits set needs scikit-learn: pip install -e '.[test]'")


@pytest.mark.parametrize("method", quality.METHODS)
def test_method_stays_far_from_random_and_near_its_record(method, tmp_path):
  run = quality.tripwire_run(method, str(tmp_path))
  random_maps = run["baselines"]["random_codes"]
  recorded = quality.TRIPWIRE_RECORDED[method]
  assert set(run["maps"]) == set(recorded)
  for direction, value in run["maps"].items():
    assert value > random_maps[direction] + RANDOM_MARGIN, (
        f"{method} {direction}: mAP {value:.4f} is within {RANDOM_MARGIN} of random "
        f"codes ({random_maps[direction]:.4f})")
    assert value > recorded[direction] - DROP, (
        f"{method} {direction}: mAP {value:.4f} fell more than {DROP} below the "
        f"recorded {recorded[direction]:.4f} (benchmarks/quality.py TRIPWIRE_RECORDED)")
