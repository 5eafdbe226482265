"""EVA-02-L Cascade Mask R-CNN, LVIS v1, baseline settings (paper Table 29). Published val: 55.3 box / 48.6 mask.
Init: the MIM (IN-21K) checkpoint `eva02_L_pt_in21k_p14to16.pt` (set train.init_checkpoint=PATH)."""
from eva02.det.config import set_input_size, step_schedule

from ..common.eva02_lvis import dataloader, model, optimizer, train

model.backbone.net.update(
    arch="eva02_L",
    window_size=16,  # Table 29
    global_blocks=(5, 11, 17, 23),  # Table 29: 4 global blocks (official indexes)
    drop_path_rate=0.4,  # Table 29
)
set_input_size(model, dataloader, 1024)  # Table 29: LSJ crop 1024 (RoPE grid 64)
optimizer.lr = 1e-4  # Table 29
optimizer.params.lr_decay_rate = 0.8  # Table 29
train.max_iter = 40000  # Table 29
lr_multiplier = step_schedule(max_iter=40000, milestones=(32000, 36000), warmup_iters=1000)  # 80% / 90%
