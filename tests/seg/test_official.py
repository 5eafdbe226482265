"""The official EVA-02 segmentation model, from its own code: outputs on real photos and checkpoint layouts.

Fixtures (tests/seg/fixtures, made by running github.com/baaivision/EVA at commit 5623d08, EVA-02/seg; see
fixtures/README.md): `official_seg_tiny.pt` holds a random-weight official EVA2 backbone (cls token, separate q/k/v,
RoPE, fpn1..fpn4 with BN statistics) with mmseg UPerHead / FCNHead heads, two skimage photos and the official
outputs; `official_seg_keys.json` the key names and shapes of the released B 512 and L 640 UperNet segmentors.
"""
import json
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

from eva02.backbone.checkpoint import to_trv_names, LoadReport
from eva02.seg import IncompleteCheckpointError, load_segmentor_checkpoint
from eva02.seg.checkpoint import rename_official_pyramid

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURES / "official_seg_tiny.pt", weights_only=True)


def segmentor_like(official, with_cls_token=True):
    """Our segmentor with the fixture's architecture (EVA02 + mmseg UPerHead / FCNHead), eval mode."""
    init_default_scope("mmseg")
    c, heads = official["config"], official["head_config"]
    dec, aux = heads["decode_head"], heads["auxiliary_head"]
    bn = dict(type="BN", requires_grad=True)
    model = MODELS.build(dict(
        type="EncoderDecoder",
        backbone=dict(type="EVA02", arch="eva02_B", img_size=c["img_size"], patch_size=c["patch_size"],
                      arch_overrides=dict(embed_dim=c["embed_dim"], depth=c["depth"], num_heads=c["num_heads"],
                                          mlp_hidden=official["mlp_hidden_dim"], sub_ln=True),
                      out_indices=tuple(c["out_indices"]), norm_cfg=bn, with_cls_token=with_cls_token),
        decode_head=dict(type="UPerHead", in_channels=dec["in_channels"], in_index=dec["in_index"],
                         pool_scales=tuple(dec["pool_scales"]), channels=dec["channels"],
                         num_classes=dec["num_classes"], norm_cfg=bn, align_corners=False),
        auxiliary_head=dict(type="FCNHead", in_channels=aux["in_channels"], in_index=aux["in_index"],
                            channels=aux["channels"], num_convs=aux["num_convs"], concat_input=False,
                            num_classes=aux["num_classes"], norm_cfg=bn, align_corners=False),
    ))
    return model.eval()


def save_official(official, path, drop=()):
    """The fixture's weights as a released mmseg 0.x checkpoint file ({"meta", "state_dict"})."""
    state = {k: v for k, v in official["state_dict"].items() if k not in drop}
    torch.save({"meta": {"mmseg_version": "0.29.1"}, "state_dict": state}, path)
    return path


def assert_rel_close(actual, expected, rel=1e-4):
    err = (actual - expected).abs().max() / expected.abs().max()
    assert err < rel, f"relative error {err:.2e}"


@torch.no_grad()
def test_official_upernet_outputs_on_real_photos(official, tmp_path):
    """Same weights, same photos: backbone pyramid, decode and auxiliary logits equal the official model's."""
    model = segmentor_like(official)
    print(load_segmentor_checkpoint(model, save_official(official, tmp_path / "official.pth")))
    images = official["images"]
    feats = model.backbone(images)
    for ours, theirs in zip(feats, official["backbone_out"]):
        assert ours.shape == theirs.shape
        assert_rel_close(ours, theirs)
    assert_rel_close(model.decode_head(feats), official["decode_logits"])
    assert_rel_close(model.auxiliary_head(feats), official["aux_logits"])


@torch.no_grad()
def test_dropping_the_cls_token_is_not_the_official_model(official, tmp_path):
    """Why the switch exists: without the cls token the same weights give other features (docs/reference.md §7)."""
    model = segmentor_like(official, with_cls_token=False)
    load_segmentor_checkpoint(model, save_official(official, tmp_path / "official.pth"), strict=False)
    feats = model.backbone(official["images"])
    err = (feats[2] - official["backbone_out"][2]).abs().max() / official["backbone_out"][2].abs().max()
    assert err > 1e-3


def test_incomplete_official_checkpoint_is_an_error(official, tmp_path):
    model = segmentor_like(official)
    path = save_official(official, tmp_path / "partial.pth", drop=("backbone.fpn1.1.running_var",
                                                                   "decode_head.conv_seg.weight"))
    with pytest.raises(IncompleteCheckpointError, match=r"2 model weights would stay .*upsample_4x\.1\.running_var.*conv_seg"):
        load_segmentor_checkpoint(model, path)
    load_segmentor_checkpoint(model, path, strict=False)  # the documented opt-out


