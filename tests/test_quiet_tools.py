"""A tool prints our messages, not third-party deprecation notices; --debug shows everything.

A real interpreter per run (not tests/support/tool_process.py's zygote, which has imported the frameworks already,
so import-time warnings would never reach the tool)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The planner traces a detector: torchvision's meta registrations and torch.meshgrid warn on the way.
PLAN = [sys.executable, "tools/plan_memory.py", "--config-file", "configs/demo/eva02_Ti_det.py", "--batch", "1",
        "--mode", "test"]


def _stderr(*extra: str) -> str:
    proc = subprocess.run([*PLAN, *extra], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def test_known_third_party_warnings_are_hidden_and_debug_shows_them():
    assert "Warning" not in _stderr()
    shown = _stderr("--debug")
    assert "FutureWarning" in shown and "torch.meshgrid" in shown


def test_importing_the_library_changes_no_warning_filter():
    # (torch, scipy and others add filters of their own when imported; ours are told apart by their patterns)
    code = ("import warnings; import eva02.common.cli as cli, eva02.det, eva02.seg; "
            "ours = {cli._THIRD_PARTY, *cli._KNOWN_USER_WARNINGS}; "
            "patterns = {getattr(f[i], 'pattern', None) for f in warnings.filters for i in (1, 3)}; "
            "assert not ours & patterns, 'a filter of ours was added at import'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, timeout=300)
