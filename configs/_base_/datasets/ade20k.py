# ADE20K at 512 crops: mmseg's dataset config with EVA-02's checked dataset and multi-scale test rule.
# Data: ADEChallengeData2016 in mmseg's layout under $ADE20K_ROOT (default data/ade/ADEChallengeData2016).
_base_ = ["mmseg::_base_/datasets/ade20k.py"]

data_root = "{{$ADE20K_ROOT:data/ade/ADEChallengeData2016}}"
train_dataloader = dict(dataset=dict(type="CheckedADE20KDataset", data_root=data_root))
# check_images: unreadable validation images are reported and skipped instead of stopping the evaluation.
val_dataloader = dict(dataset=dict(type="CheckedADE20KDataset", data_root=data_root, check_images=True))
test_dataloader = val_dataloader
# Multi-scale + flip evaluation (tools/test_seg.py --ms-flip): the test scale times img_ratios (0.5-1.75) with
# the official resize rule (short side max(512 r, 512), long side uncapped; eva02.seg.ShortSideResize).
tta_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="TestTimeAug", transforms=[
        [dict(type="ShortSideResize", scale=(int(2048 * r), int(512 * r)), min_short_side=512)
         for r in _base_.img_ratios],
        *_base_.tta_pipeline[1].transforms[1:],  # mmseg's flips, annotation loading and packing
    ]),
]
