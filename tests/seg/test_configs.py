"""Every paper value in the segmentation configs (EVA-02 paper Tables 34-36, docs/reference.md §3; official
values §7)."""
import ast

import pytest
from mmengine.config import Config


def load(repo, name):
    return Config.fromfile(str(repo / "configs" / name))


def schedule(cfg):
    """(warmup end, decay end, poly power) of the LinearLR + PolyLR schedule: the official curve, poly over the
    whole run with the linear warmup (ratio 1e-6) overlapping it as a multiplier."""
    warmup, poly = cfg.param_scheduler
    assert warmup.type == "LinearLR" and poly.type == "PolyLR" and poly.eta_min == 0.0
    assert (warmup.begin, warmup.start_factor, poly.begin) == (0, 1e-6, 0)
    return warmup.end - 1, poly.end - 1, poly.power  # mmengine reaches the final value at end - 1


def common(cfg, arch, crop, lr, lrd, total_batch, iters, drop_path, gpus=8):
    bb = cfg.model.backbone
    assert bb.type == "EVA02" and bb.arch == arch and bb.patch_size == 16 and bb.img_size == crop
    assert bb.window_size == 0  # global attention in every block
    assert bb.rescales == (4, 2, 1, 0.5)
    assert bb.drop_path_rate == drop_path
    assert cfg.model.data_preprocessor.size == (crop, crop)
    opt = cfg.optim_wrapper
    assert opt.constructor == "LayerDecayOptimWrapperConstructor"
    assert opt.optimizer.type == "AdamW" and opt.optimizer.lr == lr and opt.optimizer.weight_decay == 0.05
    assert tuple(opt.optimizer.betas) == (0.9, 0.999)
    assert opt.paramwise_cfg.layer_decay_rate == lrd
    assert opt.paramwise_cfg.num_layers == {"eva02_B": 12, "eva02_L": 24}[arch]
    assert cfg.train_dataloader.batch_size * gpus == total_batch == cfg.auto_scale_lr.base_batch_size
    assert cfg.train_cfg.max_iters == iters
    _, end, power = schedule(cfg)
    assert end == iters and power == 1.0  # linear decay to zero
    assert cfg.model.test_cfg.mode == "slide"
    assert cfg.model.test_cfg.crop_size == (crop, crop)
    assert cfg.model.test_cfg.stride == {512: (341, 341), 640: (426, 426)}[crop]
    ratios = [t.scale[1] / crop for t in cfg.tta_pipeline[1].transforms[0]]
    assert ratios == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    for t in cfg.tta_pipeline[1].transforms[0]:  # the official resize: short side max(crop r, crop), no long cap
        assert t.type == "ShortSideResize" and t.min_short_side == crop and t.scale[0] == 4 * t.scale[1]
    flips = [t.prob for t in cfg.tta_pipeline[1].transforms[1]]
    assert flips == [0.0, 1.0]
    crops = [t.crop_size for t in cfg.train_dataloader.dataset.pipeline if t.type == "RandomCrop"]
    assert crops == [(crop, crop)]
    assert "WeightsOnlyCheckpointHook" in [h.type for h in cfg.custom_hooks]


