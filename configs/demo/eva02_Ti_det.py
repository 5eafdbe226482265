"""Demo: EVA-02-Ti Cascade Mask R-CNN trained from scratch on the generated shapes dataset, on a CPU.

    .venv/bin/python tools/train_det.py --config-file configs/demo/eva02_Ti_det.py

Generates the data (disks, squares, triangles and crosses with polygon masks, eva02.common.shapes) under output/demo_det/data on first use,
trains for a few minutes on 2 CPU cores, evaluates box and mask AP with COCOEvaluator and draws predictions of
the validation images into output/demo_det/predictions/. Not a paper config: values are tuned for the demo.
"""
from detectron2.config import LazyCall as L

from eva02.det.config import set_head_width, set_input_size, step_schedule
from eva02.common.shapes import SHAPE_CLASSES
from eva02.det.demo import prepare_shapes

from ..common.eva02_cascade_mask_rcnn import dataloader, model, optimizer, train

IMAGE_SIZE = 128

dataloader.setup = L(prepare_shapes)(root="output/demo_det/data", num_train=600, num_val=60,
                                     image_size=IMAGE_SIZE, seed=0, prefix="shapes")
dataloader.train.dataset.names = "shapes_train"
dataloader.test.dataset.names = "shapes_val"
dataloader.train.total_batch_size = 8
dataloader.train.num_workers = 1
dataloader.test.num_workers = 0

model.backbone.net.update(
    arch="eva02_Ti",
    window_size=4,  # the 8x8 grid of a 128 px image holds 2x2 windows of 4x4 tokens
    global_blocks=(2, 5, 8, 11),  # evenly spaced, as the B 4-global layout
    drop_path_rate=0.0,
)
set_input_size(model, dataloader, IMAGE_SIZE, min_scale=0.8, max_scale=1.25)  # mild jitter: objects stay learnable
dataloader.tta.sizes = [96, 128, 160]  # --tta: the training jitter's range (0.8-1.25 of 128), each also flipped
set_head_width(model, channels=64, fc_dim=256)  # CPU budget: the paper's 256 / 1024 heads cost ~1 min a step
for _head in model.roi_heads.box_heads:
    _head.update(conv_dims=[], fc_dims=[256, 256])  # 2fc box heads: the 4-conv ones dominate a CPU step
model.roi_heads.mask_head.conv_dims = [64, 64]
model.roi_heads.num_classes = len(SHAPE_CLASSES)
# Few objects per image: fewer proposals and sampled RoIs keep a CPU step short.
model.proposal_generator.update(pre_nms_topk=(600, 300), post_nms_topk=(300, 100))
model.roi_heads.batch_size_per_image = 64

optimizer.lr = 3e-4
optimizer.params.lr_decay_rate = 1.0  # random init: no pre-trained layers to protect
optimizer.weight_decay = 0.05

# one evaluation halfway and one at the end: AP curves and prediction panels in TensorBoard
train.update(output_dir="output/demo_det", max_iter=320, eval_period=160, log_period=20, device="cpu", seed=0,
             save_predictions=16)
train.amp.enabled = False
train.checkpointer.period = 200
lr_multiplier = step_schedule(max_iter=train.max_iter, milestones=[int(train.max_iter * 0.85)], warmup_iters=50)
