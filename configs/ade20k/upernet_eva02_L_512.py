# EVA-02-L + UperNet on ADE20K, 512 crops (paper Table 34; published 59.8 mIoU single-scale, 60.4 multi-scale).
# Pretrained TrV: model.backbone.pretrained=PATH (e.g. eva02_L_pt_m38m_p14to16.pt); 8 GPUs x 2 images.
_base_ = [
    "../_base_/models/upernet_eva02.py", "../_base_/datasets/ade20k.py",
    "../_base_/default_runtime.py", "../_base_/schedules/layer_decay_poly.py",
]

crop_size = (512, 512)  # Table 34
embed_dim = 1024  # EVA-02-L width (Table 5)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch="eva02_L",
        img_size=crop_size[0],
        out_indices=(7, 11, 15, 23),  # official EVA-02 seg (L)
        drop_path_rate=0.2,  # Table 34
    ),
    decode_head=dict(in_channels=[embed_dim] * 4, channels=1024),  # Table 34: head dim 1024
    auxiliary_head=dict(in_channels=embed_dim),
    test_cfg=dict(mode="slide", crop_size=crop_size, stride=(341, 341)),  # slide stride 341 for 512 (official)
)

# Batch 16 in total (Table 34) = 8 GPUs x 2.
train_dataloader = dict(batch_size=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)  # Table 34

optim_wrapper = dict(
    type="AmpOptimWrapper", dtype="float16", loss_scale="dynamic",  # fp16 AMP, as the published runs
    optimizer=dict(lr=4e-5),  # Table 34
    paramwise_cfg=dict(num_layers=24, layer_decay_rate=0.9),  # Table 34: layer decay 0.9
)
max_iters = 80000  # Table 34
# Table 34: poly (power 1) to zero over the whole run, the warmup a multiplier on top (schedule base).
param_scheduler = [_base_.param_scheduler[0], dict(_base_.param_scheduler[1], end=max_iters + 1)]
train_cfg = dict(max_iters=max_iters)
