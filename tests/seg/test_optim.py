"""The layer-decay optimizer constructor: lr and weight decay of named parameters, checked by hand."""
import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

LR, WD, RATE = 1e-3, 0.05, 0.5  # depth 2: lr scales 0.5**3 (embed), 0.5**2 (block 0), 0.5 (block 1), 1 (rest)


@pytest.fixture
def segmentor(repo, shapes_root, shrunk_config):
    init_default_scope("mmseg")
    cfg = shrunk_config(Config.fromfile(str(repo / "configs/ade20k/upernet_eva02_B_512.py")), shapes_root)
    cfg.model.backbone.norm_cfg = dict(type="BN", requires_grad=True)
    return MODELS.build(cfg.model)


def groups_by_name(optim_wrapper):
    return {n: g for g in optim_wrapper.optimizer.param_groups for n in g["param_names"]}


def build(model, **paramwise):
    return build_optim_wrapper(model, dict(
        type="OptimWrapper",
        optimizer=dict(type="AdamW", lr=LR, weight_decay=WD),
        constructor="LayerDecayOptimWrapperConstructor",
        paramwise_cfg=dict(layer_decay_rate=RATE, **paramwise)))


def test_lr_and_weight_decay_by_hand(segmentor):
    groups = groups_by_name(build(segmentor, num_layers=2))
    expected = {  # name: (lr, weight decay)
        "backbone.patch_embed.proj.weight": (LR * RATE**3, WD),
        "backbone.patch_embed.proj.bias": (LR * RATE**3, 0.0),
        "backbone.pos_embed": (LR * RATE**3, WD),  # decayed, as in the published runs (docs/reference.md §7)
        "backbone.cls_token": (LR * RATE**3, WD),
        "backbone.blocks.0.attn.qkv.weight": (LR * RATE**2, WD),
        "backbone.blocks.0.attn.q_bias": (LR * RATE**2, 0.0),
        "backbone.blocks.0.norm1.weight": (LR * RATE**2, 0.0),
        "backbone.blocks.1.mlp.w1.weight": (LR * RATE, WD),
        "backbone.blocks.1.mlp.w3.bias": (LR * RATE, 0.0),
        "backbone.pyramid.upsample_4x.0.weight": (LR, WD),  # pyramid: layer depth + 1
        "backbone.pyramid.upsample_4x.1.weight": (LR, 0.0),  # BN weight, 1-D
        "decode_head.conv_seg.weight": (LR, WD),
        "decode_head.conv_seg.bias": (LR, 0.0),
        "auxiliary_head.convs.0.conv.weight": (LR, WD),
    }
    for name, (lr, wd) in expected.items():
        assert groups[name]["lr"] == pytest.approx(lr), name
        assert groups[name]["weight_decay"] == wd, name
    assert len(groups) == sum(1 for p in segmentor.parameters() if p.requires_grad)


def test_documented_exemption_of_pos_embed_and_cls_token(segmentor):
    groups = groups_by_name(build(segmentor, no_decay_names=("pos_embed", "cls_token")))
    for name in ("backbone.pos_embed", "backbone.cls_token"):
        assert groups[name]["weight_decay"] == 0.0 and groups[name]["lr"] == pytest.approx(LR * RATE**3)
    assert groups["backbone.blocks.0.attn.qkv.weight"]["weight_decay"] == WD


def test_scheduler_keeps_the_per_layer_ratios(segmentor):
    from mmengine.optim.scheduler import PolyLR

    wrapper = build(segmentor)
    sched = PolyLR(wrapper.optimizer, power=1.0, eta_min=0.0, begin=0, end=10, by_epoch=False)
    for _ in range(3):
        wrapper.optimizer.step()
        sched.step()
    groups = groups_by_name(wrapper)
    head = groups["decode_head.conv_seg.weight"]["lr"]
    assert head < LR * 0.8  # decayed ...
    assert groups["backbone.patch_embed.proj.weight"]["lr"] == pytest.approx(head * RATE**3)  # ... by one factor


def test_num_layers_must_match_the_backbone(segmentor):
    with pytest.raises(ValueError, match="num_layers=24 but the backbone has 2 blocks"):
        build(segmentor, num_layers=24)


def test_unknown_paramwise_key_is_an_error():
    with pytest.raises(KeyError, match="layer_decay_rate"):
        build(torch.nn.Linear(2, 2), custom_keys={})
