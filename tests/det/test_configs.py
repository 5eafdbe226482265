"""Every paper config holds its table's values (docs/reference.md §2, Tables 27-33; official departures §7),
read back from the loaded config."""
import pytest
from detectron2.config import LazyConfig

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

L8 = (2, 5, 8, 11, 14, 17, 20, 23)
# name: (arch, crop, window, global blocks, lr, lrd, batch, iters, milestones | None (constant), drop path,
#        score thr, dets, nms method, maskness, EMA decay | None, classes, activation checkpointing)
TABLES = {
    "coco/eva02_B_bsl": ("eva02_B", 1024, 16, (2, 5, 8, 11), 5e-5, 0.7, 128, 60000, (48000, 54000), 0.1, 0.05, 100, "nms", None, None, 80, False),
    "coco/eva02_L_bsl": ("eva02_L", 1024, 16, (5, 11, 17, 23), 6e-5, 0.8, 144, 60000, (48000, 54000), 0.4, 0.05, 100, "nms", None, None, 80, False),
    "lvis/eva02_B_bsl": ("eva02_B", 1024, 16, (2, 5, 8, 11), 1e-4, 0.7, 128, 50000, (40000, 45000), 0.1, 0.02, 300, "nms", None, None, 1203, False),
    "lvis/eva02_L_bsl": ("eva02_L", 1024, 16, (5, 11, 17, 23), 1e-4, 0.8, 128, 40000, (32000, 36000), 0.4, 0.02, 300, "nms", None, None, 1203, False),
    "coco/eva02_B_sys": ("eva02_B", 1536, 32, (1, 3, 5, 7, 9, 11), 5e-5, 0.7, 128, 60000, (48000, 54000), 0.1, 0.0, 100, "soft_linear", 0.5, None, 80, False),
    "coco/eva02_L_sys": ("eva02_L", 1536, 32, L8, 5e-5, 0.8, 128, 60000, (48000, 54000), 0.4, 0.0, 100, "soft_linear", 0.5, None, 80, True),
    "lvis/eva02_L_sys": ("eva02_L", 1536, 32, L8, 1e-4, 0.8, 128, 40000, (32000, 36000), 0.4, 0.02, 300, "soft_linear", 0.5, None, 1203, True),
    "o365/eva02_L": ("eva02_L", 1536, 16, L8, 6e-5, 0.8, 160, 400000, (320000, 360000), 0.4, 0.05, 100, "nms", None, None, 365, False),
    "coco/eva02_L_sys_o365": ("eva02_L", 1536, 16, L8, 4e-5, 0.8, 64, 40000, None, 0.3, 0.0, 100, "soft_linear", 0.5, 0.9999, 80, True),
    "lvis/eva02_L_sys_o365": ("eva02_L", 1536, 16, L8, 4e-5, 0.8, 64, 70000, None, 0.3, 0.02, 1000, "soft_linear", 0.5, 0.9999, 1203, True),
}
# Warmup iterations where the official configs depart from the common 1000: Objects365 5000, O365-initialized
# fine-tuning 1% of the schedule (docs/reference.md §7).
WARMUP = {"o365/eva02_L": 5000, "coco/eva02_L_sys_o365": 400, "lvis/eva02_L_sys_o365": 700}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_table_values(name):
    (arch, crop, window, global_blocks, lr, lrd, batch, iters, milestones, drop_path, score_thr, dets, nms,
     maskness, ema, classes, act_ckpt) = TABLES[name]
    cfg = LazyConfig.load(str(ROOT / "configs" / f"{name}.py"))
    net = cfg.model.backbone.net
    assert (net.arch, net.patch_size, net.img_size) == (arch, 16, 224)
    assert (net.window_size, tuple(net.global_blocks), net.drop_path_rate) == (window, global_blocks, drop_path)
    assert net.rope_grid == crop // 16 and cfg.model.backbone.square_pad == crop
    assert net.use_checkpoint is act_ckpt
    lsj = cfg.dataloader.train.mapper.augmentations
    assert (lsj[1].min_scale, lsj[1].max_scale, tuple(lsj[2].crop_size)) == (0.1, 2.0, (crop, crop))
    assert cfg.dataloader.test.mapper.augmentations[0].max_size == crop
    assert (cfg.optimizer.lr, cfg.optimizer.params.lr_decay_rate, cfg.optimizer.weight_decay) == (lr, lrd, 0.1)
    assert (tuple(cfg.optimizer.betas), cfg.optimizer.eps) == ((0.9, 0.999), 1e-8)
    assert cfg.dataloader.train.total_batch_size == batch and cfg.train.max_iter == iters
    sched = cfg.lr_multiplier
    assert sched.warmup_length * iters == pytest.approx(WARMUP.get(name, 1000))
    assert sched.warmup_factor == 0.001
    if milestones is None:
        assert sched.scheduler.start_value == sched.scheduler.end_value == 1.0
    else:
        assert tuple(sched.scheduler.milestones) == milestones and sched.scheduler.num_updates == iters
    heads = cfg.model.roi_heads
    assert heads.num_classes == classes and len(heads.box_heads) == 3
    for predictor in heads.box_predictors:
        assert (predictor.test_score_thresh, predictor.test_topk_per_image) == (score_thr, dets)
        if nms != "nms":
            assert predictor.test_nms_thresh == 0.6
    assert (heads.nms_method, heads.maskness_thresh) == (nms, maskness)
    assert heads.soft_nms_topk is False and heads.soft_nms_min_score == 1e-3  # official: every survivor evaluated
    assert cfg.train.ddp.fp16_compression is True  # official DDP setting
    assert cfg.train.amp.enabled and cfg.train.amp.precision == "fp16"
    assert cfg.train.model_ema.enabled is (ema is not None)
    if ema is not None:
        assert cfg.train.model_ema.decay == ema
    if classes == 1203:
        assert cfg.dataloader.train.sampler.repeat_factors.repeat_thresh == 0.001
        assert cfg.dataloader.evaluator.max_dets_per_image == dets
        assert all(p.use_fed_loss and p.use_sigmoid_ce for p in heads.box_predictors)
        assert all(p.get_fed_loss_cls_weights.power == 0.5 for p in heads.box_predictors)
    if name.startswith("o365"):
        assert "mask_head" not in heads and tuple(cfg.dataloader.evaluator.tasks) == ("bbox",)
        assert tuple(cfg.dataloader.train.dataset.names) == ("objects365_v2_train", "objects365_v2_val")