def test_full_seg_checkpoint_as_backbone_pretrained_maps_the_pyramid(official, tmp_path):
    path = save_official(official, tmp_path / "official.pth")
    init_default_scope("mmseg")
    reference = segmentor_like(official)
    load_segmentor_checkpoint(reference, path)
    c = official["config"]
    backbone = MODELS.build(dict(
        type="EVA02", arch="eva02_B", img_size=c["img_size"], out_indices=tuple(c["out_indices"]),
        arch_overrides=dict(embed_dim=c["embed_dim"], depth=c["depth"], num_heads=c["num_heads"],
                            mlp_hidden=official["mlp_hidden_dim"], sub_ln=True),
        norm_cfg=dict(type="BN"), init_cfg=dict(type="Pretrained", checkpoint=str(path))))  # mmseg's convention
    backbone.init_weights()
    ours = backbone.state_dict()
    for key, value in reference.backbone.state_dict().items():
        assert torch.equal(ours[key], value), key


@pytest.mark.parametrize("name, config", [
    ("upernet_eva02_base_12_512", "configs/ade20k/upernet_eva02_B_512.py"),
    ("upernetpro_eva02_large_24_640", "configs/ade20k/upernet_eva02_L_640.py"),
])
def test_released_checkpoint_layouts_map_onto_our_configs(name, config):
    """Every key of a released official UperNet (its own key list and shapes) lands on exactly one weight of our
    paper config of the same size, shapes equal after q/k/v fusion; nothing of ours is left over."""
    init_default_scope("mmseg")
    cfg = Config.fromfile(str(REPO / config))
    cfg.model.backbone.norm_cfg = cfg.model.decode_head.norm_cfg = cfg.model.auxiliary_head.norm_cfg = dict(type="BN")
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in MODELS.build(cfg.model).state_dict().items()}
    official = {k: torch.empty(shape, device="meta") for k, shape in json.loads(
        (FIXTURES / "official_seg_keys.json").read_text())[name]["keys"]}
    official = rename_official_pyramid(official, "backbone.")
    report = LoadReport()
    backbone = to_trv_names({k: v for k, v in official.items() if k.startswith("backbone.")}, report)
    mapped = {"backbone." + k: tuple(v.shape) for k, v in backbone.items()}
    mapped.update({k: tuple(v.shape) for k, v in official.items() if not k.startswith("backbone.")})
    assert len(report.derived) == 2 * (1 + cfg.model.backbone.get("depth", 24 if "large" in name else 12))
    assert mapped == ours


def test_test_seg_evaluates_a_released_official_checkpoint(official, repo, tmp_path, run_tool):
    """tools/test_seg.py --weights official.pth, as a user runs it on a released UperNet: it evaluates; a checkpoint
    that would leave weights unloaded stops with one line naming them (no traceback), unless --allow-partial."""
    c = official["config"]
    config = tmp_path / "official_tiny.py"
    config.write_text(f"""
_base_ = ["{repo / 'configs/demo/eva02_Ti_seg.py'}"]
model = dict(
    data_preprocessor=dict(size=(64, 64)),
    backbone=dict(arch_overrides=dict(depth={c['depth']}, embed_dim={c['embed_dim']}, num_heads={c['num_heads']},
                                      mlp_hidden={official['mlp_hidden_dim']}, sub_ln=True),
                  out_indices=(0, 1, 2, 3), img_size=64),
    decode_head=dict(in_channels=[{c['embed_dim']}] * 4, channels=16),
    auxiliary_head=dict(in_channels={c['embed_dim']}, channels=8),
)
test_dataloader = dict(num_workers=0, persistent_workers=False, batch_size=1,
                       dataset=dict(generate=dict(num_train=4, num_val=3, size=64)))
""")
    env = {"SHAPES_ROOT": str(tmp_path / "shapes")}
    proc = run_tool("test_seg.py", "--config-file", config, "--weights",
                    save_official(official, tmp_path / "official.pth"), "--output", tmp_path / "work", env=env)
    assert "mIoU" in proc.stdout + proc.stderr and "RoPE buffers ignored" in proc.stdout + proc.stderr
    partial = save_official(official, tmp_path / "partial.pth", drop=("auxiliary_head.conv_seg.bias",))
    proc = run_tool("test_seg.py", "--config-file", config, "--weights", partial, "--output", tmp_path / "work2",
                    env=env, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "auxiliary_head.conv_seg.bias" in proc.stderr and "--allow-partial" in proc.stderr
    run_tool("test_seg.py", "--config-file", config, "--weights", partial, "--output", tmp_path / "work3",
             "--allow-partial", env=env)
