"""Shared test settings: small thread count (CI has 2 cores) and deterministic seeds."""
import os

# Idle OpenMP threads spin by default; with DDP workers or a second process on 2 cores that made a detector
# step ~10x slower. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
