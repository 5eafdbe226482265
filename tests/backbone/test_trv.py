"""TrV against the paper: parameter counts, FLOPs, attention backends, shapes."""
import pytest
import torch

from eva02.backbone import create_trv
from eva02.backbone.flops import count_flops
from eva02.backbone.trv import xformers_available

# Paper Table 5 (params at p14/224; FLOPs at 196 tokens)
PAPER = {"eva02_Ti": (5.7e6, 1.3e9), "eva02_S": (22e6, 4.6e9), "eva02_B": (86e6, 18e9), "eva02_L": (304e6, 62e9)}


@pytest.mark.parametrize("name", PAPER)
def test_param_count_matches_paper(name):
    model = create_trv(name)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n / PAPER[name][0] - 1) < 0.04, f"{name}: {n / 1e6:.2f}M parameters"


@pytest.mark.parametrize("name", PAPER)
def test_flops_match_paper(name):
    model = create_trv(name).eval()
    flops = count_flops(model, torch.zeros(1, 3, 196, 196))
    assert abs(flops / PAPER[name][1] - 1) < 0.05, f"{name}: {flops / 1e9:.2f} GFLOPs"


def test_hidden_widths_and_sub_ln():
    for name, hidden, sub_ln in [("eva02_Ti", 512, False), ("eva02_S", 1024, False),
                                 ("eva02_B", 2048, True), ("eva02_L", 2730, True)]:
        blk = create_trv(name, depth=1).blocks[0]
        assert blk.mlp.w1.out_features == hidden
        assert isinstance(blk.mlp.ffn_ln, torch.nn.LayerNorm) == sub_ln
        assert blk.attn.qkv.bias is None and blk.attn.proj.bias is not None


def _small(attn_impl, **kw):
    args = dict(depth=3, embed_dim=64, num_heads=2, mlp_hidden=170, patch_size=16, window_size=4,
                global_blocks=(1,), attn_impl=attn_impl)
    args.update(kw)
    return create_trv("eva02_B", **args)


IMPLS = ["sdpa", "math"] + (["xformers"] if xformers_available() else [])


@pytest.mark.parametrize("hw", [(1008, 1344), (208, 144), (64, 64)])
def test_attention_backends_agree_forward_backward(hw):
    """Window and global blocks, a grid that is neither square nor a multiple of the window."""
    x = torch.randn(1, 3, *hw)
    results = {}
    for impl in IMPLS:
        torch.manual_seed(0)
        model = _small(impl, drop_path_rate=0.0)
        xi = x.clone().requires_grad_(True)
        y = model(xi)
        y.square().mean().backward()
        results[impl] = (y.detach(), xi.grad, model.blocks[0].attn.qkv.weight.grad)
    ref = results["math"]
    for impl, (y, gx, gw) in results.items():
        assert y.shape == (1, 64, hw[0] // 16, hw[1] // 16)
        torch.testing.assert_close(y, ref[0], rtol=1e-4, atol=1e-5, msg=f"{impl} forward")
        torch.testing.assert_close(gx, ref[1], rtol=1e-3, atol=1e-6, msg=f"{impl} input grad")
        torch.testing.assert_close(gw, ref[2], rtol=1e-3, atol=1e-6, msg=f"{impl} weight grad")


def test_window_padding_is_unmasked_zero_padding():
    """A window block on a grid that needs padding equals the block run on the explicitly zero-padded
    normalized tokens, attended per window without a mask, then cropped (ViTDet semantics)."""
    from eva02.backbone.trv import window_partition, window_unpartition

    model = _small("math", depth=1, global_blocks=())
    blk = model.blocks[0]
    x = torch.randn(1, 6, 7, 64)
    win, _ = model.rope_tables((6, 7), x.device)
    out = blk(x, win)
    y = torch.nn.functional.pad(blk.norm1(x), (0, 0, 0, 1, 0, 2))  # 6x7 -> 8x8
    parts = [blk.attn(y[:, i:i + 4, j:j + 4].reshape(1, 16, 64), win).reshape(1, 4, 4, 64)
             for i in (0, 4) for j in (0, 4)]
    attn = torch.cat([torch.cat(parts[0:2], 2), torch.cat(parts[2:4], 2)], 1)[:, :6, :7]
    ref = x + attn
    ref = ref + blk.mlp(blk.norm2(ref))
    torch.testing.assert_close(out, ref)
    part, padded = window_partition(x, 4)
    torch.testing.assert_close(window_unpartition(part, 4, padded, (6, 7)), x)


def test_out_indices_and_global_only():
    model = _small("sdpa", window_size=0, global_blocks=(), out_indices=(0, 2))
    outs = model(torch.randn(2, 3, 96, 64))
    assert [o.shape for o in outs] == [(2, 64, 6, 4)] * 2


def test_activation_checkpointing_same_gradients():
    x = torch.randn(1, 3, 64, 96)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = _small("sdpa", use_checkpoint=ckpt).train()
        model(x).sum().backward()
        grads.append(model.blocks[1].mlp.w1.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_compiled_blocks_equal_eager():
    """compile_blocks=True: the same outputs and gradients (with checkpointing too), one compiled graph per block
    kind (windowed, global) however deep the model, and modules left plain (state dict, deep copy)."""
    import copy

    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    x = torch.randn(1, 3, 80, 96)  # a 5x6 grid: window blocks pad it
    runs = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = _small("sdpa", depth=4, global_blocks=(1, 3), compile_blocks=compiled, use_checkpoint=True)
        with torch.no_grad():
            y = model.eval()(x)
        model.train()(x).square().mean().backward()
        runs[compiled] = (model, y, model.blocks[0].attn.qkv.weight.grad, model.patch_embed.proj.weight.grad)
    eager, compiled = runs[False], runs[True]
    for a, b in zip(eager[1:], compiled[1:]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    # inference and training graphs of the windowed and the global block: 4 graphs for the 4 blocks, 2 modes
    assert counters["stats"]["unique_graphs"] == 4, dict(counters["stats"])
    model = compiled[0]
    assert list(model.state_dict()) == list(eager[0].state_dict())
    with torch.no_grad():
        torch.testing.assert_close(copy.deepcopy(model).eval()(x), compiled[1])


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(KeyError, match="eva02_X"):
        create_trv("eva02_X")
    with pytest.raises(ValueError, match="out of range"):
        create_trv("eva02_B", depth=4, global_blocks=(5,))
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        _small("sdpa")(torch.zeros(1, 3, 65, 64))
    with pytest.raises(ValueError, match="attn_impl"):
        _small("flash")


def test_init_is_official():
    """xavier-normal Linear weights (q, k, v as separate C x C matrices), sub-LN rescale sqrt(ln(2 depth))."""
    import math

    torch.manual_seed(0)
    model = create_trv("eva02_B", depth=4)
    C, H = 768, 2048
    xavier = lambda fi, fo: math.sqrt(2 / (fi + fo))  # noqa: E731
    scale = math.sqrt(math.log(8))
    blk = model.blocks[0]
    q, k, v = blk.attn.qkv.weight.chunk(3)
    assert abs(q.std() / xavier(C, C) - 1) < 0.02
    assert abs(v.std() / (xavier(C, C) * scale) - 1) < 0.02
    assert abs(blk.mlp.w1.weight.std() / (xavier(C, H) * scale) - 1) < 0.02
    assert abs(blk.attn.proj.weight.std() / (xavier(C, C) * scale) - 1) < 0.02
    ti = create_trv("eva02_Ti", depth=2).blocks[0]  # pre-LN: no rescale
    assert abs(ti.mlp.w3.weight.std() / xavier(512, 192) - 1) < 0.03
