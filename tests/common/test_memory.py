"""The fake-tensor memory trace (eva02.common.memory) against closed forms and against the CPU allocator's own
records of the same code run for real (measure_peak: the profiler's allocation events); tools/plan_memory.py's MIM
and sharded modes."""
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tool_process import run_tool

from eva02.common.memory import (CUDA_OVERHEAD_BYTES, FRAGMENTATION, MemoryEstimate, estimate_memory,
                                   largest_fitting, measure_peak)

MB = 1_000_000
ROOT = Path(__file__).resolve().parents[2]


def peak_of(run, target="cpu", attention="auto", build=lambda: torch.nn.Identity()):
    return estimate_memory(build, lambda model, phase: run(phase), target=target, attention=attention)


def test_alloc_and_free_pattern_closed_form():
    def run(phase):
        a = torch.empty(MB // 4)  # 1 MB
        b = torch.empty(MB // 2)  # 2 MB
        del a
        c = torch.empty(2 * MB)  # 8 MB, while b lives
        view = c[:10]  # a view: no new storage
        del view, c, b

    est = peak_of(run)
    assert est.peak == 10 * MB
    assert est.resident == 0


def test_cuda_target_rounds_blocks_to_512_bytes():
    def run(phase):
        keep = [torch.empty(1) for _ in range(10)]  # 4 bytes each, 512 on a GPU
        del keep

    assert peak_of(run, target="cpu").peak == 40
    assert peak_of(run, target="cuda").peak == 10 * 512


def test_storage_resized_in_place_counts_its_new_size():
    """FSDP2 frees a unit's gathered parameters by resizing their storages to 0 and gathers into them again by
    resizing them back: no operator runs, the trace still counts it."""
    def run(phase):
        t = torch.empty(MB // 4)  # 1 MB
        t.untyped_storage().resize_(0)
        torch.empty(MB // 2)  # 2 MB, freed at once: the peak so far is 2 MB, not 3
        t.untyped_storage().resize_(3 * MB)
        del t

    est = peak_of(run)
    assert est.peak == 3 * MB and est.resident == 0


@pytest.mark.parametrize("threshold, expected", [(6, 8 * MB), (7, 7 * MB)])
def test_values_of_small_tensors_steer_control_flow(threshold, expected):
    """Python reading a small tensor's value takes the branch the real run takes."""
    def run(phase):
        sizes = torch.tensor([3, 7, 5])
        big = torch.empty(int(sizes.max()) * MB // 4)  # 7 MB: known only from the values
        if (sizes > threshold).any():
            torch.empty(MB // 4)  # 1 MB more while `big` lives (freed at once)
        del big

    assert 0 <= peak_of(run).peak - expected < 100  # + the few bytes of `sizes` and its reductions


def test_data_dependent_sizes_take_their_upper_bound():
    def run(phase):
        scores = torch.rand(10_000)  # too large for the trace to keep values
        keep = scores > 0.5
        selected = scores[keep]  # boolean indexing: every element, at most
        nz = keep.nonzero()
        phase_check.append((tuple(selected.shape), tuple(nz.shape)))

    phase_check = []
    est = peak_of(run)
    assert phase_check == [((10_000,), (10_000, 1))]
    assert est.stand_ins["aten::index.Tensor"] == 1 and est.stand_ins["aten::nonzero"] == 1


def test_attention_kernel_choice_matches_closed_form():
    """The math path keeps the attention probabilities (B, heads, N, N): the fused kernels do not."""
    B, H, N, D = 2, 4, 1024, 32

    def run(phase):
        q = torch.empty(B, H, N, D, requires_grad=True)
        out = F.scaled_dot_product_attention(q, q, q)
        out.sum().backward()

    math = peak_of(run, target="cuda", attention="math").peak
    efficient = peak_of(run, target="cuda", attention="efficient").peak
    n2 = B * H * N * N * 4
    # forward of the math path holds q k^T and its softmax at once; each fused kernel at most a few (B, H, N, D)
    assert 2 * n2 <= math - efficient <= 3 * n2
    assert efficient < 12 * B * H * N * D * 4


def test_largest_fitting_closed_form():
    def estimate_for(n):  # 1 GiB per image
        return MemoryEstimate(peak=n * 2**30, resident=0)

    budget = int((20 * 2**30) * (1 + FRAGMENTATION)) + CUDA_OVERHEAD_BYTES  # exactly 20 images
    n, seen = largest_fitting(estimate_for, budget)
    assert n == 20
    assert len(seen) <= 10  # doubling, then bisection
    assert largest_fitting(estimate_for, CUDA_OVERHEAD_BYTES)[0] == 0


def test_cpu_transposed_convolution_counts_the_kernels_copies():
    """oneDNN's transposed convolution holds two output-sized copies of its result beside the output (the demo
    detector's mask head on 200 RoIs): the CPU target against the allocator's records of the same call."""
    def run(model, phase):
        with torch.no_grad():
            model(torch.empty(200, 64, 14, 14))

    def build():
        return torch.nn.ConvTranspose2d(64, 64, 2, stride=2)

    assert estimate_memory(build, run, target="cpu").peak == measure_peak(build, run)


# docs/memory.md's planner error table: its rows and stated ratios are bench/plan_memory.py's CASES.
_spec = importlib.util.spec_from_file_location("plan_memory_bench", ROOT / "bench/plan_memory.py")
BENCH = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(BENCH)
# The estimate is deterministic and the measured peak repeats to the byte on one machine (1 or 2 threads alike);
# the kernels' own buffers move it between installs (the B detector's training peak measured 0.5% apart on two
# days). 0.02 lets that through; a docs figure that no longer holds fails.
RATIO_TOLERANCE = 0.02


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.slow else [])
                                  for c in BENCH.CASES])
def test_error_table_row(case):
    """Each row of the table: the trace against the CPU allocator's records of the same step run for real, at
    the ratio docs/memory.md states for it."""
    estimate, measured = BENCH.measure(case)
    assert abs(estimate.peak / measured - case.ratio) <= RATIO_TOLERANCE, (estimate.peak, measured, case.ratio)
    if "training step" in estimate.phases:  # a training row: the second step runs with the optimizer state
        assert estimate.phases["training step"] > estimate.phases["first step"]


def test_tool_plans_sharded_mim_pre_training():
    """--mim: the pre-training step of a preset (its paper teacher built on the meta device), sharded by --fsdp."""
    proc = run_tool(ROOT / "tools/plan_memory.py", "--mim", "eva02_Ti", "--size", "112", "--batch", "2", "--gpus", "2",
                    "--fsdp", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "eva02_Ti (MIM pre-training): 2 image(s) of 112x112 per GPU, precision bf16" in proc.stdout, proc.stdout
    assert "sharded by FSDP2" in proc.stdout and "DDP" not in proc.stdout and "inference" not in proc.stdout


def test_tool_refuses_fp16_sharded_mim_as_pre_training_does():
    proc = run_tool(ROOT / "tools/plan_memory.py", "--mim", "eva02_Ti", "--fsdp", "--precision", "fp16")
    assert proc.returncode == 2 and "refuses fp16 under FSDP" in proc.stderr and "Traceback" not in proc.stderr
