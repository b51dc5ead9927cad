"""configs/: the release values per dataset, locked configs, argument errors."""

import pytest

from configs import dcgmh as dcgmh_configs
from configs import scbch as scbch_configs


def test_scbch_release_values_per_dataset():
  expect = {"mirflickr25k": (0.15, 0.8), "nuswide21": (0.2, 1.0),
            "nuswide10": (0.2, 1.0), "mscoco": (0.3, 1.1), "iaprtc12": (0.3, 1.2)}
  for name, (margin, shift) in expect.items():
    c = scbch_configs.get_config(name)
    assert (c.dataset, c.margin, c.shift) == (name, margin, shift)
    assert (c.alpha, c.beta, c.lr, c.weight_decay, c.k, c.gamma, c.cscc_start_epoch,
            c.batch_size, c.epochs, c.seed, c.bits, c.image_hidden, c.text_hidden) == (
                0.7, 0.3, 1e-4, 1e-5, 20, 0.5, 5, 128, 50, 123, 32, (8192, 8192),
                (8192,))
    assert (c.method, c.noise_protocol, c.noise_rate) == ("scbch", "scbch", 0.5)


def test_dcgmh_release_values_per_dataset():
  expect = {"mirflickr25k": (0.005, 5, 0.15, 1.0, 851),
            "nuswide21": (0.001, 5, 0.05, 1.5, 1618),
            "mscoco": (0.01, 30, 0.2, 1.2, 1401)}
  for name, values in expect.items():
    c = dcgmh_configs.get_config(name)
    assert (c.lr, c.warmup_epochs, c.beta, c.eta, c.seed) == values
    assert (c.alpha, c.gamma, c.margin, c.k, c.momentum, c.weight_decay,
            c.lr_decay_factor, c.lr_decay_every, c.epochs, c.batch_size, c.bits,
            c.hidden, c.fused, c.noise_ratio) == (
                1.0, 5.0, 0.7, 2, 0.9, 1e-5, 0.1, 100, 150, 48, 32, 4096, None, None)
    assert (c.method, c.noise_protocol, c.noise_rate) == ("dcgmh", "dcgmh", 0.4)


@pytest.mark.parametrize("module", [scbch_configs, dcgmh_configs])
def test_synthetic_arguments_and_errors(module):
  assert module.get_config().dataset == "synthetic:demo"
  assert module.get_config("synthetic").dataset == "synthetic:demo"
  assert module.get_config("synthetic:tiny").dataset == "synthetic:tiny"
  with pytest.raises(ValueError, match="mirflickr25k"):
    module.get_config("flickr")


@pytest.mark.parametrize("module", [scbch_configs, dcgmh_configs])
def test_configs_are_locked_so_a_typo_fails(module):
  c = module.get_config()
  with pytest.raises(AttributeError, match="bits"):
    c.bitz = 3
  c.bits = 64  # existing keys can change
  assert c.bits == 64
