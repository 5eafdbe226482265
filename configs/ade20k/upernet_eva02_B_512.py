# EVA-02-B + UperNet on ADE20K, 512 crops (paper Table 34; published 55.3 mIoU single-scale, per the official
# README and evaluation log).
# Data: ADEChallengeData2016 in mmseg's layout under $ADE20K_ROOT (default data/ade/ADEChallengeData2016).
# Pretrained TrV: any layout eva02.backbone.load_checkpoint reads; set model.backbone.pretrained=PATH
# (e.g. eva02_B_pt_in21k_p14to16.pt), 8 GPUs x 4 images.
_base_ = ["mmseg::_base_/datasets/ade20k.py", "mmseg::_base_/default_runtime.py"]
custom_imports = dict(imports=["eva02.seg"], allow_failed_imports=False)

data_root = "{{$ADE20K_ROOT:data/ade/ADEChallengeData2016}}"
crop_size = (512, 512)  # Table 34
num_classes = 150
embed_dim = 768  # EVA-02-B width (Table 5)
norm_cfg = dict(type="SyncBN", requires_grad=True)  # official; mmengine turns it into BN without DDP

model = dict(
    type="EncoderDecoder",
    data_preprocessor=dict(
        type="SegDataPreProcessor",
        mean=[123.675, 116.28, 103.53],  # ImageNet mean/std on the 0-255 scale (official seg)
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
        size=crop_size,
        # Test images are padded bottom/right to a multiple of the patch size (the TrV needs whole patches);
        # the padding is cropped off the logits again before resizing to the original image.
        test_cfg=dict(size_divisor=16),
    ),
    backbone=dict(
        type="EVA02",
        arch="eva02_B",
        img_size=crop_size[0],
        patch_size=16,  # Table 34: patch 16 (p14 weights resized on load)
        out_indices=(3, 5, 7, 11),  # official EVA-02 seg (B)
        rescales=(4, 2, 1, 0.5),
        norm_cfg=norm_cfg,
        window_size=0,  # global attention in every block (official)
        drop_path_rate=0.15,  # Table 34
        use_checkpoint=False,
        pretrained=None,
    ),
    decode_head=dict(
        type="UPerHead",
        in_channels=[embed_dim] * 4,
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=768,  # Table 34: head dim 768
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    ),
    auxiliary_head=dict(
        type="FCNHead",
        in_channels=embed_dim,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode="slide", crop_size=crop_size, stride=(341, 341)),  # slide stride 341 for 512 (official)
)

# Batch 32 in total (Table 34) = 8 GPUs x 4.
train_dataloader = dict(
    batch_size=4,
    num_workers=4,
    dataset=dict(type="CheckedADE20KDataset", data_root=data_root),
)
# check_images: unreadable validation images are reported and skipped instead of stopping the evaluation.
val_dataloader = dict(dataset=dict(type="CheckedADE20KDataset", data_root=data_root, check_images=True))
test_dataloader = val_dataloader
# Multi-scale + flip evaluation (tools/test_seg.py --ms-flip): the test scale times 0.5-1.75 with the official
# resize rule (short side max(512 r, 512), long side uncapped; eva02.seg.ShortSideResize).
tta_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(
        type="TestTimeAug",
        transforms=[
            [dict(type="ShortSideResize", scale=(int(2048 * r), int(512 * r)), min_short_side=crop_size[0])
             for r in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)],
            [dict(type="RandomFlip", prob=0.0, direction="horizontal"),
             dict(type="RandomFlip", prob=1.0, direction="horizontal")],
            [dict(type="LoadAnnotations")],
            [dict(type="PackSegInputs")],
        ],
    ),
]
auto_scale_lr = dict(enable=False, base_batch_size=32)  # Table 34

optim_wrapper = dict(
    # fp16 AMP, as every published run (apex O1); tools/train_seg.py trains in fp32 where no GPU exists.
    type="AmpOptimWrapper",
    dtype="float16",
    loss_scale="dynamic",
    optimizer=dict(type="AdamW", lr=6e-5, betas=(0.9, 0.999), weight_decay=0.05),  # Table 34: lr, AdamW, wd
    constructor="LayerDecayOptimWrapperConstructor",
    # Table 34: layer decay 0.85. Weight decay spares 1-D parameters and biases only: pos_embed and cls_token are
    # decayed, as in the published runs; no_decay_names=("pos_embed", "cls_token") exempts them too.
    paramwise_cfg=dict(num_layers=12, layer_decay_rate=0.85),
)
max_iters = 60000  # Table 34
warmup_iters = 1500  # official EVA-02 seg recipe (BEiT's); the paper gives no warmup length
# Table 34: linear decay (poly, power 1) to zero over the whole run, with the official linear warmup (ratio 1e-6)
# as a multiplier on top: mmengine multiplies overlapping schedulers, so lr(t) = base (1 - t / T) w(t).
param_scheduler = [
    # end + 1: mmengine's schedulers reach their final value one step before `end`
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=warmup_iters + 1),
    dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=max_iters + 1),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=4000)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
custom_hooks = [dict(type="WeightsOnlyCheckpointHook")]  # checkpoints loadable with weights_only=True
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=4000, max_keep_ckpts=3, save_best="mIoU"),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="SegVisualizationHook"),
)
