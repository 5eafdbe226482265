"""MIM pre-training against the official EVA-02 code (github.com/baaivision/EVA, commit 5623d08, EVA-02/asuka).

Fixtures (tests/mim/fixtures/README.md says how each was made by running the official code):
  official_mim_tiny.pt     two tiny official students: "ti_style" (the Ti/S code path: fused qkv, xformers-packed
                           w12) and "b_style" (B/L: separate q/k/v, w1 / w2, sub-LN), random weights, two skimage
                           photos, a mask, the official outputs, loss against the tiny teacher, every
                           parameter's gradient, and init statistics of the official constructor
  official_teacher_tiny.pt a tiny official EVA-CLIP tower (GELU MLP, fused qkv, projection head) and the targets the
                           official pre-training engine takes from it for the same photos
  official_mim_keys.json   key names and shapes of the real Ti / S / B / L pre-training models, and their
                           weight-decay split
"""
import json
from pathlib import Path

import pytest
import torch

from eva02.backbone import MIM_NO_DECAY
from eva02.backbone.mim import TimmTeacher, TrVTeacher, create_mim_student, mim_loss

FIXTURES = Path(__file__).parent / "fixtures"
PRESET = {"ti_style": "eva02_Ti", "b_style": "eva02_B"}


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURES / "official_mim_tiny.pt", weights_only=True)


@pytest.fixture(scope="module")
def official_teacher():
    return torch.load(FIXTURES / "official_teacher_tiny.pt", weights_only=True)


def student_like(case: dict, name: str):
    c = case["config"]
    return create_mim_student(name, c["predict_feature_dim"], img_size=c["img_size"], embed_dim=c["embed_dim"],
                              depth=c["depth"], num_heads=c["num_heads"], mlp_hidden=case["mlp_hidden"])


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("style", ["ti_style", "b_style"])
def test_official_checkpoint_loads_and_gives_the_official_outputs(official, style):
    """The official state dict of each layout (packed w12 + fused qkv for Ti/S) loads with nothing left over, and
    the student's predictions and pre-norm features equal the official model's on the same photos and mask."""
    case = official[style]
    student = student_like(case, PRESET[style]).eval()
    report = student.load_official({"module": case["state_dict"]})
    assert len(report.derived) == 2 * (1 + case["config"]["depth"])  # RoPE buffers, recomputed
    with torch.no_grad():
        out = student(official["image"], official["mask"])
        feats = student.encoder.forward_tokens(official["image"], official["mask"])
    assert rel_err(out, case["output"]) < 1e-4
    assert rel_err(feats, case["features"]) < 1e-4


@pytest.mark.parametrize("style", ["ti_style", "b_style"])
def test_export_is_the_official_state_dict(official, style):
    """Our export of the loaded weights IS the official model's state dict: same keys (incl. the per-block RoPE
    buffers), same shapes, same values; so the official code loads it strictly."""
    case = official[style]
    student = student_like(case, PRESET[style])
    student.load_official(case["state_dict"])
    exported = student.official_state_dict()
    assert sorted(exported) == sorted(case["state_dict"])
    for key, value in case["state_dict"].items():
        torch.testing.assert_close(exported[key], value.float(), rtol=0, atol=1e-6, msg=key)


