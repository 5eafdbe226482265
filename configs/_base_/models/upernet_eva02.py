# EVA-02 + UperNet as the official EVA-02 seg code: UperNet on the 4-level pyramid, an FCN auxiliary head on level
# 2. EVA-02-B sizes and ADE20K's 150 classes, as mmseg's model bases carry one size; a config of another size
# sets arch, out_indices, embed_dim and the heads' in_channels.
_base_ = ["./eva02_backbone.py"]

embed_dim = 768  # EVA-02-B width (Table 5)
num_classes = 150

model = dict(
    backbone=dict(arch="eva02_B", out_indices=(3, 5, 7, 11)),  # official EVA-02 seg (B)
    decode_head=dict(
        type="UPerHead",
        in_channels=[embed_dim] * 4,
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=_base_.norm_cfg,
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
        norm_cfg=_base_.norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4),
    ),
)
