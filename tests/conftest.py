"""Test setup: 8 simulated CPU devices, set before JAX is imported anywhere."""

import os

# The tests' programs are tiny and compiled once each: cheaper XLA compilation
# (no expensive LLVM passes) makes the suite ~25% faster on 2 cores; both sides
# of every equality test run with the same flags.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
