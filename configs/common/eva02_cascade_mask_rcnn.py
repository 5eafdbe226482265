"""Shared base of every EVA-02 detection config: ViTDet Cascade Mask R-CNN with a TrV backbone.

Each table's file states only its table's deltas (comments there name the table). Values here are the ones
every table shares, or most do (comments name the tables; docs/reference.md §2): simple feature pyramid p2-p6 at
256 channels with LN, 2-conv RPN, 3-stage cascade with 4conv(LN)+1fc box heads, class-agnostic regression, box
weights (10,10,5,5), (20,20,10,10), (30,30,15,15), IoU 0.5/0.6/0.7, LN mask head, ImageNet mean/std on 0-255 RGB,
LSJ, AdamW (0.9, 0.999, 1e-8) with weight decay 0.1 on every parameter and layer-wise lr decay, AMP fp16.
"""
import torch
from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from eva02.det.backbone import TrVBackbone
from eva02.det.config import set_input_size, step_schedule
from eva02.det.evaluation import COCOEvaluator
from eva02.det.solver import layer_decay_param_groups

# ---------------------------------------------------------------- model
# detectron2's ViTDet Mask R-CNN (simple feature pyramid, LN heads, 2-conv RPN), with the TrV as `net`.
model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
model.backbone.net = L(TrVBackbone)(
    arch="eva02_B",
    patch_size=16,
    img_size=224,  # pos-embed grid 224/16 = 14 (official p14to16 / detector layout), resized to the feature grid
    window_size=16,
    global_blocks=(2, 5, 8, 11),
    rope_grid=64,
    drop_path_rate=0.1,
    use_checkpoint=False,
    compile_blocks=False,  # torch.compile every block (docs/benchmarks.md: bench/compile.py)
    attn_impl="sdpa",
    out_feature="last_feat",
)
model.backbone.in_feature = "last_feat"

# detectron2's Cascade R-CNN heads (3 stages: predictors, box weights, IoU matchers), with the ViTDet
# 4conv(LN)+1fc box heads and the EVA-02 inference switches (soft-NMS, maskness) of EVACascadeROIHeads.
[model.roi_heads.pop(k) for k in ("box_head", "box_predictor", "proposal_matcher")]
_cascade = model_zoo.get_config("common/models/cascade_rcnn.py").model.roi_heads
for _head in _cascade.box_heads:
    _head.update(conv_dims=[256, 256, 256, 256], fc_dims=[1024], conv_norm="LN")
model.roi_heads.update(
    _target_="eva02.det.roi_heads.EVACascadeROIHeads",
    box_heads=_cascade.box_heads,
    box_predictors=_cascade.box_predictors,
    proposal_matchers=_cascade.proposal_matchers,
    nms_method="nms",  # Tables 27-29 (bsl): plain NMS; "sys" configs call eva02.det.config.sys_inference
    soft_nms_sigma=0.5,
    soft_nms_min_score=1e-3,
    soft_nms_topk=False,  # soft-NMS: every survivor reaches the evaluator (official); True caps per image
    maskness_thresh=None,  # Tables 27-29: no maskness rescoring
)
for _predictor in model.roi_heads.box_predictors:  # Table 28: score thr 0.05, 100 dets (LVIS base: 0.02 / 300)
    _predictor.update(test_score_thresh=0.05, test_nms_thresh=0.5, test_topk_per_image=100)

# ---------------------------------------------------------------- data
dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.mapper.update(image_format="RGB", use_instance_mask=True, recompute_boxes=True)
dataloader.train.total_batch_size = 128  # Tables 28-31 (L COCO bsl 144; O365 160; O365-initialized 64)
dataloader.train.num_workers = 4
dataloader.test.num_workers = 2
dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}")  # unreadable images left out
# Test-time augmentation (eva02.det.tta; --tta of tools/train_det.py and tools/infer_det.py). Not in the paper:
# every EVA-02 detection number is single-scale. Sizes: the official code's intended list scaled to the test size
# (set_input_size); merged by the paper's "sys" soft-NMS (linear, IoU 0.6, min score 1e-3), every survivor kept.
dataloader.tta = dict(enabled=False, sizes=[], flip=True, nms_method="soft_linear", nms_thresh=0.6,
                      soft_nms_sigma=0.5, soft_nms_min_score=1e-3, topk_per_image=-1)
set_input_size(model, dataloader, 1024)

# ---------------------------------------------------------------- optimization
optimizer = L(torch.optim.AdamW)(
    params=L(layer_decay_param_groups)(base_lr="${..lr}", weight_decay="${..weight_decay}", lr_decay_rate=0.7),
    lr=5e-5,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.1,  # Tables 27-33
)
lr_multiplier = step_schedule(max_iter=60000, milestones=(48000, 54000), warmup_iters=1000)

train = model_zoo.get_config("common/train.py").train
train.update(
    output_dir="./output/det",
    init_checkpoint="",
    init_use_ema=False,  # take the initial weights from the checkpoint's `ema_state`
    init_weights_only=True,  # False unpickles arbitrary objects: only for checkpoint files you trust
    # False: training needs the whole backbone from init_checkpoint, evaluation every weight; True loads what fits
    init_allow_partial=False,
    max_iter=60000,
    # several processes: "ddp" (official), or "fsdp" to shard the detector's weights, gradients and AdamW state
    # over them (PyTorch FSDP2, one unit per TrV block; eva02.det.engine.PARALLEL; tools/train_det.py --fsdp)
    parallel="ddp",
    amp=dict(enabled=True, precision="fp16"),  # Tables 27-33: fp16 ("fp16" | "bf16", eva02.common.precision)
    # With EMA, evaluation during training scores both the raw and the EMA weights (official); use_for_eval
    # picks the EMA weights for --eval-only (official `use_ema_weights_for_eval_only`).
    model_ema=dict(enabled=False, decay=0.9999, use_for_eval=True),
    eval_period=5000,
    log_period=20,
    device="cuda",  # falls back to the CPU (with a warning) where no GPU exists
    results_dir="",  # set (e.g. for coco_2017_test-dev): write the COCO results json + zip for the server
    log_images=4,  # validation images drawn with their predictions into TensorBoard at each evaluation
    seed=-1,
)
train.checkpointer.update(period=5000, max_to_keep=3)
train.ddp.update(fp16_compression=True)  # official: DDP gradients all-reduced in fp16 (GPU only, see engine)
