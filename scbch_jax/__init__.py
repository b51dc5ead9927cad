"""SCBCH: semantic-consistent bidirectional contrastive hashing (cross-modal).

    from configs import scbch as scbch_configs
    import scbch_jax
    results = scbch_jax.run(scbch_configs.get_config("synthetic:tiny"), "runs/t")
"""

from scbch_jax.cscc import consistency_auc
from scbch_jax.cscc import neighbour_consistency_weights
from scbch_jax.losses import bsch_loss
from scbch_jax.losses import bsch_loss_rows
from scbch_jax.losses import classification_loss
from scbch_jax.losses import label_jaccard
from scbch_jax.losses import label_jaccard_rows
from scbch_jax.losses import quantization_loss
from scbch_jax.model import ScbchNet
from scbch_jax.train import SPEC
from scbch_jax.train import ScbchMethod
from scbch_jax.train import TrainState
from scbch_jax.train import make_optimizer
from scbch_jax.objectives import VARIANTS
from scbch_jax.objectives import scbch_objective




def run(config, workdir: str, **kwargs) -> dict:
  """Trains and evaluates SCBCH from a configs/scbch.py config; see
  common.experiment.run."""
  from common import experiment  # pylint: disable=g-import-not-at-top  (no cycle)
  return experiment.run_method("scbch", config, workdir, **kwargs)


__all__ = [
    "SPEC",
    "VARIANTS",
    "ScbchMethod",
    "ScbchNet",
    "TrainState",
    "bsch_loss",
    "bsch_loss_rows",
    "classification_loss",
    "consistency_auc",
    "label_jaccard",
    "label_jaccard_rows",
    "make_optimizer",
    "neighbour_consistency_weights",
    "quantization_loss",
    "run",
    "scbch_objective",
]
