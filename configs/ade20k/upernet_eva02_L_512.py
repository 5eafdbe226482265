# EVA-02-L + UperNet on ADE20K, 512 crops (paper Table 34; published 59.8 mIoU single-scale, 60.4 multi-scale).
# Pretrained TrV: model.backbone.pretrained=PATH (e.g. eva02_L_pt_m38m_p14to16.pt); 8 GPUs x 2 images.
_base_ = ["./upernet_eva02_B_512.py"]

crop_size = (512, 512)  # Table 34
embed_dim = 1024  # EVA-02-L width (Table 5)

model = dict(
    backbone=dict(
        arch="eva02_L",
        img_size=crop_size[0],
        out_indices=(7, 11, 15, 23),  # official EVA-02 seg (L)
        drop_path_rate=0.2,  # Table 34
    ),
    decode_head=dict(in_channels=[embed_dim] * 4, channels=1024),  # Table 34: head dim 1024
    auxiliary_head=dict(in_channels=embed_dim),
)

# Batch 16 in total (Table 34) = 8 GPUs x 2.
train_dataloader = dict(batch_size=2)
auto_scale_lr = dict(base_batch_size=16)  # Table 34

optim_wrapper = dict(
    optimizer=dict(lr=4e-5),  # Table 34
    paramwise_cfg=dict(num_layers=24, layer_decay_rate=0.9),  # Table 34: layer decay 0.9
)
max_iters = 80000  # Table 34
warmup_iters = 1500  # official EVA-02 seg recipe; not in the paper
param_scheduler = [  # Table 34: poly over the whole run, warmup as a multiplier (see upernet_eva02_B_512.py)
    # end + 1: mmengine's schedulers reach their final value one step before `end`
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=warmup_iters + 1),
    dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=max_iters + 1),
]
train_cfg = dict(max_iters=max_iters)
