"""noisy-hashing-jax: SCBCH, NRCH and DCGMH noisy-label deep hashing in JAX/Flax."""

import setuptools

setuptools.setup(
    name="noisy-hashing-jax",
    version="0.1.0",
    description=(
        "JAX/Flax noisy-label deep hashing for retrieval: SCBCH and NRCH "
        "(cross-modal) and DCGMH (multi-modal)."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(
        include=["common", "common.*", "scbch_jax", "scbch_jax.*",
                 "nrch_jax", "nrch_jax.*",
                 "dcgmh_jax", "dcgmh_jax.*", "launch", "launch.*", "configs"]),
    install_requires=[
        "jax>=0.10,<0.13",
        "flax>=0.12,<0.13",
        "optax>=0.2.6,<0.3",
        "orbax-checkpoint>=0.12,<0.13",
        # TF-free: builds and reads array_record without TensorFlow.
        "tensorflow-datasets>=4.9.9,<5",
        "array-record>=0.8,<0.9",
        "numpy>=2.0,<3",
        # Compiled Hamming kernels (common/hamming_kernels.py): top-k, radius
        # and the retrieval metrics in one pass over the codes; a wheel, no
        # compiler needed.
        "numba>=0.68,<0.69",
        "absl-py>=2.1,<3",
        "chex>=0.1.90,<0.2",
        # Configs as code (get_config files, --config.<key> overrides).
        "ml-collections>=1.0,<2",
        # TensorBoard event files without TensorFlow.
        "tensorboardX>=2.6,<3",
        "tqdm>=4.60,<5",
        # Reading the community's .mat (v5: scipy, v7.3: h5py) and .h5 files.
        "h5py>=3.11,<4",
        "scipy>=1.13,<2",
        # PR and P@N curves as PNG.
        "matplotlib>=3.8,<4",
    ],
    extras_require={
        # The real-data suite (common/data/real.py; docs/real_data.md): data
        # files shipped inside these wheels, content pinned by SHA-256.
        "real": ["river>=0.26,<1", "scikit-learn>=1.3,<2"],
        # scikit-learn brings the digits set that the quality tripwire
        # (tests/test_quality_tripwire.py) trains on.
        "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4",
                 "scikit-learn>=1.3,<2"],
    },
    entry_points={
        "console_scripts": [
            "nhj-scbch=launch.scbch:cli_main",
            "nhj-dcgmh=launch.dcgmh:cli_main",
            "nhj-nrch=launch.nrch:cli_main",
            "nhj-evaluate=launch.evaluate:cli_main",
            "nhj-prepare-data=launch.prepare_data:cli_main",
            "nhj-sweep=launch.sweep:cli_main",
            "nhj-report=launch.report:cli_main",
            "nhj-encode=launch.encode:cli_main",
            "nhj-search=launch.search:cli_main",
        ]
    },
)
