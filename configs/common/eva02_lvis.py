"""LVIS v1 on top of the shared base (docs/reference.md §2, Tables 29, 31, 33): 1203 classes, federated loss
with sigmoid CE and class weights image_count ** 0.5, repeat-factor sampling 0.001, LVISEvaluator."""
from detectron2.config import LazyCall as L

from eva02.det.lvis import NUM_LVIS_CLASSES, FedLossClassWeights, LVISEvaluator, repeat_factor_sampler

from .eva02_cascade_mask_rcnn import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

dataloader.train.dataset.names = "lvis_v1_train"
dataloader.train.sampler = repeat_factor_sampler(repeat_thresh=0.001)
dataloader.test.dataset.names = "lvis_v1_val"
dataloader.evaluator = L(LVISEvaluator)(dataset_name="${..test.dataset.names}", max_dets_per_image=300)

model.roi_heads.num_classes = NUM_LVIS_CLASSES
for _predictor in model.roi_heads.box_predictors:
    _predictor.update(use_sigmoid_ce=True, use_fed_loss=True,
                      get_fed_loss_cls_weights=L(FedLossClassWeights)(power=0.5))
    _predictor.update(test_score_thresh=0.02, test_topk_per_image=300)  # Table 29: score thr 0.02, 300 dets