@pytest.mark.parametrize("style", ["ti_style", "b_style"])
def test_loss_and_gradients_equal_the_official_step(official, official_teacher, style):
    """Negative cosine loss on masked patches against the official teacher targets, then backward: the loss and
    every parameter's gradient (the patch embedding's scaled by 0.1, the official --stop_grad_conv1) equal the
    official, element by element, once put in the official layout by the export that maps the weights."""
    case = official[style]
    student = student_like(case, PRESET[style]).train()
    student.load_official(case["state_dict"])
    loss = mim_loss(student(official["image"], official["mask"]), official_teacher["target"], official["mask"])
    loss.backward()
    assert float(loss) == pytest.approx(float(case["loss_vs_tiny_teacher"]), rel=1e-4)
    # The export only renames, splits q/k/v and packs w1 / w2, so it maps gradients as it maps weights.
    grads = student_like(case, PRESET[style])
    with torch.no_grad():
        for holder, param in zip(grads.parameters(), student.parameters(), strict=True):
            holder.copy_(param.grad)
    ours = {k: v for k, v in grads.official_state_dict().items() if "rope.freqs" not in k}
    assert sorted(ours) == sorted(case["grads"])
    for key, theirs in case["grads"].items():
        # atol: the two float32 summation orders differ by up to ~4e-8 (largest element ~0.1), more than 1e-4
        # of the elements near zero; 1e-7 covers that, 1e-6 of the largest element.
        torch.testing.assert_close(ours[key], theirs, rtol=1e-4, atol=1e-7, msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.parametrize("style", ["ti_style", "b_style"])
def test_init_follows_the_official_constructor(official, style):
    """Init statistics against the official constructor's: xavier over the official matrices (Ti/S: fused qkv,
    packed w12), tokens truncated at +-0.02, the patch bias left at PyTorch's default, sub-LN rescaling."""
    case = official[style]
    stats = case["official_init_stats"]
    torch.manual_seed(0)
    sd = student_like(case, PRESET[style]).official_state_dict()
    for key, (_, std, lo, hi) in stats.items():
        value = sd[key].float()
        if std == 0:
            assert float(value.std()) == 0 and float(value.min()) == pytest.approx(lo), key
            continue
        assert float(value.std()) == pytest.approx(std, rel=0.2), key
        if key in ("cls_token", "mask_token", "pos_embed"):
            assert float(value.abs().max()) <= 0.02
    assert float(sd["patch_embed.proj.bias"].abs().max()) > 0  # not zeroed


def test_real_sizes_export_the_official_keys_and_shapes():
    """Ti / S / B / L: our export's keys and shapes are the official pre-training models' (from the official code's
    own state dicts), and the MIM weight-decay exemption splits them as the official optimizer factory does."""
    models = json.loads((FIXTURES / "official_mim_keys.json").read_text())["models"]
    for size, official in models.items():
        with torch.device("meta"):
            exported = create_mim_student(f"eva02_{size}", 1024).official_state_dict(rope_grid=16)
        assert {k: list(v.shape) for k, v in exported.items()} == dict(official["state_dict"]), size
        shapes = dict(official["state_dict"])
        assert not any(MIM_NO_DECAY(k, torch.empty(shapes[k], device="meta")) for k in official["weight_decay_0.05"])
        assert all(MIM_NO_DECAY(k, torch.empty(shapes[k], device="meta")) for k in official["no_weight_decay"])


def test_clip_teacher_targets_equal_the_official_engine(official_teacher, tmp_path):
    """The official EVA-CLIP file read by timm's own converter into timm's Eva (an independent reader): targets
    head(norm(x))[:, 1:], the CLIP-projected patch features the official engine trains on."""
    torch.save(official_teacher["state_dict"], tmp_path / "eva_clip_tiny.pt")
    cfg = official_teacher["config"]["vision_cfg"]
    teacher = TimmTeacher("eva_giant_patch14_clip_224", tmp_path / "eva_clip_tiny.pt", img_size=cfg["image_size"],
                          embed_dim=cfg["width"], depth=cfg["layers"], num_heads=cfg["width"] // cfg["head_width"],
                          mlp_ratio=cfg["mlp_ratio"], num_classes=official_teacher["config"]["embed_dim"])
    target = teacher(official_teacher["image"], (4, 4))
    assert rel_err(target, official_teacher["target"]) < 1e-4
    with pytest.raises(KeyError, match="GELU MLP.*timm:eva_giant_patch14_clip_224"):
        TrVTeacher.from_checkpoint(tmp_path / "eva_clip_tiny.pt")


@pytest.mark.parametrize("style, timm_name", [("ti_style", "eva02_tiny_patch14_224"),
                                              ("b_style", "eva02_base_patch14_224")])
def test_timm_reads_the_official_checkpoint_as_we_do(official, style, timm_name):
    """A second, independent reader: timm's own `checkpoint_filter_fn` loads the official state dict into timm's
    Eva (RoPE on the 4x4 input grid, as official pre-training); its tokens equal ours."""
    timm = pytest.importorskip("timm")
    from timm.models.eva import checkpoint_filter_fn

    case = official[style]
    c = case["config"]
    ref = timm.create_model(timm_name, pretrained=False, img_size=c["img_size"], embed_dim=c["embed_dim"],
                            depth=c["depth"], num_heads=c["num_heads"], mlp_ratio=c["mlp_ratio"], num_classes=0,
                            ref_feat_shape=(4, 4)).eval()
    state = {"module": {k: v.float() for k, v in case["state_dict"].items()}}
    result = ref.load_state_dict(checkpoint_filter_fn(state, ref), strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    ref.norm = torch.nn.Identity()  # our encoder's tokens come before the student's final norm
    student = student_like(case, PRESET[style]).eval()
    student.load_official(case["state_dict"])
    with torch.no_grad():
        assert rel_err(student.encoder.forward_tokens(official["image"]), ref.forward_features(official["image"])) < 1e-5
