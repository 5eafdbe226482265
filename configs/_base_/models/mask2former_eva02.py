# EVA-02-L + Mask2Former (paper Tables 35-36). The official release has no EVA-02 Mask2Former; this is mmseg's
# Mask2FormerHead (mmdet pixel decoder) on the same 4-level pyramid as UperNet, with the head widths of the paper.
# ADE20K's 150 classes, as mmseg's model bases; a config for another dataset sets num_classes and loss_cls.
_base_ = ["./eva02_backbone.py"]

embed_dim = 1024  # EVA-02-L width (Table 5)
num_classes = 150
head_dim = 1024  # Tables 35-36: head dim 1024 (pixel decoder, queries, transformer decoder)
head_heads = 32  # head_dim / 32 = 32 dims per attention head, as EVA-01's Mask2Former

model = dict(
    type="CropAwareEncoderDecoder",  # slide inference that works with Mask2FormerHead (eva02.seg.segmentor)
    backbone=dict(
        arch="eva02_L",
        out_indices=(7, 11, 15, 23),  # official EVA-02 seg (L)
        drop_path_rate=0.2,  # Tables 35-36
        use_checkpoint=True,  # activation checkpointing: L at 640 with a 1024-wide Mask2Former
    ),
    decode_head=dict(
        type="Mask2FormerHead",
        in_channels=[embed_dim] * 4,
        strides=[4, 8, 16, 32],
        feat_channels=head_dim,
        out_channels=head_dim,
        num_classes=num_classes,
        num_queries=100,
        num_transformer_feat_level=3,
        align_corners=False,
        pixel_decoder=dict(
            type="mmdet.MSDeformAttnPixelDecoder",
            num_outs=3,
            norm_cfg=dict(type="GN", num_groups=32),
            act_cfg=dict(type="ReLU"),
            encoder=dict(
                num_layers=6,  # Tables 35-36: 6 pixel-decoder encoder layers
                layer_cfg=dict(
                    self_attn_cfg=dict(
                        embed_dims=head_dim, num_heads=head_heads, num_levels=3, num_points=4, im2col_step=64,
                        dropout=0.0, batch_first=True, norm_cfg=None, init_cfg=None),
                    ffn_cfg=dict(
                        embed_dims=head_dim, feedforward_channels=4 * head_dim, num_fcs=2, ffn_drop=0.0,
                        act_cfg=dict(type="ReLU", inplace=True)),
                ),
                init_cfg=None,
            ),
            positional_encoding=dict(num_feats=head_dim // 2, normalize=True),
            init_cfg=None,
        ),
        enforce_decoder_input_project=False,
        positional_encoding=dict(num_feats=head_dim // 2, normalize=True),
        transformer_decoder=dict(
            return_intermediate=True,
            num_layers=9,  # Tables 35-36: 9 transformer decoder layers
            layer_cfg=dict(
                self_attn_cfg=dict(
                    embed_dims=head_dim, num_heads=head_heads, attn_drop=0.0, proj_drop=0.0, dropout_layer=None,
                    batch_first=True),
                cross_attn_cfg=dict(
                    embed_dims=head_dim, num_heads=head_heads, attn_drop=0.0, proj_drop=0.0, dropout_layer=None,
                    batch_first=True),
                ffn_cfg=dict(
                    embed_dims=head_dim, feedforward_channels=4 * head_dim, num_fcs=2,
                    act_cfg=dict(type="ReLU", inplace=True), ffn_drop=0.0, dropout_layer=None, add_identity=True),
            ),
            init_cfg=None,
        ),
        # Mask2Former's own losses and matcher (mmseg defaults).
        loss_cls=dict(type="mmdet.CrossEntropyLoss", use_sigmoid=False, loss_weight=2.0, reduction="mean",
                      class_weight=[1.0] * num_classes + [0.1]),
        loss_mask=dict(type="mmdet.CrossEntropyLoss", use_sigmoid=True, reduction="mean", loss_weight=5.0),
        loss_dice=dict(type="mmdet.DiceLoss", use_sigmoid=True, activate=True, reduction="mean", naive_dice=True,
                       eps=1.0, loss_weight=5.0),
        train_cfg=dict(
            num_points=12544,
            oversample_ratio=3.0,
            importance_sample_ratio=0.75,
            assigner=dict(
                type="mmdet.HungarianAssigner",
                match_costs=[
                    dict(type="mmdet.ClassificationCost", weight=2.0),
                    dict(type="mmdet.CrossEntropyLossCost", weight=5.0, use_sigmoid=True),
                    dict(type="mmdet.DiceCost", weight=5.0, pred_act=True, eps=1.0),
                ],
            ),
            sampler=dict(type="mmdet.MaskPseudoSampler"),
        ),
    ),
)
