# EVA-02-L + UperNet on ADE20K, 640 crops ("L+" in paper Table 34; published 60.1 mIoU single-scale).
# Same recipe as upernet_eva02_L_512.py with 640 crops, 1536-wide decode and auxiliary heads (official
# upernetpro_eva02_large_24_640_slide_80k.py) and a 426-pixel slide stride.
_base_ = ["./upernet_eva02_L_512.py"]

crop_size = (640, 640)  # Table 34 (L+)

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(img_size=crop_size[0]),
    decode_head=dict(channels=1536),  # Table 34 (L+): head dim 1536
    auxiliary_head=dict(channels=1536),  # official L+ config: the auxiliary FCN head is 1536 wide too
    test_cfg=dict(mode="slide", crop_size=crop_size, stride=(426, 426)),  # slide stride 426 for 640 (official)
)

# mmseg's 640 ADE20K pipelines: resize to (2560, 640) scale, 640 crops.
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", reduce_zero_label=True),
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
tta_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(
        type="TestTimeAug",
        transforms=[
            [dict(type="ShortSideResize", scale=(int(2560 * r), int(640 * r)), min_short_side=crop_size[0])
             for r in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)],  # official ms ratios and resize rule at 640
            [dict(type="RandomFlip", prob=0.0, direction="horizontal"),
             dict(type="RandomFlip", prob=1.0, direction="horizontal")],
            [dict(type="LoadAnnotations")],
            [dict(type="PackSegInputs")],
        ],
    ),
]
