"""EVA-02-L Cascade Mask R-CNN, LVIS v1, initialized from the Objects365 detector (paper Table 33).
Published val: 65.2 box / 57.3 mask (released `eva02_L_lvis_sys_o365.pth`, EMA weights). Init: the
configs/o365/eva02_L.py weights trained from the IN-21K MIM model, released as `eva02_L_in21k_to_o365.pth`
(train.init_checkpoint=PATH)."""
from eva02.det.config import constant_schedule, set_input_size, sys_inference

from ..common.eva02_lvis import dataloader, model, optimizer, train

model.backbone.net.update(
    arch="eva02_L",
    window_size=16,  # Table 33
    global_blocks=(2, 5, 8, 11, 14, 17, 20, 23),  # Table 33: 8 global blocks (official indexes)
    drop_path_rate=0.3,  # Table 33
    use_checkpoint=True,  # 1536 crops: activation checkpointing (official)
)
set_input_size(model, dataloader, 1536)  # Table 33: LSJ crop 1536 (RoPE grid 96)
optimizer.lr = 4e-5  # Table 33
optimizer.params.lr_decay_rate = 0.8  # Table 33
dataloader.train.total_batch_size = 64  # Table 33
train.max_iter = 70000  # Table 33
lr_multiplier = constant_schedule(max_iter=70000, warmup_iters=700)  # Table 33: constant lr; official warmup 1%
train.model_ema.update(enabled=True, decay=0.9999, use_for_eval=True)  # Table 33: EMA 0.9999
# Table 33 inference; LVIS box and mask AP from this one run (see sys_inference)
sys_inference(model, score_thresh=0.02, topk_per_image=1000)
dataloader.evaluator.max_dets_per_image = 1000  # Table 33: 1000 dets
