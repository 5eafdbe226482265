"""EVA-02-L Cascade Mask R-CNN, COCO, initialized from the Objects365 detector (paper Table 32).
Published: 64.1 box / 55.4 mask val, 64.5 / 55.8 test-dev, from two released checkpoints of this recipe:
`eva02_L_coco_det_sys_o365.pth` gives the box AP (64.1; its mask AP is 54.3) and `eva02_L_coco_seg_sys_o365.pth`
the mask AP (55.4; its box AP is 63.9). Evaluate both with their EMA weights (train.model_ema.use_for_eval).
Init: the configs/o365/eva02_L.py weights, released as `eva02_L_m38m_to_o365.pth` (train.init_checkpoint=PATH;
its box heads load, the mask head starts fresh)."""
from eva02.det.config import constant_schedule, set_input_size, sys_inference

from ..common.eva02_cascade_mask_rcnn import dataloader, model, optimizer, train

model.backbone.net.update(
    arch="eva02_L",
    window_size=16,  # Table 32
    global_blocks=(2, 5, 8, 11, 14, 17, 20, 23),  # Table 32: 8 global blocks (official indexes)
    drop_path_rate=0.3,  # Table 32
    use_checkpoint=True,  # 1536 crops: activation checkpointing (official)
)
set_input_size(model, dataloader, 1536)  # Table 32: LSJ crop 1536 (RoPE grid 96)
optimizer.lr = 4e-5  # Table 32
optimizer.params.lr_decay_rate = 0.8  # Table 32
dataloader.train.total_batch_size = 64  # Table 32
train.max_iter = 40000  # Table 32
lr_multiplier = constant_schedule(max_iter=40000, warmup_iters=400)  # Table 32: constant lr; official warmup 1%
train.model_ema.update(enabled=True, decay=0.9999, use_for_eval=True)  # Table 32: EMA 0.9999
# Table 32 inference; COCO box AP from a run with model.roi_heads.maskness_thresh=None (see sys_inference)
sys_inference(model, score_thresh=0.0, topk_per_image=100)
