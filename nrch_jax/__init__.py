"""NRCH: robust contrastive cross-modal hashing with noisy labels (ACM MM 2024).

    from configs import nrch as nrch_configs
    import nrch_jax
    results = nrch_jax.run(nrch_configs.get_config("synthetic:tiny"), "runs/t")
"""

from nrch_jax.dns import fit_gmm
from nrch_jax.dns import select_clean
from nrch_jax.losses import dns_scores
from nrch_jax.losses import prototype_items
from nrch_jax.losses import quantization_items
from nrch_jax.losses import rch_loss
from nrch_jax.losses import rch_rows
from nrch_jax.model import NrchNet
from nrch_jax.objectives import VARIANTS
from nrch_jax.objectives import nrch_objective
from nrch_jax.train import SPEC
from nrch_jax.train import NrchMethod
from nrch_jax.train import TrainState
from nrch_jax.train import make_optimizer


def run(config, workdir: str, **kwargs) -> dict:
  """Trains and evaluates NRCH from a configs/nrch.py config; see
  common.experiment.run."""
  from common import experiment  # pylint: disable=g-import-not-at-top  (no cycle)
  return experiment.run_method("nrch", config, workdir, **kwargs)


__all__ = [
    "SPEC",
    "VARIANTS",
    "NrchMethod",
    "NrchNet",
    "TrainState",
    "dns_scores",
    "fit_gmm",
    "make_optimizer",
    "nrch_objective",
    "prototype_items",
    "quantization_items",
    "rch_loss",
    "rch_rows",
    "run",
    "select_clean",
]
