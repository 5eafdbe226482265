# EVA-02-L + Mask2Former on ADE20K, 640 crops (paper Table 36; published 61.7 mIoU single-scale, 62.0 multi-scale),
# initialized from the COCO-Stuff model of ../coco_stuff/mask2former_eva02_L_640.py (Table 36).
# Set load_from=PATH to that model's checkpoint; its 171-class classifier does not fit 150 classes and is
# skipped by mmengine with a shape-mismatch warning, everything else is loaded.
# Data: ADEChallengeData2016 in mmseg's layout under $ADE20K_ROOT (default data/ade/ADEChallengeData2016).
_base_ = ["../coco_stuff/mask2former_eva02_L_640.py"]

data_root = "{{$ADE20K_ROOT:data/ade/ADEChallengeData2016}}"
crop_size = (640, 640)  # Table 36
num_classes = 150
load_from = None  # Table 36: the COCO-Stuff Mask2Former checkpoint

model = dict(
    decode_head=dict(
        num_classes=num_classes,
        loss_cls=dict(class_weight=[1.0] * num_classes + [0.1]),
    ),
)

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", reduce_zero_label=True),  # ADE label 0 = other
    dict(type="RandomResize", scale=(4 * crop_size[0], crop_size[0]), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(2560, 640), keep_ratio=True),
    dict(type="LoadAnnotations", reduce_zero_label=True),
    dict(type="PackSegInputs"),
]
ade_dataset = dict(
    _delete_=True,
    type="CheckedADE20KDataset",
    data_root=data_root,
)
# Batch 64 in total (Table 36) = 8 GPUs x 8.
train_dataloader = dict(
    batch_size=8,
    dataset=dict(**ade_dataset, data_prefix=dict(img_path="images/training", seg_map_path="annotations/training"),
                 pipeline=train_pipeline),
)
val_dataloader = dict(
    dataset=dict(**ade_dataset, data_prefix=dict(img_path="images/validation", seg_map_path="annotations/validation"),
                 pipeline=test_pipeline, check_images=True),
)
test_dataloader = val_dataloader
auto_scale_lr = dict(base_batch_size=64)  # Table 36

optim_wrapper = dict(
    optimizer=dict(lr=2e-5, weight_decay=0.05),  # Table 36
    paramwise_cfg=dict(num_layers=24, layer_decay_rate=0.9),  # Table 36
)
max_iters = 20000  # Table 36
warmup_iters = 500  # EVA-01's released 20k ADE20K Mask2Former fine-tune; not in the paper
param_scheduler = [  # Table 36: poly (power 1) over the whole run, the warmup a multiplier on top
    # end + 1: mmengine's schedulers reach their final value one step before `end`
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=warmup_iters + 1),
    dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=max_iters + 1),
]
train_cfg = dict(max_iters=max_iters, val_interval=2000)
default_hooks = dict(checkpoint=dict(interval=2000))
