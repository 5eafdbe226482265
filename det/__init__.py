"""eva02.det: EVA-02 (TrV) detection on detectron2 — ViTDet Cascade Mask R-CNN for COCO, LVIS and Objects365.

Modules:
    backbone    TrVBackbone: the TrV as a detectron2 Backbone (keys `backbone.net.<TrV keys>` in a detector)
    config      helpers the LazyConfig files use (input size, schedules, head width)
    data        dataset registration with clear missing-file errors; the synthetic shapes dataset
    solver      layer-wise lr decay parameter groups (weight decay on every parameter)
    ema         EMA of the weights, checkpointed as `ema_state`
    checkpoint  EVACheckpointer (a DetectionCheckpointer) and load_detector_weights(model, path, use_ema)
    lvis        federated-loss class weights, repeat-factor sampler, numpy-2-safe LVISEvaluator
    engine      training / evaluation loop behind tools/train_det.py (AMP, EMA, DDP, checkpoints)
    roi_heads, postprocess, evaluation   soft-NMS, maskness, results writers
    own_data    your own COCO-format data (tools/train_det.py --train-data / --val-data)
    predictor   DetPredictor: a config + weights on image paths or arrays -> Detections (boxes, scores, classes, masks)
    tta         DetectorTTA: multi-scale + flip test-time augmentation (dataloader.tta, --tta)
Configs live in configs/{coco,lvis,o365,demo}; the shared base in configs/common.
"""
from .predictor import Detections, DetPredictor

__all__ = ["Detections", "DetPredictor"]
