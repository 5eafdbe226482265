"""EVA-02-L Cascade Mask R-CNN, COCO, baseline settings (paper Table 28). Published val: 59.2 box / 50.8 mask AP.
Init: the MIM checkpoint `eva02_L_pt_m38m_p14to16.pt` (set train.init_checkpoint=PATH)."""
from eva02.det.config import set_input_size, step_schedule

from ..common.eva02_cascade_mask_rcnn import dataloader, model, optimizer, train

model.backbone.net.update(
    arch="eva02_L",
    window_size=16,  # Table 28
    global_blocks=(5, 11, 17, 23),  # Table 28: 4 global blocks (official indexes)
    drop_path_rate=0.4,  # Table 28
)
set_input_size(model, dataloader, 1024)  # Table 28: LSJ crop 1024 (RoPE grid 64)
optimizer.lr = 6e-5  # Table 28
optimizer.params.lr_decay_rate = 0.8  # Table 28
dataloader.train.total_batch_size = 144  # Table 28
train.max_iter = 60000  # Table 28
lr_multiplier = step_schedule(max_iter=60000, milestones=(48000, 54000), warmup_iters=1000)  # Table 28
