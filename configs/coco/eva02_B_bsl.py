"""EVA-02-B Cascade Mask R-CNN, COCO, baseline settings (paper Table 28). Published val: 55.5 box / 47.1 mask AP.
Init: the MIM checkpoint `eva02_B_pt_in21k_p14to16.pt` (set train.init_checkpoint=PATH)."""
from eva02.det.config import set_input_size, step_schedule

from ..common.eva02_cascade_mask_rcnn import dataloader, model, optimizer, train

model.backbone.net.update(
    arch="eva02_B",
    window_size=16,  # Table 28
    global_blocks=(2, 5, 8, 11),  # Table 28: 4 global blocks (official indexes)
    drop_path_rate=0.1,  # Table 28
)
set_input_size(model, dataloader, 1024)  # Table 28: LSJ crop 1024 (RoPE grid 64)
optimizer.lr = 5e-5  # Table 28
optimizer.params.lr_decay_rate = 0.7  # Table 28
train.max_iter = 60000  # Table 28
lr_multiplier = step_schedule(max_iter=60000, milestones=(48000, 54000), warmup_iters=1000)  # Table 28
