"""EVA-02-L Cascade R-CNN (boxes only), Objects365 v2 (paper Table 27): the intermediate detector whose weights
initialize the "sys o365" COCO / LVIS configs. Trains on Objects365 train + val, as the official run did.
Init: `eva02_L_pt_m38m_p14to16.pt` (released result `eva02_L_m38m_to_o365.pth`, for COCO) or
`eva02_L_pt_in21k_p14to16.pt` (released `eva02_L_in21k_to_o365.pth`, for LVIS) (train.init_checkpoint=PATH)."""
from detectron2.config import LazyCall as L
from detectron2.evaluation import COCOEvaluator

from eva02.det.config import set_input_size, step_schedule

from ..common.eva02_cascade_mask_rcnn import dataloader, model, optimizer, train

# Table 27: boxes only, 365 classes
for _key in ("mask_in_features", "mask_pooler", "mask_head"):
    model.roi_heads.pop(_key)
model.roi_heads.num_classes = 365
dataloader.train.mapper.update(use_instance_mask=False, recompute_boxes=False)
dataloader.train.dataset.names = ("objects365_v2_train", "objects365_v2_val")  # official: train + val
dataloader.test.dataset.names = "objects365_v2_val"
dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}", tasks=("bbox",))

model.backbone.net.update(
    arch="eva02_L",
    window_size=16,  # Table 27
    global_blocks=(2, 5, 8, 11, 14, 17, 20, 23),  # Table 27: 8 global blocks (official indexes)
    drop_path_rate=0.4,  # Table 27
    use_checkpoint=False,  # official: no activation checkpointing here (turn on if memory runs short)
)
set_input_size(model, dataloader, 1536)  # Table 27: LSJ crop 1536 (RoPE grid 96)
optimizer.lr = 6e-5  # Table 27
optimizer.params.lr_decay_rate = 0.8  # Table 27
dataloader.train.total_batch_size = 160  # Table 27
train.max_iter = 400000  # Table 27
lr_multiplier = step_schedule(max_iter=400000, milestones=(320000, 360000), warmup_iters=5000)  # Table 27; official warmup
