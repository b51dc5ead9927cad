"""NRCH: robust contrastive cross-modal hashing with noisy labels (ACM MM 2024).

    from configs import nrch as nrch_configs
    import nrch_jax
    results = nrch_jax.run(nrch_configs.get_config("synthetic:tiny"), "runs/t")
"""

from common import experiment as _experiment
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
from nrch_jax.train import NrchMethod
from nrch_jax.train import TrainState
from nrch_jax.train import make_optimizer


run = _experiment.runner("nrch")


__all__ = [
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
