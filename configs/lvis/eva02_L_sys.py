"""EVA-02-L Cascade Mask R-CNN, LVIS v1, system-level settings (paper Table 31). Published val: 60.1 box / 53.5 mask.
Init: the MIM (IN-21K) checkpoint `eva02_L_pt_in21k_p14to16.pt` (set train.init_checkpoint=PATH)."""
from eva02.det.config import set_input_size, step_schedule, sys_inference

from ..common.eva02_lvis import dataloader, model, optimizer, train

model.backbone.net.update(
    arch="eva02_L",
    window_size=32,  # Table 31
    global_blocks=(2, 5, 8, 11, 14, 17, 20, 23),  # Table 31: 8 global blocks (official indexes)
    drop_path_rate=0.4,  # Table 31
    use_checkpoint=True,  # 1536 crops: activation checkpointing (official)
)
set_input_size(model, dataloader, 1536)  # Table 31: LSJ crop 1536 (RoPE grid 96)
optimizer.lr = 1e-4  # Table 31
optimizer.params.lr_decay_rate = 0.8  # Table 31
train.max_iter = 40000  # Table 31
lr_multiplier = step_schedule(max_iter=40000, milestones=(32000, 36000), warmup_iters=1000)  # Table 31
# Table 31 inference; LVIS box and mask AP from this one run (see sys_inference)
sys_inference(model, score_thresh=0.02, topk_per_image=300)
