# The EVA-02 TrV as a segmentation encoder, shared by upernet_eva02.py and mask2former_eva02.py: global attention,
# the features of four blocks (out_indices, per size) rescaled into the official 4-level pyramid (fpn1..fpn4).
# The config sets its crop in data_preprocessor.size, backbone.img_size and model.test_cfg.
norm_cfg = dict(type="SyncBN", requires_grad=True)  # official (pyramid x4 branch); BN without DDP (mmengine)

model = dict(
    type="EncoderDecoder",
    data_preprocessor=dict(
        type="SegDataPreProcessor",
        mean=[123.675, 116.28, 103.53],  # ImageNet mean/std on the 0-255 scale (official seg)
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
        # Test images are padded bottom/right to a multiple of the patch size (the TrV needs whole patches);
        # the padding is cropped off the logits again before resizing to the original image.
        test_cfg=dict(size_divisor=16),
    ),
    backbone=dict(
        type="EVA02",
        patch_size=16,  # Tables 34-36: patch 16 (p14 weights resized on load)
        rescales=(4, 2, 1, 0.5),
        norm_cfg=norm_cfg,
        window_size=0,  # global attention in every block (official)
        use_checkpoint=False,
        compile_blocks=False,  # torch.compile every block (docs/benchmarks.md: bench/compile.py)
        pretrained=None,
    ),
    train_cfg=dict(),
)
