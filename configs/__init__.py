"""Run configs as code: `get_config(arg)` files for ml_collections' config_flags.

  nhj-scbch --config=configs/scbch.py:mirflickr25k --config.bits=64 --workdir=W

Each file declares every key of one method's run once (data, noise, loop and
hyperparameters); the argument after ':' picks a dataset preset.
"""
