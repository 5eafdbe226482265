"""RoPE tables against the closed form of docs/reference.md §1, for window 16 / 32 and 64 / 96 global grids
(docs/reference.md §2)."""
import math

import pytest
import torch

from eva02.backbone import create_trv
from eva02.backbone.rope import apply_rope, rope_table


def closed_form(head_dim, hw, step):
    """Element by element: first half rows, second half columns; 1/10000^(2i/d), pairs interleaved."""
    d = head_dim // 2
    H, W = hw
    angles = torch.empty(H * W, head_dim, dtype=torch.float64)
    for r in range(H):
        for c in range(W):
            for half, pos in ((0, r * step), (1, c * step)):
                for i in range(d // 2):
                    theta = pos / 10000 ** (2 * i / d)
                    angles[r * W + c, half * d + 2 * i] = theta
                    angles[r * W + c, half * d + 2 * i + 1] = theta
    return angles.cos().float(), angles.sin().float()


@pytest.mark.parametrize("side,step", [(16, 1.0), (32, 0.5), (64, 0.25), (96, 16 / 96)])
def test_table_equals_closed_form(side, step):
    if side > 64:  # the element-wise loop is slow; a row band of the 96 grid covers every column position
        hw = (3, side)
    else:
        hw = (side, side)
    table = rope_table(64, hw, 16 / side)
    cos, sin = closed_form(64, hw, step)
    torch.testing.assert_close(table.cos, cos, atol=2e-5, rtol=0)
    torch.testing.assert_close(table.sin, sin, atol=2e-5, rtol=0)


def test_model_tables_window_and_global():
    """Detection settings: window 16 -> integer steps, window 32 -> 0.5; global 1024/16 = 64 -> 0.25,
    1536/16 = 96 -> 1/6; a non-square grid gets the positions it has inside the configured square."""
    b = create_trv("eva02_B", depth=2, patch_size=16, window_size=16, global_blocks=(1,))
    win, glb = b.rope_tables((64, 64), "cpu")
    torch.testing.assert_close(win.cos, rope_table(64, (16, 16), 1.0).cos)
    torch.testing.assert_close(glb.sin, rope_table(64, (64, 64), 0.25).sin)

    l_sys = create_trv("eva02_L", depth=2, patch_size=16, window_size=32, global_blocks=(1,), rope_grid=96)
    win, glb = l_sys.rope_tables((60, 96), "cpu")
    torch.testing.assert_close(win.cos, rope_table(64, (32, 32), 0.5).cos)
    square = rope_table(64, (96, 96), 16 / 96).cos.view(96, 96, 64)
    torch.testing.assert_close(glb.cos.view(60, 96, 64), square[:60])

    # default: G = longest side of the actual grid
    _, glb = b.rope_tables((40, 64), "cpu")
    torch.testing.assert_close(glb.cos.view(40, 64, 64), rope_table(64, (64, 64), 0.25).cos.view(64, 64, 64)[:40])


def test_rotation_of_pairs():
    """(x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin) on interleaved pairs; cls prefix left alone."""
    table = rope_table(8, (2, 3), 1.0)
    x = torch.randn(2, 1 + 6, 8)
    y = apply_rope(x, table, num_prefix=1)
    torch.testing.assert_close(y[:, 0], x[:, 0])
    x1, x2 = x[:, 1:, 0::2], x[:, 1:, 1::2]
    c, s = table.cos[:, 0::2], table.sin[:, 0::2]
    torch.testing.assert_close(y[:, 1:, 0::2], x1 * c - x2 * s)
    torch.testing.assert_close(y[:, 1:, 1::2], x2 * c + x1 * s)
    assert math.isclose(table.cos[4, 0].item(), math.cos(1.0), rel_tol=1e-6)  # cell (1, 1): row position 1


def test_complex_and_real_paths_agree_and_trace():
    """The eager complex multiply equals the cos / sin form used under tracing and export."""
    from eva02.backbone.rope import rotate_half

    table = rope_table(64, (5, 7), 0.5)
    x = torch.randn(2, 3, 35, 64)
    real = x * table.cos + rotate_half(x) * table.sin
    torch.testing.assert_close(apply_rope(x, table), real)
    odd = torch.randn(2, 3, 36, 65)[..., 1:, 1:]  # odd storage offset and strides
    torch.testing.assert_close(apply_rope(odd, table), odd * table.cos + rotate_half(odd) * table.sin)
    model = create_trv("eva02_B", depth=2, embed_dim=64, num_heads=1, mlp_hidden=170, patch_size=16,
                       window_size=4, global_blocks=(1,)).eval()
    img = torch.randn(1, 3, 96, 80)
    traced = torch.jit.trace(model, img)
    torch.testing.assert_close(traced(img), model(img))
