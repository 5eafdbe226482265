# ADE20K at 640 crops: mmseg's 640 pipelines (scale (2560, 640)) on ade20k.py.
_base_ = ["./ade20k.py"]

crop_size = (640, 640)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", reduce_zero_label=True),  # ADE label 0 = other
    dict(type="RandomResize", scale=(2560, 640), ratio_range=(0.5, 2.0), keep_ratio=True),
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
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
tta_pipeline = [  # the official ms ratios and resize rule (ade20k.py) at 640
    dict(type="LoadImageFromFile"),
    dict(type="TestTimeAug", transforms=[
        [dict(type="ShortSideResize", scale=(int(2560 * r), int(640 * r)), min_short_side=crop_size[0])
         for r in _base_.img_ratios],
        *_base_.tta_pipeline[1].transforms[1:],  # flips, annotation loading, packing
    ]),
]
