"""Shared test settings: small thread count (CI has 2 cores), deterministic seeds, the DDP tests' launcher, and a
data folder of the session's own for the segmentation demo's generated shapes."""
import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Idle OpenMP threads spin by default; with DDP workers or a second process on 2 cores that made a detector
# step ~10x slower. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# A segmentation tool run on the demo config generates its shapes under $SHAPES_ROOT (default: the checkout's
# output/demo/shapes_data, which `make demo` reuses): never there from a test, whose small set would become the
# demo's data (it once did: 4 validation images, 59 mIoU). The demo tests run `make demo` without it.
if "SHAPES_ROOT" not in os.environ:
    os.environ["SHAPES_ROOT"] = tempfile.mkdtemp(prefix="eva02-test-shapes-")
    atexit.register(shutil.rmtree, os.environ["SHAPES_ROOT"], ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def torchrun():
    """run(script, *args, nproc, env=None): tools/<script> under `torchrun --standalone` (a free port) with `nproc`
    CPU processes (gloo), one thread each; fails the test with the log's tail unless every process exits 0."""
    def run(script: str, *args, nproc: int, env: dict | None = None) -> None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               str(ROOT / "tools" / script), *map(str, args)]
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{script} x{nproc} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"

    return run
