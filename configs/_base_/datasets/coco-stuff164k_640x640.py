# COCO-Stuff-164K at 640 crops: mmseg's dataset config with EVA-02's checked dataset, EVA-01's Mask2Former jitter
# and the official multi-scale test rule of ade20k.py.
# Data: COCO-Stuff-164K in mmseg's layout under $COCO_STUFF_ROOT (default data/coco_stuff164k), labels made by
# mmseg's tools/dataset_converters/coco_stuff164k.py.
_base_ = ["mmseg::_base_/datasets/coco-stuff164k.py"]

data_root = "{{$COCO_STUFF_ROOT:data/coco_stuff164k}}"
crop_size = (640, 640)
# EVA-01's Mask2Former jitter: (2560, 640) x 0.5-2.0, keep ratio, 640 crops.
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="RandomResize", scale=(2560, 640), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(2560, 640), keep_ratio=True),
    dict(type="LoadAnnotations"),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(dataset=dict(type="CheckedCOCOStuffDataset", data_root=data_root, pipeline=train_pipeline))
# check_images: unreadable validation images are reported and skipped instead of stopping the evaluation.
val_dataloader = dict(dataset=dict(type="CheckedCOCOStuffDataset", data_root=data_root, pipeline=test_pipeline,
                                   check_images=True))
test_dataloader = val_dataloader
tta_pipeline = [  # the official ms ratios and resize rule (ade20k.py) at 640
    dict(type="LoadImageFromFile"),
    dict(type="TestTimeAug", transforms=[
        [dict(type="ShortSideResize", scale=(int(2560 * r), int(640 * r)), min_short_side=crop_size[0])
         for r in _base_.img_ratios],
        *_base_.tta_pipeline[1].transforms[1:],  # flips, annotation loading, packing
    ]),
]
