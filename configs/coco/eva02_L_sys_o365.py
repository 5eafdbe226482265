"""EVA-02-L Cascade Mask R-CNN, COCO, initialized from the Objects365 detector (paper Table 32).
Published: 64.1 box / 55.4 mask val, 64.5 / 55.8 test-dev. Init: the configs/o365/eva02_L.py weights
(train.init_checkpoint=PATH; its box heads load, the mask head starts fresh)."""
from eva02.det.config import constant_schedule, set_input_size

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
optimizer.weight_decay = 0.1  # Table 32
dataloader.train.total_batch_size = 64  # Table 32
train.max_iter = 40000  # Table 32
lr_multiplier = constant_schedule(max_iter=40000, warmup_iters=1000)  # Table 32: constant lr
train.model_ema.update(enabled=True, decay=0.9999, use_for_eval=True)  # Table 32: EMA 0.9999
for _predictor in model.roi_heads.box_predictors:
    _predictor.update(test_score_thresh=0.0, test_nms_thresh=0.6, test_topk_per_image=100)  # Table 32
# Table 32: linear soft-NMS (IoU 0.6 above), maskness 0.5 for mask AP. Maskness rescores the one
# score field, so box AP as published comes from a run with model.roi_heads.maskness_thresh=None (README).
model.roi_heads.update(nms_method="soft_linear", maskness_thresh=0.5)
train.amp.update(enabled=True, precision="float16")  # Table 32: fp16
