"""The one layer-decay rule (official det/seg assignment) against hand-computed values."""
import pytest
import torch

from eva02.backbone import create_trv, is_no_decay, layer_id, lr_scale, param_groups


@pytest.mark.parametrize("name,expected", [
    ("backbone.net.pos_embed", 0), ("backbone.net.patch_embed.proj.weight", 0), ("cls_token", 0),
    ("mask_token", 0), ("backbone.net.blocks.0.attn.qkv.weight", 1), ("backbone.blocks.23.mlp.w3.bias", 24),
    ("module.blocks.7.norm1.weight", 8), ("backbone.simfp_2.0.weight", 25), ("roi_heads.box_head.0.weight", 25),
    ("decode_head.conv_seg.weight", 25),
])
def test_layer_ids(name, expected):
    assert layer_id(name, depth=24) == expected


def test_lr_scale_formula():
    assert lr_scale("backbone.net.pos_embed", 24, 0.8) == pytest.approx(0.8 ** 25)
    assert lr_scale("backbone.net.blocks.23.norm1.weight", 24, 0.8) == pytest.approx(0.8)
    assert lr_scale("roi_heads.mask_head.predictor.weight", 24, 0.8) == 1.0


def test_no_decay_rule_with_prefix():
    p1, p2 = torch.zeros(4), torch.zeros(4, 4)
    assert is_no_decay("backbone.pos_embed", torch.zeros(1, 5, 4))  # the official constructor missed this one
    assert is_no_decay("backbone.blocks.0.attn.q_bias", p1) and is_no_decay("decode_head.conv.bias", p1)
    assert not is_no_decay("backbone.blocks.0.attn.qkv.weight", p2)


def test_param_groups_cover_every_parameter_once():
    model = torch.nn.Module()
    model.net = create_trv("eva02_B", depth=2, embed_dim=64, num_heads=2, mlp_hidden=170)
    model.head = torch.nn.Linear(64, 3)
    groups = param_groups(model.named_parameters(), lr=1e-4, weight_decay=0.05, depth=2, rate=0.7,
                          no_decay=is_no_decay)
    names = [n for g in groups for n in g["param_names"]]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    by_name = {n: g for g in groups for n in g["param_names"]}
    assert by_name["net.pos_embed"]["lr"] == pytest.approx(1e-4 * 0.7 ** 3)
    assert by_name["net.pos_embed"]["weight_decay"] == 0.0
    assert by_name["net.blocks.1.attn.qkv.weight"]["lr"] == pytest.approx(1e-4 * 0.7)
    assert by_name["net.blocks.1.attn.qkv.weight"]["weight_decay"] == 0.05
    assert by_name["head.weight"]["lr"] == pytest.approx(1e-4)
    det = param_groups(model.named_parameters(), lr=1e-4, weight_decay=0.1, depth=2, rate=0.7)
    assert all(g["weight_decay"] == 0.1 for g in det)  # detection: decay on every parameter
    torch.optim.AdamW(groups)  # valid optimizer groups
