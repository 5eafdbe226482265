"""Detector checkpoints: the official released layout (separate q/k/v, RoPE buffers, ema_state) loads with
zero missing keys; backbone-only (MIM) files load into backbone.net; our checkpoints are written atomically."""
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from eva02.backbone import to_official
from eva02.backbone.checkpoint import IncompleteCheckpointError, resize_patch_kernel
from eva02.det.checkpoint import EVACheckpointer, load_detector_weights
from eva02.det.engine import build_model
from tool_process import run_tool


@pytest.fixture(scope="module")
def small_cfg(make_config, tmp_path_factory):
    return make_config("configs/coco/eva02_L_sys_o365.py", tmp_path_factory.mktemp("ckpt_out"))


def _official_detector_state(model) -> dict:
    """The model's weights in the layout of a released EVA-02 detector `.pth` (docs/reference.md §5)."""
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone.net.")}
    net = model.backbone.net
    state.update({f"backbone.net.{k}": v for k, v in to_official(net).items()})
    head_dim = net.embed_dim // net.cfg.num_heads
    state["backbone.net.rope_win.freqs_cos"] = torch.randn(16, head_dim)  # resolution-dependent buffers
    state["backbone.net.rope_glb.freqs_sin"] = torch.randn(64, head_dim)
    state["backbone.net.blocks.0.attn.rope.freqs_cos"] = torch.randn(16, head_dim)
    return state


def test_official_detector_with_ema_loads_without_missing_keys(small_cfg, tmp_path):
    torch.manual_seed(1)
    source = build_model(small_cfg, "cpu")
    official = _official_detector_state(source)
    assert "backbone.net.blocks.0.attn.q_proj.weight" in official
    ema = {k: v + 1.0 if v.is_floating_point() else v for k, v in official.items()}
    path = tmp_path / "eva02_L_coco_det_sys_o365.pth"
    torch.save({"model": official, "ema_state": ema, "iteration": 40000}, path)

    torch.manual_seed(2)
    target = build_model(small_cfg, "cpu")
    incompatible = load_detector_weights(target, str(path))
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == []
    assert incompatible.incorrect_shapes == []
    for k, v in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[k], v, msg=k)

    load_detector_weights(target, str(path), use_ema=True)
    w = "backbone.net.blocks.1.attn.qkv.weight"
    torch.testing.assert_close(target.state_dict()[w], source.state_dict()[w] + 1.0)
    x = [{"image": torch.rand(3, 64, 64) * 255, "height": 64, "width": 64}]
    source.eval(), target.eval()
    load_detector_weights(target, str(path))
    with torch.no_grad():
        a, b = source(x)[0]["instances"], target(x)[0]["instances"]
    torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor)


def test_ema_requested_but_absent_names_the_file(small_cfg, tmp_path):
    model = build_model(small_cfg, "cpu")
    path = tmp_path / "plain.pth"
    torch.save({"model": model.state_dict()}, path)
    with pytest.raises(KeyError, match="plain.pth.*ema_state"):
        load_detector_weights(model, str(path), use_ema=True)


def test_backbone_only_mim_checkpoint_loads_into_backbone_net(small_cfg, tmp_path):
    """A MIM-style file (DeepSpeed `module`, official names, p14 kernel, 16x16+cls pos-embed) initializes the
    TrV; the kernel and pos-embed are resized, the heads stay as they were."""
    model = build_model(small_cfg, "cpu")
    net = model.backbone.net
    state = to_official(net)
    kernel = state["patch_embed.proj.weight"] = torch.randn(net.embed_dim, 3, 14, 14)
    state["pos_embed"] = torch.randn(1, 1 + 16 * 16, net.embed_dim)
    state["lm_head.weight"] = torch.randn(8, net.embed_dim)
    path = tmp_path / "eva02_pt_p14.pt"
    torch.save({"module": state}, path)
    head_before = model.roi_heads.box_predictor[0].cls_score.weight.clone()
    with pytest.raises(IncompleteCheckpointError, match=r"eva02_pt_p14.pt: \d+ model weights would stay .*simfp"):
        load_detector_weights(model, str(path))  # for evaluation, a backbone-only file is no detector
    incompatible = load_detector_weights(model, str(path), require="backbone")  # a training run's initial weights
    assert incompatible.missing_keys and not any(k.startswith("backbone.net.") for k in incompatible.missing_keys)
    assert tuple(net.pos_embed.shape) == (1, 1 + 14 * 14, net.embed_dim)
    torch.testing.assert_close(net.patch_embed.proj.weight, resize_patch_kernel(kernel, 16))
    torch.testing.assert_close(model.roi_heads.box_predictor[0].cls_score.weight, head_before)


