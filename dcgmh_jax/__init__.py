"""DCGMH: distribution-consistency-guided multi-modal hashing.

    from configs import dcgmh as dcgmh_configs
    import dcgmh_jax
    results = dcgmh_jax.run(dcgmh_configs.get_config("synthetic:tiny"), "runs/t")
"""

from dcgmh_jax.augment import augment_image
from dcgmh_jax.augment import augment_text
from dcgmh_jax.augment import swap_permutation
from dcgmh_jax.losses import center_loss
from dcgmh_jax.losses import center_separation_loss
from dcgmh_jax.losses import label_similarity
from dcgmh_jax.losses import pair_loss
from dcgmh_jax.losses import quantization_loss
from dcgmh_jax.losses import unsupervised_contrastive_loss
from dcgmh_jax.model import DcgmhNet
from dcgmh_jax.noise_filter import center_similarity
from dcgmh_jax.objectives import VARIANTS
from dcgmh_jax.noise_filter import consistency_scores
from dcgmh_jax.noise_filter import diagnostics_ratios
from dcgmh_jax.noise_filter import estimate_noise_ratio
from dcgmh_jax.noise_filter import filter_diagnostics
from dcgmh_jax.noise_filter import flag_noisy
from dcgmh_jax.noise_filter import init_bank
from dcgmh_jax.noise_filter import noisy_count
from dcgmh_jax.noise_filter import reconstruct_labels
from dcgmh_jax.noise_filter import update_bank
from dcgmh_jax.train import SPEC
from dcgmh_jax.train import DcgmhMethod
from dcgmh_jax.train import DcgmhState
from dcgmh_jax.train import make_optimizer




def run(config, workdir: str, **kwargs) -> dict:
  """Trains and evaluates DCGMH from a configs/dcgmh.py config; see
  common.experiment.run."""
  from common import experiment  # pylint: disable=g-import-not-at-top  (no cycle)
  return experiment.run_method("dcgmh", config, workdir, **kwargs)


__all__ = [
    "SPEC",
    "VARIANTS",
    "DcgmhMethod",
    "DcgmhNet",
    "DcgmhState",
    "augment_image",
    "augment_text",
    "center_loss",
    "center_separation_loss",
    "center_similarity",
    "consistency_scores",
    "diagnostics_ratios",
    "estimate_noise_ratio",
    "filter_diagnostics",
    "flag_noisy",
    "init_bank",
    "label_similarity",
    "make_optimizer",
    "noisy_count",
    "pair_loss",
    "quantization_loss",
    "reconstruct_labels",
    "run",
    "swap_permutation",
    "unsupervised_contrastive_loss",
    "update_bank",
]
