# EVA-02-L + UperNet on ADE20K, 640 crops ("L+" in paper Table 34; published 60.1 mIoU single-scale).
# The recipe of upernet_eva02_L_512.py with 640 crops, 1536-wide decode and auxiliary heads (official
# upernetpro_eva02_large_24_640_slide_80k.py) and a 426-pixel slide stride.
# Pretrained TrV: model.backbone.pretrained=PATH (e.g. eva02_L_pt_m38m_p14to16.pt); 8 GPUs x 2 images.
_base_ = [
    "../_base_/models/upernet_eva02.py", "../_base_/datasets/ade20k_640x640.py",
    "../_base_/default_runtime.py", "../_base_/schedules/layer_decay_poly.py",
]

crop_size = (640, 640)  # Table 34 (L+)
embed_dim = 1024  # EVA-02-L width (Table 5)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch="eva02_L",
        img_size=crop_size[0],
        out_indices=(7, 11, 15, 23),  # official EVA-02 seg (L)
        drop_path_rate=0.2,  # Table 34 (L+)
    ),
    decode_head=dict(in_channels=[embed_dim] * 4, channels=1536),  # Table 34 (L+): head dim 1536
    # official L+ config: the auxiliary FCN head is 1536 wide too
    auxiliary_head=dict(in_channels=embed_dim, channels=1536),
    test_cfg=dict(mode="slide", crop_size=crop_size, stride=(426, 426)),  # slide stride 426 for 640 (official)
)

# Batch 16 in total (Table 34, L+) = 8 GPUs x 2.
train_dataloader = dict(batch_size=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)  # Table 34 (L+)

optim_wrapper = dict(
    type="AmpOptimWrapper", dtype="float16", loss_scale="dynamic",  # fp16 AMP, as the published runs
    optimizer=dict(lr=4e-5),  # Table 34 (L+)
    paramwise_cfg=dict(num_layers=24, layer_decay_rate=0.9),  # Table 34 (L+): layer decay 0.9
)
max_iters = 80000  # Table 34 (L+)
# Table 34: poly (power 1) to zero over the whole run, the warmup a multiplier on top (schedule base).
param_scheduler = [_base_.param_scheduler[0], dict(_base_.param_scheduler[1], end=max_iters + 1)]
train_cfg = dict(max_iters=max_iters)