def test_checkpoints_are_written_atomically(small_cfg, tmp_path):
    model = build_model(small_cfg, "cpu")
    checkpointer = EVACheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000009", iteration=9)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]  # no temporary left
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert torch.load(tmp_path / "model_0000009.pth", weights_only=True)["iteration"] == 9


def test_loads_that_leave_weights_unset_are_errors_naming_them(small_cfg, tmp_path):
    model = build_model(small_cfg, "cpu")
    state = model.state_dict()

    # Another class count: the file's cls_score rows are classes + 1.
    small_cfg.model.roi_heads.num_classes = 3
    three_classes = build_model(small_cfg, "cpu")
    small_cfg.model.roi_heads.num_classes = model.roi_heads.num_classes
    torch.save({"model": state}, tmp_path / "other_classes.pth")
    with pytest.raises(IncompleteCheckpointError, match=rf"other_classes.pth: .*box_predictor.*trained for "
                                                        rf"{model.roi_heads.num_classes} classes, the config builds 3"):
        load_detector_weights(three_classes, str(tmp_path / "other_classes.pth"))
    # fine-tuning on another class set: the backbone is all a training run needs
    load_detector_weights(three_classes, str(tmp_path / "other_classes.pth"), require="backbone")

    # A backbone weight missing: even a training run's initial weights are refused, naming it.
    torch.save({"model": {k: v for k, v in state.items() if k != "backbone.net.blocks.1.mlp.w3.weight"}},
               tmp_path / "no_w3.pth")
    with pytest.raises(IncompleteCheckpointError, match=r"no_w3.pth: 1 model weights .*blocks.1.mlp.w3.weight"):
        load_detector_weights(model, str(tmp_path / "no_w3.pth"), require="backbone")
    incompatible = load_detector_weights(model, str(tmp_path / "no_w3.pth"), require="any")  # the user's opt-out
    assert incompatible.missing_keys == ["backbone.net.blocks.1.mlp.w3.weight"]

    # Nothing of the model in the file (a segmentor's keys): refused whatever the user allows.
    torch.save({"model": {"backbone.blocks.0.attn.qkv.weight": torch.zeros(3, 3), "decode_head.conv_seg.weight":
                          torch.zeros(2, 2)}}, tmp_path / "segmentor.pth")
    with pytest.raises(IncompleteCheckpointError, match=r"segmentor.pth: none of the model's \d+ weights"):
        load_detector_weights(model, str(tmp_path / "segmentor.pth"), require="any")

    # A backbone-only file of another width: the shape error names the file, not "<state dict>".
    torch.save({"module": {"patch_embed.proj.weight": torch.zeros(8, 3, 16, 16), "pos_embed": torch.zeros(1, 17, 8),
                           "blocks.0.mlp.w1.weight": torch.zeros(16, 8)}}, tmp_path / "narrow.pt")
    with pytest.raises(ValueError, match=r"narrow.pt: shape mismatch for 'patch_embed.proj.weight'"):
        load_detector_weights(model, str(tmp_path / "narrow.pt"), require="any")


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("tool, weights, expected", [
    ("infer_det.py", "missing.pth", "checkpoint file not found: {weights}"),  # was fvcore's AssertionError
    ("train_det.py", "junk.pkl", "{weights} is not a readable checkpoint ("),  # was a bare UnpicklingError
    ("test_det.py", "missing.pth", "checkpoint file not found: {weights}"),
], ids=["infer_det-missing", "train_det-damaged-pkl", "test_det-missing"])
def test_tools_name_the_bad_weights_file(tmp_path, tool, weights, expected):
    weights = tmp_path / weights
    if weights.suffix == ".pkl":  # detectron2's own reader of Detectron / Caffe2 pickles
        weights.write_bytes(b"not a pickle")
    if tool == "infer_det.py":
        Image.new("RGB", (32, 32)).save(tmp_path / "photo.png")
        flags = ["--input", tmp_path / "photo.png", "--device", "cpu"]
    elif tool == "train_det.py":
        flags = ["--eval-only", "train.device=cpu"]
    else:
        flags = ["train.device=cpu"]
    proc = run_tool(ROOT / "tools" / tool, "--weights", weights, "--config-file", ROOT / "configs/demo/eva02_Ti_det.py",
                    "--output", tmp_path / "out", *flags, f"dataloader.setup.root={tmp_path / 'data'}",
                    "dataloader.setup.num_train=2", "dataloader.setup.num_val=2", timeout=600)
    message, hint = proc.stderr.strip().splitlines()[-2:]
    assert proc.returncode == 2 and hint == "(--debug shows the traceback)", proc.stderr[-3000:]
    assert expected.format(weights=weights) in message and "<state dict>" not in message, message
