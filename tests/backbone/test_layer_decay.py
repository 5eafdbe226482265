"""The one layer-decay rule (official det/seg assignment) against hand-computed values."""
import pytest
import torch

from eva02.backbone import MIM_NO_DECAY, SEG_NO_DECAY, create_trv, layer_id, lr_scale, no_decay_rule, param_groups


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


def test_no_decay_rules_per_task():
    """Official exemptions (docs/reference.md §7): seg exempts 1-D and biases only (pos_embed / cls_token decayed
    in the published runs); MIM also exempts pos_embed and cls_token but decays the mask token."""
    p1, p2, tok = torch.zeros(4), torch.zeros(4, 4), torch.zeros(1, 1, 4)
    for rule in (SEG_NO_DECAY, MIM_NO_DECAY):
        assert rule("backbone.blocks.0.attn.q_bias", p1) and rule("decode_head.conv.bias", p1)
        assert rule("backbone.blocks.0.norm1.weight", p1)
        assert not rule("backbone.blocks.0.attn.qkv.weight", p2) and not rule("mask_token", tok)
    assert not SEG_NO_DECAY("backbone.pos_embed", torch.zeros(1, 5, 4)) and not SEG_NO_DECAY("backbone.cls_token", tok)
    assert MIM_NO_DECAY("pos_embed", torch.zeros(1, 5, 4)) and MIM_NO_DECAY("encoder.cls_token", tok)
    assert no_decay_rule(["pos_embed"])("backbone.pos_embed", torch.zeros(1, 5, 4))  # the documented seg option


def test_param_groups_cover_every_parameter_once():
    model = torch.nn.Module()
    model.net = create_trv("eva02_B", depth=2, embed_dim=64, num_heads=2, mlp_hidden=170)
    model.head = torch.nn.Linear(64, 3)
    groups = param_groups(model.named_parameters(), lr=1e-4, weight_decay=0.05, depth=2, rate=0.7,
                          no_decay=MIM_NO_DECAY)
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