@pytest.mark.parametrize("name, arch, crop, lr, lrd, batch, iters, dp, head, out", [
    ("ade20k/upernet_eva02_B_512.py", "eva02_B", 512, 6e-5, 0.85, 32, 60000, 0.15, 768, (3, 5, 7, 11)),
    ("ade20k/upernet_eva02_L_512.py", "eva02_L", 512, 4e-5, 0.90, 16, 80000, 0.20, 1024, (7, 11, 15, 23)),
    ("ade20k/upernet_eva02_L_640.py", "eva02_L", 640, 4e-5, 0.90, 16, 80000, 0.20, 1536, (7, 11, 15, 23)),
])
def test_upernet_table34(repo, name, arch, crop, lr, lrd, batch, iters, dp, head, out):
    cfg = load(repo, name)
    common(cfg, arch, crop, lr, lrd, batch, iters, dp)
    width = {"eva02_B": 768, "eva02_L": 1024}[arch]
    assert cfg.model.backbone.out_indices == out
    dec, aux = cfg.model.decode_head, cfg.model.auxiliary_head
    assert dec.type == "UPerHead" and dec.channels == head and dec.in_channels == [width] * 4
    assert dec.num_classes == 150 and aux.num_classes == 150
    assert aux.type == "FCNHead" and aux.in_channels == width and aux.loss_decode.loss_weight == 0.4
    assert aux.channels == (1536 if crop == 640 else 256)  # official: the L+ auxiliary head is 1536 wide too
    assert cfg.train_dataloader.dataset.type == "CheckedADE20KDataset"
    assert schedule(cfg)[0] == 1500  # official warmup
    opt = cfg.optim_wrapper  # fp16 AMP as every published run; pos_embed / cls_token decayed as they were
    assert (opt.type, opt.dtype) == ("AmpOptimWrapper", "float16") and "no_decay_names" not in opt.paramwise_cfg
    assert cfg.model.backbone.get("with_cls_token", True)  # the official seg backbone keeps its cls token


@pytest.mark.parametrize("name, classes, batch, iters, dataset", [
    ("coco_stuff/mask2former_eva02_L_640.py", 171, 16, 120000, "CheckedCOCOStuffDataset"),  # Table 35
    ("ade20k/mask2former_eva02_L_640.py", 150, 64, 20000, "CheckedADE20KDataset"),  # Table 36
])
def test_mask2former_tables_35_36(repo, name, classes, batch, iters, dataset):
    cfg = load(repo, name)
    common(cfg, "eva02_L", 640, 2e-5, 0.9, batch, iters, 0.2)
    assert cfg.model.backbone.out_indices == (7, 11, 15, 23)
    head = cfg.model.decode_head
    assert head.type == "Mask2FormerHead" and head.num_classes == classes
    assert head.in_channels == [1024] * 4 and head.strides == [4, 8, 16, 32]
    assert head.feat_channels == head.out_channels == 1024  # head dim 1024
    assert head.pixel_decoder.encoder.num_layers == 6
    assert head.pixel_decoder.encoder.layer_cfg.self_attn_cfg.embed_dims == 1024
    assert head.transformer_decoder.num_layers == 9
    assert head.transformer_decoder.layer_cfg.self_attn_cfg.embed_dims == 1024
    assert len(head.loss_cls.class_weight) == classes + 1
    assert cfg.model.type == "CropAwareEncoderDecoder"
    assert cfg.train_dataloader.dataset.type == dataset == cfg.test_dataloader.dataset.type


def test_ade_mask2former_starts_from_coco_stuff(repo):
    ade = load(repo, "ade20k/mask2former_eva02_L_640.py")
    assert "load_from" in ade  # Table 36: initialized from the COCO-Stuff model (user sets the path)
    reduce = [t.get("reduce_zero_label") for t in ade.train_dataloader.dataset.pipeline if t.type == "LoadAnnotations"]
    assert reduce == [True]


def test_data_roots_come_from_environment(repo, monkeypatch, tmp_path):
    monkeypatch.setenv("ADE20K_ROOT", str(tmp_path / "ade"))
    monkeypatch.setenv("COCO_STUFF_ROOT", str(tmp_path / "cs"))
    assert load(repo, "ade20k/upernet_eva02_L_512.py").train_dataloader.dataset.data_root == str(tmp_path / "ade")
    assert load(repo, "coco_stuff/mask2former_eva02_L_640.py").val_dataloader.dataset.data_root == str(tmp_path / "cs")