def test_shared_structure():
    """Values every table shares: ViTDet pyramid and cascade heads (docs/reference.md §2)."""
    cfg = LazyConfig.load(str(ROOT / "configs/coco/eva02_B_bsl.py"))
    m = cfg.model
    assert tuple(m.backbone.scale_factors) == (4.0, 2.0, 1.0, 0.5) and m.backbone.out_channels == 256
    assert m.backbone.norm == "LN" and m.proposal_generator.head.conv_dims == [-1, -1]
    assert m.roi_heads._target_ == "eva02.det.roi_heads.EVACascadeROIHeads"
    assert [tuple(p.box2box_transform.weights) for p in m.roi_heads.box_predictors] == [
        (10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15)]
    assert [mt.thresholds for mt in m.roi_heads.proposal_matchers] == [[0.5], [0.6], [0.7]]
    for head in m.roi_heads.box_heads:
        assert (head.conv_dims, head.fc_dims, head.conv_norm) == ([256] * 4, [1024], "LN")
    assert all(p.cls_agnostic_bbox_reg for p in m.roi_heads.box_predictors)
    assert m.roi_heads.mask_head.conv_norm == "LN" and m.input_format == "RGB"
    assert list(m.pixel_mean) == [123.675, 116.28, 103.53]


@pytest.mark.parametrize("override, closest", [
    ("train.max_itr=5", "train.max_iter"),
    ("model.roi_heads.num_clases=3", "model.roi_heads.num_classes"),
    ("optimizer.weight_decy=0.05", "optimizer.weight_decay"),
    # 3 augmentations: no item 7
    ("dataloader.train.mapper.augmentations.7.min_scale=0.2", "dataloader.train.mapper.augmentations.1.min_scale"),
])
def test_an_override_key_the_config_lacks_is_an_error_naming_the_closest(override, closest):
    from eva02.common.cli import UsageError
    from eva02.det.config import apply_overrides

    with pytest.raises(UsageError, match=f"override {override.split('=')[0]}: the config has no key") as error:
        apply_overrides(LazyConfig.load(str(ROOT / "configs/coco/eva02_B_bsl.py")), [override])
    assert f"did you mean {closest}?" in str(error.value)


def test_an_override_may_set_an_argument_the_config_leaves_at_its_default():
    """Keys a LazyCall does not list are fine when its target takes them (detectron2 would add any key)."""
    import inspect

    from detectron2.modeling.proposal_generator import RPN

    from eva02.det.config import apply_overrides

    cfg = LazyConfig.load(str(ROOT / "configs/coco/eva02_B_bsl.py"))
    assert "smooth_l1_beta" not in cfg.model.proposal_generator and "depth" not in cfg.model.backbone.net
    assert "smooth_l1_beta" in inspect.signature(RPN).parameters
    cfg = apply_overrides(cfg, ["model.proposal_generator.smooth_l1_beta=0.1", "model.backbone.net.depth=2",
                                "train.max_iter=5"])
    assert cfg.model.proposal_generator.smooth_l1_beta == 0.1 and cfg.model.backbone.net.depth == 2


def test_an_override_of_none_sets_none():
    """docs/detection.md's `model.roi_heads.maskness_thresh=None` (COCO box AP runs): Hydra's grammar alone
    reads the string "None", which the RoI heads would compare with mask probabilities."""
    from eva02.det.config import apply_overrides

    cfg = apply_overrides(LazyConfig.load(str(ROOT / "configs/coco/eva02_L_sys.py")),
                          ["model.roi_heads.maskness_thresh=None", "train.output_dir=Nonesuch"])
    assert cfg.model.roi_heads.maskness_thresh is None and cfg.train.output_dir == "Nonesuch"
