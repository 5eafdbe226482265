# Segmentation demo: EVA-02-Ti + UperNet on a generated shapes dataset (ADE layout, reduce_zero_label), a few
# minutes on 2 CPU cores. The data is written under $SHAPES_ROOT on first use. `make demo` starts the TrV from the
# backbone the detection demo has just trained (one TrV across frameworks; its cls token starts at its init):
#   .venv/bin/python tools/train_seg.py --config-file configs/demo/eva02_Ti_seg.py --output output/demo/seg \
#       model.backbone.pretrained=output/demo_det/model_final.pth
#   .venv/bin/python tools/infer_seg.py --config-file configs/demo/eva02_Ti_seg.py \
#       --weights $(cat output/demo/seg/last_checkpoint) \
#       --input output/demo/shapes_data/images/validation --output output/demo/seg/predictions
# Without the override the TrV starts from scratch (the earlier from-scratch demo reached 60.6 mIoU, triangles 0).
# Same model code and optimizer constructor as the paper configs; only sizes and schedule are demo-sized.
# Measured 2026-12-03 (2 cores, seed 0, from the detection demo): 93.9 mIoU on the 50 validation images, every class
# IoU >= 89 (tests/test_demo.py asserts >= 85 and >= 70), 320 iterations in about 2.5 minutes on an idle machine.
_base_ = [
    "../_base_/models/upernet_eva02.py", "../_base_/datasets/ade20k.py",
    "../_base_/default_runtime.py", "../_base_/schedules/layer_decay_poly.py",
]

custom_imports = dict(imports=["eva02.seg", "eva02.seg.demo"], allow_failed_imports=False)  # + ShapesDataset
data_root = "{{$SHAPES_ROOT:output/demo/shapes_data}}"
image_size = 128
crop_size = (image_size, image_size)
num_classes = 5  # eva02.seg.demo.SHAPES_CLASSES: background + the 4 shapes of eva02.common.shapes
embed_dim = 192  # EVA-02-Ti width (Table 5)
norm_cfg = dict(type="BN", requires_grad=True)  # CPU: no SyncBN
generate = dict(num_train=400, num_val=50, size=image_size, seed=0)

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch="eva02_Ti",
        img_size=image_size,  # out_indices (3, 5, 7, 11): the base's, Ti has 12 blocks as B
        norm_cfg=norm_cfg,
        drop_path_rate=0.0,
    ),
    # 128 / 64 head channels (and lr 6e-4): at 64 / 32 and lr 1.5e-3 the head's features on the smallest class
    # (triangles) collapsed to zero, its logits stayed at the biases and it was never predicted (IoU 0)
    decode_head=dict(in_channels=[embed_dim] * 4, channels=128, num_classes=num_classes, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=embed_dim, channels=64, num_classes=num_classes, norm_cfg=norm_cfg),
    test_cfg=dict(mode="whole"),
)

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", reduce_zero_label=True),
    dict(type="RandomResize", scale=crop_size, ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", reduce_zero_label=True),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(
        _delete_=True,
        type="ShapesDataset",
        data_root=data_root,
        generate=generate,
        data_prefix=dict(img_path="images/training", seg_map_path="annotations/training"),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=5,  # all images have one size, so they batch
    num_workers=1,
    persistent_workers=True,
    dataset=dict(
        _delete_=True,
        type="ShapesDataset",
        data_root=data_root,
        generate=generate,
        data_prefix=dict(img_path="images/validation", seg_map_path="annotations/validation"),
        pipeline=test_pipeline,
        check_images=True,
    ),
)
test_dataloader = val_dataloader
tta_pipeline = [  # mmseg's multi-scale + flip test (plain rescaling: the shapes are all 128 x 128)
    dict(type="LoadImageFromFile"),
    dict(type="TestTimeAug", transforms=[
        [dict(type="Resize", scale_factor=r, keep_ratio=True) for r in _base_.img_ratios],
        *_base_.tta_pipeline[1].transforms[1:],  # flips, annotation loading, packing
    ]),
]
auto_scale_lr = dict(enable=False, base_batch_size=8)

# A higher lr than the paper's (heads from scratch, a backbone trained for a few minutes) and a mild layer decay.
# The paper configs' fp16 AMP wrapper; tools/train_seg.py trains in fp32 where no GPU exists.
optim_wrapper = dict(
    type="AmpOptimWrapper", dtype="float16", loss_scale="dynamic",
    optimizer=dict(lr=6e-4),
    paramwise_cfg=dict(num_layers=12, layer_decay_rate=0.95),
)
max_iters = 320
warmup_iters = 20
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=warmup_iters),
    dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=warmup_iters, end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters // 2)  # halfway and at the end: mIoU curve, panels
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=160, max_keep_ckpts=2, save_best="mIoU"),
)
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)
