"""MIM pre-training: loss, student layout, teachers, data, the training loop, resume and export."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from eva02.backbone import create_trv, load_checkpoint, read_state_dict, to_official
from eva02.backbone.mim import (CLIP_MEAN, CLIP_STD, MIMImageFolder, PretrainConfig, TimmTeacher, TrVTeacher,
                                build_teacher, cosine_lr, create_mim_student, export_official, mim_loss, pretrain)
from eva02.backbone.mim.demo import write_demo_images

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A shrunk student for the loop mechanics (resume, CLI); the loss-drop run uses the real EVA-02-Ti.
SMALL = {"depth": 2, "embed_dim": 64, "num_heads": 1, "mlp_hidden": 170}


def config(tmp_path, image_folder, teacher_ckpt, name="run", **kw):
    base = dict(model="eva02_Ti", teacher=str(teacher_ckpt), data=str(image_folder), output=str(tmp_path / name),
                batch_size=8, input_size=112, num_workers=0, lr=1e-3, warmup_epochs=0.5)
    return PretrainConfig(**{**base, **kw})


# ---------------------------------------------------------------- loss and student
def test_loss_uses_masked_positions_only():
    B, N, D = 2, 16, 8
    mask = torch.zeros(B, N, dtype=torch.bool)
    mask[0, :5] = mask[1, 7:13] = True
    target = torch.randn(B, N, D)
    pred = torch.randn(int(mask.sum()), D)
    loss = mim_loss(pred, target, mask)
    perturbed = target.clone()
    perturbed[~mask] = torch.randn(int((~mask).sum()), D) * 100
    assert torch.equal(mim_loss(pred, perturbed, mask), loss)  # unmasked targets never enter
    perturbed[mask] += torch.randn(int(mask.sum()), D)
    assert not torch.allclose(mim_loss(pred, perturbed, mask), loss)
    assert torch.allclose(mim_loss(target[mask] * 3.0, target, mask), torch.tensor(-1.0))  # scale-free, -1 at best


def test_student_predicts_masked_positions_in_official_layout():
    student = create_mim_student("eva02_Ti", 48, **SMALL)
    assert student.lm_head.weight.shape == (48, 64) and torch.count_nonzero(student.lm_head.bias) == 0
    std = student.lm_head.weight.std().item()
    assert abs(std - math.sqrt(2 / (64 + 48))) < 0.25 * math.sqrt(2 / (64 + 48))  # xavier normal, as official
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[0, :20], mask[1, 30:56] = True, True
    assert student(torch.randn(2, 3, 112, 112), mask).shape == (46, 48)

    official = student.official_state_dict()
    # Ti's official layout (tests/mim/test_official.py checks it against the official code's own state dict)
    for key in ("cls_token", "mask_token", "patch_embed.proj.weight", "blocks.1.attn.qkv.weight",
                "blocks.1.mlp.w12.weight", "blocks.1.attn.q_bias", "norm.weight", "norm.bias", "lm_head.weight",
                "lm_head.bias"):
        assert key in official, key
    assert not any("q_proj" in k or ".mlp.w1." in k or k.startswith("encoder.") for k in official)
    assert official["pos_embed"].shape == (1, 257, 64) and official["patch_embed.proj.weight"].shape[-1] == 14
    fresh = create_trv("eva02_Ti", patch_size=14, with_cls_token=True, with_mask_token=True, **SMALL)
    report = load_checkpoint(fresh, {"module": official})
    assert report.missing == [] and report.unexpected == []
    assert torch.equal(fresh.blocks[1].attn.qkv.weight, student.encoder.blocks[1].attn.qkv.weight)


def test_cosine_schedule():
    assert cosine_lr(0, 100, 10, 1.0, 0.0) == pytest.approx(0.1)
    assert cosine_lr(9, 100, 10, 1.0, 0.0) == pytest.approx(1.0)
    assert cosine_lr(55, 100, 10, 1.0, 0.0) == pytest.approx(0.5)
    assert cosine_lr(100, 100, 10, 1.0, 0.01) == pytest.approx(0.01)


# ---------------------------------------------------------------- teachers
def test_trv_teacher_is_frozen_and_gives_projected_patch_features(teacher_ckpt):
    teacher = TrVTeacher.from_checkpoint(teacher_ckpt)
    assert all(not p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training  # stays in eval mode inside a training loop
    x = torch.randn(2, 3, 112, 112)
    out = teacher(x, (8, 8))
    assert out.shape == (2, 64, 64) and not out.requires_grad
    # head(norm(tokens))[:, 1:], not re-normalized (as the official targets); this teacher has no head
    expected = teacher.norm(teacher.encoder.forward_tokens(x)[:, 1:])
    torch.testing.assert_close(out, expected)
    assert teacher(x, (4, 4)).shape == (2, 16, 64)  # resized to another student grid
    assert teacher(x, (8, 8), torch.bfloat16).dtype == torch.float32  # autocast inside, float targets out


def test_eva_clip_style_tower_with_projection(tmp_path):
    trv = create_trv("eva02_Ti", with_cls_token=True, **SMALL)
    head = torch.nn.Linear(64, 32)
    state = {f"visual.{k}": v for k, v in to_official(trv).items()}
    state.update({"visual.norm.weight": torch.ones(64), "visual.norm.bias": torch.zeros(64),
                  "visual.head.weight": head.weight.detach(), "visual.head.bias": head.bias.detach(),
                  "text.token_embedding.weight": torch.zeros(10, 8)})
    torch.save({"state_dict": state}, tmp_path / "clip.pt")
    teacher = build_teacher(str(tmp_path / "clip.pt"))
    assert isinstance(teacher, TrVTeacher)
    out = teacher(torch.randn(1, 3, 112, 112), (8, 8))
    assert out.shape == (1, 64, 32)  # the CLIP projection's width


def test_timm_teacher_from_local_file(tmp_path):
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=112)
    torch.save(model.state_dict(), tmp_path / "vit.pth")
    teacher = TimmTeacher("vit_tiny_patch16_224", tmp_path / "vit.pth", img_size=112)
    assert all(not p.requires_grad for p in teacher.parameters())
    x = torch.randn(2, 3, 112, 112)
    out = teacher(x, (8, 8))  # timm's 7x7 grid at patch 16, resized to the student's 8x8
    assert out.shape == (2, 64, 192)
    # Re-normalization: CLIP-normalized input -> the timm model's own statistics (ImageNet inception 0.5 / 0.5).
    raw = torch.rand(1, 3, 112, 112)
    clip_in = (raw - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    own = (raw - 0.5) / 0.5
    assert torch.allclose(clip_in * teacher.in_scale + teacher.in_shift, own, atol=1e-5)

    with pytest.raises(FileNotFoundError, match="local weights file"):
        build_teacher("timm:vit_tiny_patch16_224")
    wrong = dict(model.state_dict())
    wrong["bogus.weight"] = wrong.pop("blocks.0.norm1.weight")
    torch.save({"state_dict": wrong}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match=r"wrong.pth does not fit timm model .*blocks.0.norm1.weight.*bogus.weight"):
        TimmTeacher("vit_tiny_patch16_224", tmp_path / "wrong.pth", img_size=112)


# ---------------------------------------------------------------- data
def test_corrupt_images_are_reported_and_skipped(tmp_path, caplog):
    folder = tmp_path / "imgs"
    good = write_demo_images(folder, 3, size=32)
    (folder / "garbage.png").write_bytes(b"not an image at all")
    truncated = open(good[0], "rb").read()
    (folder / "truncated.png").write_bytes(truncated[: len(truncated) // 2])
    ds = MIMImageFolder(folder, input_size=56, patch_size=14, min_mask_block=4, seed=0)
    assert len(ds) == 5
    with caplog.at_level("WARNING", logger="eva02.mim"):
        items = [ds[(0, i)] for i in range(len(ds))]
    assert {os.path.basename(p) for p in ds.bad} == {"garbage.png", "truncated.png"}
    assert "garbage.png" in caplog.text and "truncated.png" in caplog.text
    for x, mask in items:
        assert x.shape == (3, 56, 56) and mask.shape == (16,) and mask.dtype == torch.bool
    # Deterministic per (seed, epoch, index); another epoch draws another crop / mask.
    assert torch.equal(ds[(0, 1)][0], items[1][0]) and not torch.equal(ds[(1, 1)][0], items[1][0])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        MIMImageFolder(tmp_path / "empty", 56)
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        MIMImageFolder(tmp_path / "missing", 56)


# ---------------------------------------------------------------- training
@pytest.fixture(scope="module")
def trained(tmp_path_factory, image_folder, teacher_ckpt):
    """EVA-02-Ti pre-trained for 16 steps (batch 8) on the 96 generated images against the random teacher."""
    tmp = tmp_path_factory.mktemp("mim_run")
    teacher = TrVTeacher.from_checkpoint(teacher_ckpt)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = pretrain(config(tmp, image_folder, teacher_ckpt, max_steps=16), teacher=teacher)
    return tmp, result, teacher, before


def test_pretraining_lowers_the_loss(trained):
    _, result, _, _ = trained
    losses = [h["loss"] for h in result["history"]]
    assert len(losses) == 16
    first, last = losses[0], sum(losses[-6:]) / 6  # step 1 is the fresh student (it learns within 3 steps)
    assert first > -0.2  # a fresh student is unrelated to the teacher
    assert last < first - 0.3, losses  # and learns to predict its features


def test_teacher_does_not_change(trained):
    _, _, teacher, before = trained
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in teacher.parameters())


def test_log_and_checkpoint(trained):
    tmp, result, _, _ = trained
    lines = [json.loads(l) for l in open(tmp / "run" / "log.jsonl")]
    assert [l["step"] for l in lines] == list(range(1, 17))
    ckpt = read_state_dict(result["checkpoint"])
    assert ckpt["step"] == 16 and ckpt["config"]["model"] == "eva02_Ti"
    assert not [f for f in os.listdir(tmp / "run") if ".tmp." in f]  # atomic writes leave no temporaries


def test_export_loads_into_detection_and_segmentation_backbones(trained):
    tmp, result, _, _ = trained
    p14, p16 = export_official(result["checkpoint"], tmp / "export", "ti")
    mim = read_state_dict(p14)
    assert set(mim) == {"module"}
    # Ti's official layout: fused qkv, packed w12 (tests/mim/test_official.py: against the official state dict)
    assert "lm_head.weight" in mim["module"] and "blocks.0.attn.qkv.weight" in mim["module"]
    assert "blocks.0.mlp.w12.weight" in mim["module"] and "rope.freqs_cos" in mim["module"]
    assert mim["module"]["pos_embed"].shape == (1, 257, 192)  # trained at 112 px, exported on the official 16x16
    p16_state = read_state_dict(p16)
    assert p16_state["patch_embed.proj.weight"].shape == (192, 3, 16, 16)
    assert p16_state["pos_embed"].shape == (1, 197, 192)  # 14x14 + cls, as the official p14to16 files

    det = create_trv("eva02_Ti", patch_size=16, window_size=16, global_blocks=(2, 5, 8, 11))
    seg = create_trv("eva02_Ti", patch_size=16, img_size=512, out_indices=(3, 5, 7, 11))
    student = create_mim_student("eva02_Ti", 64, img_size=112)
    student.load_state_dict(read_state_dict(result["checkpoint"])["student"])
    for model in (det, seg):
        report = load_checkpoint(model, p16)
        assert report.missing == []
        assert set(report.unexpected) <= {"cls_token", "mask_token"}  # pre-training tokens a dense backbone lacks
        assert torch.equal(model.blocks[7].mlp.w3.weight, student.encoder.blocks[7].mlp.w3.weight)
    assert load_checkpoint(create_trv("eva02_Ti", patch_size=16), p14).missing == []  # p14 resized on load too


def test_export_loads_through_the_det_and_seg_builders(trained):
    tmp, result, _, _ = trained
    _, p16 = export_official(result["checkpoint"], tmp / "export_builders", "ti")
    student_w = read_state_dict(p16)["blocks.11.mlp.w12.weight"][:512]  # w1: the first half of Ti's packed w12
    det_backbone = pytest.importorskip("eva02.det.backbone")
    net = det_backbone.TrVBackbone("eva02_Ti")
    assert load_checkpoint(net, p16).missing == []
    assert torch.equal(net.blocks[11].mlp.w1.weight, student_w)
    seg = pytest.importorskip("eva02.seg")
    enc = seg.EVA02(arch="eva02_Ti", img_size=224, norm_cfg=dict(type="BN"), pretrained=p16)
    enc.init_weights()
    assert torch.equal(enc.blocks[11].mlp.w1.weight, student_w)


def test_resume_continues_at_the_saved_step(tmp_path, image_folder, teacher_ckpt):
    kw = dict(max_steps=6, save_every=2, arch=SMALL)
    straight = pretrain(config(tmp_path, image_folder, teacher_ckpt, "straight", **kw))

    class Stop(Exception):
        pass

    def crash_at_5(record):
        if record["step"] == 5:  # after the step-4 checkpoint, before the next one
            raise Stop

    cfg = config(tmp_path, image_folder, teacher_ckpt, "resumed", **kw)
    with pytest.raises(Stop):
        pretrain(cfg, on_step=crash_at_5)
    starts = []
    resumed = pretrain(cfg, on_start=starts.append)
    assert starts[0]["step"] == 4 and starts[0]["total_steps"] == 6
    assert [h["step"] for h in resumed["history"]] == [1, 2, 3, 4, 5, 6]
    lines = [json.loads(l)["step"] for l in open(tmp_path / "resumed" / "log.jsonl")]
    assert lines == [1, 2, 3, 4, 5, 6]  # the crashed step 5 is not logged twice
    # Same data, masks and optimizer state: the resumed run reproduces the uninterrupted one.
    for a, b in zip(straight["history"], resumed["history"]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    again = pretrain(cfg)  # nothing left to do
    assert again["step"] == 6 and len(again["history"]) == 6


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_matches_fp32(tmp_path, image_folder, teacher_ckpt, amp):
    kw = dict(max_steps=2, batch_size=4, arch=SMALL)
    ref = pretrain(config(tmp_path, image_folder, teacher_ckpt, "fp32", amp="none", **kw))["history"]
    low = pretrain(config(tmp_path, image_folder, teacher_ckpt, amp, amp=amp, **kw))["history"]
    assert low[0]["loss"] != ref[0]["loss"]  # autocast did run in low precision
    for i, (a, b) in enumerate(zip(ref, low)):
        if not all(math.isfinite(h["grad_norm"]) for h in low[:i]):
            break  # fp16's dynamic loss scale skipped an overflowing step (as DeepSpeed's): the runs part ways
        assert b["loss"] == pytest.approx(a["loss"], abs=0.01)
    assert math.isfinite(low[-1]["grad_norm"])  # the loss scale recovers


def test_command_line_tool(tmp_path, image_folder, teacher_ckpt):
    out = tmp_path / "cli"
    cmd = [sys.executable, os.path.join(REPO, "tools", "pretrain_mim.py"), "--model", "eva02_Ti",
           "--teacher", str(teacher_ckpt), "--data", str(image_folder), "--output", str(out),
           "--input-size", "112", "--batch-size", "4", "--accum-steps", "2", "--max-steps", "3", "--workers", "1",
           "--lr", "1e-3",
           "--arch", "depth=2", "--export"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(open(out / "log.jsonl").readlines()) == 3
    for name in ("loss.png", "checkpoint.pt", "eva02_Ti_mim_p14.pt", "eva02_Ti_mim_p14to16.pt", "summary.json"):
        assert (out / name).is_file(), name
    assert "wrote" in run.stdout
    bad = subprocess.run(cmd[:2] + ["--output", str(out)], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--teacher and --data are required" in bad.stderr


@pytest.mark.slow
def test_longer_pretraining_at_224(tmp_path, teacher_ckpt):
    """The full-size input (16x16 grid, 105 masked patches): 2 epochs (40 steps) on 160 new images."""
    folder = tmp_path / "imgs"
    write_demo_images(folder, 160, size=96, seed=3)
    result = pretrain(config(tmp_path, folder, teacher_ckpt, input_size=224, epochs=2, warmup_epochs=0.25))
    losses = [h["loss"] for h in result["history"]]
    assert len(losses) == 40
    assert sum(losses[-8:]) / 8 < sum(losses[:3]) / 3 - 0.4, losses


@pytest.mark.slow
def test_ddp_under_torchrun(tmp_path, image_folder, teacher_ckpt):
    """Two CPU processes (gloo): each reads half of the images, rank 0 logs and saves."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           os.path.join(REPO, "tools", "pretrain_mim.py"), "--model", "eva02_Ti", "--teacher", str(teacher_ckpt),
           "--data", str(image_folder), "--output", str(out), "--input-size", "112", "--batch-size", "4",
           "--accum-steps", "2", "--max-steps", "3", "--workers", "0", "--lr", "1e-3", "--arch", "depth=2"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert [json.loads(l)["step"] for l in open(out / "log.jsonl")] == [1, 2, 3]
    assert read_state_dict(out / "checkpoint.pt")["step"] == 3
