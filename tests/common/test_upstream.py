"""The upstream functions the memory planner replaces are the ones its stand-ins were written against."""
import pytest

from eva02.common.upstream import UPSTREAM, fingerprint, patched, resolve


@pytest.mark.parametrize("name", sorted(UPSTREAM))
def test_upstream_function_is_unchanged(name):
    entry = UPSTREAM[name]
    _, _, function = resolve(entry.target)
    assert fingerprint(function) == entry.fingerprint, (
        f"{entry.target} changed since {entry.version}: re-read it, check the planner's stand-in "
        f"({entry.stand_in}) and record the new fingerprint and version in common/upstream.py")


def test_patched_replaces_inside_the_block_only():
    import torch
    original = torch.nn.functional.batch_norm
    with patched("batch_norm", len):
        assert torch.nn.functional.batch_norm is len
    assert torch.nn.functional.batch_norm is original


def test_fingerprint_sees_a_changed_function():
    def function(x):
        return x + 1
    before = fingerprint(function)

    def function(x):  # noqa: F811 -- the same name, another body
        return x + 2
    assert fingerprint(function) != before
