"""EVA-02-L Cascade Mask R-CNN, LVIS v1, initialized from the Objects365 detector (paper Table 33).
Published val: 65.2 box / 57.3 mask. Init: the configs/o365/eva02_L.py weights (train.init_checkpoint=PATH)."""
from eva02.det.config import constant_schedule, set_input_size

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
optimizer.weight_decay = 0.1  # Table 33
dataloader.train.total_batch_size = 64  # Table 33
train.max_iter = 70000  # Table 33
lr_multiplier = constant_schedule(max_iter=70000, warmup_iters=1000)  # Table 33: constant lr
train.model_ema.update(enabled=True, decay=0.9999, use_for_eval=True)  # Table 33: EMA 0.9999
for _predictor in model.roi_heads.box_predictors:
    _predictor.update(test_score_thresh=0.02, test_nms_thresh=0.6, test_topk_per_image=1000)  # Table 33
dataloader.evaluator.max_dets_per_image = 1000  # Table 33: 1000 dets
# Table 33: linear soft-NMS (IoU 0.6 above), maskness 0.5 for mask AP. Maskness rescores the one
# score field, so box AP as published comes from a run with model.roi_heads.maskness_thresh=None (README).
model.roi_heads.update(nms_method="soft_linear", maskness_thresh=0.5)
train.amp.update(enabled=True, precision="float16")  # Table 33: fp16