def test_warmup_and_poly_multiply_as_the_official_curve(repo):
    """The B 512 schedule built by mmengine, stepped, against the official closed form (mmcv 1.x poly with linear
    warmup): lr(t) = base (1 - t / T) (1e-6 + (1 - 1e-6) t / 1500) while t < 1500, base (1 - t / T) after."""
    import torch
    from mmengine.registry import PARAM_SCHEDULERS

    cfg = load(repo, "ade20k/upernet_eva02_B_512.py")
    base, total = cfg.optim_wrapper.optimizer.lr, cfg.max_iters
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    schedulers = [PARAM_SCHEDULERS.build({**s, "optimizer": optimizer}) for s in cfg.param_scheduler]
    checks = {0, 1, 750, 1499, 1500, 1501, 30000, total - 1, total}
    for t in range(max(checks) + 1):
        if t in checks:
            warm = 1e-6 + (1 - 1e-6) * t / 1500 if t < 1500 else 1.0
            assert optimizer.param_groups[0]["lr"] == pytest.approx(base * (1 - t / total) * warm, rel=1e-6, abs=1e-15), t
        optimizer.step()
        for s in schedulers:
            s.step()
    assert base * (1 - 1500 / total) == pytest.approx(0.975 * base)  # the reference's check point


@pytest.mark.parametrize("name", [
    "ade20k/upernet_eva02_B_512.py", "ade20k/upernet_eva02_L_512.py", "ade20k/upernet_eva02_L_640.py",
    "coco_stuff/mask2former_eva02_L_640.py", "ade20k/mask2former_eva02_L_640.py", "demo/eva02_Ti_seg.py",
])
def test_configs_build_on_base_pieces_only(repo, name):
    """mmseg's layout: each config lists configs/_base_ pieces (model, dataset, runtime, schedule) and states its own
    values; no config is the base of another, so editing one table's config leaves the others alone."""
    tree = ast.parse((repo / "configs" / name).read_text())
    bases = next(ast.literal_eval(n.value) for n in tree.body
                 if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "_base_")
    assert [b.split("/")[2] for b in bases] == ["models", "datasets", "default_runtime.py", "schedules"]
    assert all(b.startswith("../_base_/") and (repo / "configs" / name).parent.joinpath(b).is_file() for b in bases)


@pytest.mark.parametrize("override, closest", [
    ("train_cfg.max_iter=5", "train_cfg.max_iters"),
    ("model.backbone.pretraned=x.pt", "model.backbone.pretrained"),
    ("model.decode_head.num_clases=3", "model.decode_head.num_classes"),
])
def test_an_override_key_the_config_lacks_is_an_error_naming_the_closest(repo, override, closest):
    from eva02.common.cli import UsageError
    from eva02.seg.run import load_config

    with pytest.raises(UsageError, match=f"override {override.split('=')[0]}: the config has no key.*"
                                         f"did you mean {closest}"):
        load_config(str(repo / "configs/ade20k/upernet_eva02_B_512.py"), None, [override])


def test_an_override_may_set_an_argument_of_the_registered_class_or_the_runner(repo):
    """mmengine would add any key; new keys pass when the registered class the dict builds takes them (through
    **kwargs to its base: EVA02 -> TrV's attn_impl), or, at the top, when mmengine's Runner does."""
    from eva02.seg.run import load_config

    cfg = Config.fromfile(str(repo / "configs/ade20k/upernet_eva02_B_512.py"))
    assert "attn_impl" not in cfg.model.backbone and "amsgrad" not in cfg.optim_wrapper.optimizer
    assert "randomness" not in cfg or "seed" not in cfg.randomness
    cfg = load_config(str(repo / "configs/ade20k/upernet_eva02_B_512.py"), None,
                      ["model.backbone.attn_impl=math", "optim_wrapper.optimizer.amsgrad=True", "randomness.seed=3",
                       "train_dataloader.dataset.pipeline.2.scale=(256,256)"])
    assert cfg.model.backbone.attn_impl == "math" and cfg.optim_wrapper.optimizer.amsgrad is True
    assert cfg.randomness.seed == 3 and cfg.train_dataloader.dataset.pipeline[2].scale == (256, 256)
