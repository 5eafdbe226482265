"""Soft-NMS against mmcv's CPU kernel, maskness by hand, and the EVA cascade ROI heads built on them."""
import copy
from pathlib import Path

import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.roi_heads import CascadeROIHeads, FastRCNNConvFCHead, FastRCNNOutputLayers
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage
from mmcv.ops import soft_nms as mmcv_soft_nms

from eva02.det.postprocess import maskness, soft_nms
from eva02.det.roi_heads import EVACascadeROIHeads

MMCV_METHOD = {"linear": "linear", "gaussian": "gaussian"}  # mmcv also has "naive" (hard NMS)


def random_boxes(num: int, seed: int, num_classes: int = 1):
    """Crowded boxes: num boxes of side 5..45 in a 100x100 square, so many pairs overlap above 0.3."""
    gen = torch.Generator().manual_seed(seed)
    corner = torch.rand(num, 2, generator=gen) * 100
    size = torch.rand(num, 2, generator=gen) * 40 + 5
    boxes = torch.cat([corner, corner + size], 1)
    scores = torch.rand(num, generator=gen) * 0.99 + 0.01  # all above min_score, as mmcv keeps its top box anyway
    labels = torch.randint(num_classes, (num,), generator=gen)
    return boxes, scores, labels


@pytest.mark.parametrize("method,iou_threshold,sigma", [("linear", 0.3, 0.5), ("linear", 0.6, 0.5), ("gaussian", 0.3, 0.5), ("gaussian", 0.3, 0.1)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_soft_nms_matches_mmcv(method, iou_threshold, sigma, seed):
    boxes, scores, _ = random_boxes(300, seed)
    min_score = 0.05  # high enough that mmcv drops boxes too: the drop rule is exercised
    dets, mmcv_keep = mmcv_soft_nms(boxes, scores, iou_threshold, sigma, min_score, MMCV_METHOD[method], offset=0)
    keep, new_scores = soft_nms(boxes, scores, method=method, iou_threshold=iou_threshold, sigma=sigma, min_score=min_score)
    assert 0 < len(keep) < len(boxes), "the comparison must include dropped boxes"
    assert torch.equal(keep, mmcv_keep.long())
    torch.testing.assert_close(new_scores, dets[:, 4], rtol=1e-6, atol=1e-7)
    assert (new_scores < scores[keep]).any(), "some scores must have been decayed"


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_soft_nms_class_wise_equals_mmcv_per_class(method):
    boxes, scores, labels = random_boxes(400, seed=3, num_classes=5)
    expected = {}
    for cls in range(5):
        idx = torch.nonzero(labels == cls).squeeze(1)
        dets, keep = mmcv_soft_nms(boxes[idx], scores[idx], 0.5, 0.5, 1e-3, method, offset=0)
        expected.update(zip(idx[keep.long()].tolist(), dets[:, 4].tolist()))
    keep, new_scores = soft_nms(boxes, scores, labels, method=method, iou_threshold=0.5)
    assert sorted(keep.tolist()) == sorted(expected)
    torch.testing.assert_close(new_scores, torch.tensor([expected[i] for i in keep.tolist()]), rtol=1e-6, atol=1e-7)
    assert torch.all(new_scores[:-1] >= new_scores[1:]), "results are sorted by score"
    # Class-agnostic would decay across classes: a different result.
    agnostic_keep, agnostic_scores = soft_nms(boxes, scores, None, method=method, iou_threshold=0.5)
    assert not (torch.equal(agnostic_keep, keep) and torch.equal(agnostic_scores, new_scores))


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_soft_nms_topk_early_exit_is_exact(method):
    """As at sys inference: every RoI a candidate in every class (score threshold 0), skewed softmax scores."""
    boxes, _, _ = random_boxes(300, seed=4)
    class_scores = torch.softmax(torch.randn(300, 21, generator=torch.Generator().manual_seed(5)) * 3, 1)[:, :-1]
    roi, label = torch.nonzero(class_scores > 0, as_tuple=True)
    args = (boxes[roi], class_scores[roi, label], label)
    keep, new_scores = soft_nms(*args, method=method, iou_threshold=0.6, topk=50)
    full_keep, full_scores = soft_nms(*args, method=method, iou_threshold=0.6)
    assert len(full_keep) > 1000 and len(keep) == 50
    assert torch.equal(keep, full_keep[:50]) and torch.equal(new_scores, full_scores[:50])


def test_soft_nms_edge_cases():
    boxes, scores, labels = random_boxes(200, seed=4, num_classes=3)
    keep, new_scores = soft_nms(boxes, scores, labels, topk=-1)  # detectron2's "no limit"
    assert torch.equal(keep, soft_nms(boxes, scores, labels)[0])
    empty_keep, empty_scores = soft_nms(boxes[:0], scores[:0], labels[:0], topk=10)
    assert empty_keep.shape == (0,) and empty_scores.shape == (0,) and empty_keep.dtype == torch.long
    # Every score below min_score: mmcv (run class-wise as the official detector does, one call on boxes shifted
    # by class; integer-valued here so the shift is exact) still keeps its first selection, the best box.
    int_boxes = boxes.round()
    low = torch.rand(len(scores), generator=torch.Generator().manual_seed(6)) * 1e-3
    shifted = int_boxes + (labels * (int_boxes.max() + 1))[:, None]
    dets, mmcv_keep = mmcv_soft_nms(shifted, low, 0.6, 0.5, 1e-3, "linear", offset=0)
    low_keep, low_scores = soft_nms(int_boxes, low, labels, iou_threshold=0.6, min_score=1e-3)
    assert mmcv_keep.tolist() == low_keep.tolist() == [int(low.argmax())]
    assert torch.equal(low_scores, dets[:, 4])
    # Two identical boxes: linear soft-NMS with threshold <= 1 zeroes the second one; Gaussian keeps it at exp(-1/sigma).
    pair = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    pair_scores = torch.tensor([0.9, 0.8])
    assert soft_nms(pair, pair_scores, method="linear", iou_threshold=0.5)[0].tolist() == [0]
    _, gauss = soft_nms(pair, pair_scores, method="gaussian", sigma=0.5)
    torch.testing.assert_close(gauss, torch.tensor([0.9, 0.8 * torch.exp(torch.tensor(-2.0)).item()]))
    with pytest.raises(ValueError, match="method"):
        soft_nms(boxes, scores, method="hard")


def test_maskness_hand_computed():
    probs = torch.zeros(3, 1, 4, 4)
    probs[0, 0, 0, :] = torch.tensor([0.9, 0.7, 0.6, 0.4])  # above 0.5: 0.9, 0.7, 0.6 -> mean 2.2 / 3
    probs[0, 0, 1, 0] = 0.5  # exactly at the threshold: not foreground
    probs[1, 0] = 0.3  # nothing above: 0
    probs[2, 0, 2:, 2:] = 1.0  # 4 pixels at 1.0 -> 1
    torch.testing.assert_close(maskness(probs, 0.5), torch.tensor([2.2 / 3, 0.0, 1.0]))
    assert maskness(probs[:0], 0.5).shape == (0,)


# ---- EVACascadeROIHeads on a model-zoo ViTDet Cascade Mask R-CNN with a tiny ViT ----

def tiny_vitdet_cascade(**roi_head_args):
    """detectron2's model-zoo ViTDet Mask R-CNN turned into Cascade (as projects/ViTDet does), shrunk."""
    model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
    model.backbone.net.update(img_size=128, embed_dim=64, depth=2, num_heads=2, window_size=4,
                              window_block_indexes=[0], drop_path_rate=0.0)
    model.backbone.square_pad = 128
    model.backbone.out_channels = 32
    model.proposal_generator.head.in_channels = 32
    model.proposal_generator.post_nms_topk = (64, 50)
    model.roi_heads.num_classes = 4
    model.roi_heads.mask_head.conv_dims = [32]
    model.roi_heads.mask_head.input_shape = ShapeSpec(channels=32, width=14, height=14)
    [model.roi_heads.pop(key) for key in ["box_head", "box_predictor", "proposal_matcher"]]
    model.roi_heads.update(
        _target_=EVACascadeROIHeads,
        box_heads=[L(FastRCNNConvFCHead)(input_shape=ShapeSpec(channels=32, height=7, width=7),
                                         conv_dims=[32], fc_dims=[64], conv_norm="LN") for _ in range(3)],
        box_predictors=[L(FastRCNNOutputLayers)(input_shape=ShapeSpec(channels=64), test_score_thresh=0.05,
                                                box2box_transform=L(Box2BoxTransform)(weights=(w, w, w / 2, w / 2)),
                                                cls_agnostic_bbox_reg=True, num_classes=4)
                        for w in (10, 20, 30)],
        proposal_matchers=[L(Matcher)(thresholds=[t], labels=[0, 1], allow_low_quality_matches=False) for t in (0.5, 0.6, 0.7)],
        **roi_head_args,
    )
    torch.manual_seed(0)
    return instantiate(model)


def image_batch():
    gen = torch.Generator().manual_seed(0)
    image = (torch.rand(3, 96, 128, generator=gen) * 255)
    target = Instances((96, 128), gt_boxes=Boxes(torch.tensor([[10.0, 10.0, 60.0, 50.0], [70.0, 20.0, 120.0, 90.0]])),
                       gt_classes=torch.tensor([1, 3]))
    masks = torch.zeros(2, 96, 128, dtype=torch.bool)
    masks[0, 10:50, 10:60] = True
    masks[1, 20:90, 70:120] = True
    target.gt_masks = BitMasks(masks)
    return [{"image": image, "height": 96, "width": 128, "instances": target}]


def set_predictor(model, **values):
    for predictor in model.roi_heads.box_predictor:
        for key, value in values.items():
            setattr(predictor, key, value)


@torch.no_grad()
def test_roi_heads_soft_nms_without_decay_equals_detectron2_inference():
    """With an IoU threshold no pair can reach, linear soft-NMS keeps every candidate: the result must be
    exactly detectron2's own cascade inference with NMS at the same unreachable threshold (same scores,
    boxes, classes, top-k)."""
    model = tiny_vitdet_cascade().eval()
    set_predictor(model, test_score_thresh=0.15, test_nms_thresh=1.01, test_topk_per_image=30)
    reference = model(image_batch())[0]["instances"]
    model.roi_heads.nms_method, model.roi_heads.soft_nms_topk = "soft_linear", True
    ours = model(image_batch())[0]["instances"]
    assert len(reference) == 30, "enough candidates to exercise the top-k"
    torch.testing.assert_close(ours.scores, reference.scores)
    torch.testing.assert_close(ours.pred_boxes.tensor, reference.pred_boxes.tensor)
    assert torch.equal(ours.pred_classes, reference.pred_classes)


@torch.no_grad()
@pytest.mark.parametrize("nms_method", ["soft_linear", "soft_gaussian"])
def test_roi_heads_soft_nms_decays_topk_and_maskness(nms_method):
    model = tiny_vitdet_cascade(nms_method=nms_method, soft_nms_sigma=0.5, soft_nms_topk=True).eval()
    set_predictor(model, test_score_thresh=0.1, test_nms_thresh=0.6, test_topk_per_image=20)
    # Not post-processed: pred_masks stay the per-RoI (R, 1, 28, 28) probabilities maskness is defined on.
    plain = model.inference(image_batch(), do_postprocess=False)[0]
    assert len(plain) == 20
    assert torch.all(plain.scores[:-1] >= plain.scores[1:])
    model.roi_heads.maskness_thresh = 0.5
    rescored = model.inference(image_batch(), do_postprocess=False)[0]
    assert len(rescored) == 20 and torch.all(rescored.scores[:-1] >= rescored.scores[1:])
    # Match the rescored detections back to the plain ones (same boxes, same masks), then check the product.
    order = [
        int(torch.nonzero((plain.pred_boxes.tensor == box).all(1) & (plain.pred_classes == cls))[0])
        for box, cls in zip(rescored.pred_boxes.tensor, rescored.pred_classes)
    ]
    torch.testing.assert_close(rescored.scores, plain.scores[order] * maskness(plain.pred_masks[order], 0.5))
    assert not torch.equal(rescored.scores, plain.scores[order])


@torch.no_grad()
def test_roi_heads_soft_nms_returns_every_survivor_by_default():
    """Official "sys" protocol: no per-image cap after soft-NMS; the switch restores the cap as a prefix."""
    model = tiny_vitdet_cascade(nms_method="soft_linear").eval()
    set_predictor(model, test_score_thresh=0.0, test_nms_thresh=0.6, test_topk_per_image=20)
    every = model.inference(image_batch(), do_postprocess=False)[0]
    model.roi_heads.soft_nms_topk = True
    capped = model.inference(image_batch(), do_postprocess=False)[0]
    assert len(capped) == 20 < len(every)
    torch.testing.assert_close(capped.scores, every.scores[:20])
    assert torch.equal(capped.pred_classes, every.pred_classes[:20])


@torch.no_grad()
@pytest.mark.parametrize("case", [0, 1], ids=["coco", "lvis"])
def test_soft_nms_inference_equals_the_official_detector(case):
    """The same boxes and cascade scores through the official detector's soft-NMS inference (fixture made by
    running it, see fixtures/README.md) and through ours: the same detections, every survivor, same scores."""
    fixture = torch.load(Path(__file__).parent / "fixtures" / "official_soft_nms_sys.pt", weights_only=True)
    official = fixture["cases"][case]
    model = tiny_vitdet_cascade(nms_method="soft_linear").eval()
    set_predictor(model, test_score_thresh=official["score_thresh"], test_nms_thresh=0.6, test_topk_per_image=100)
    ours = model.roi_heads._soft_nms_single_image(official["boxes"], official["scores"], tuple(official["image_size"]))
    assert len(ours) == len(official["out_scores"]) > 100  # more than any per-image cap would let through
    assert torch.equal(ours.pred_classes, official["out_classes"])
    assert torch.equal(ours.pred_boxes.tensor, official["out_boxes"])
    torch.testing.assert_close(ours.scores, official["out_scores"], rtol=1e-6, atol=1e-7)


@torch.no_grad()
def test_roi_heads_zero_detections():
    model = tiny_vitdet_cascade(nms_method="soft_linear", maskness_thresh=0.5).eval()
    set_predictor(model, test_score_thresh=1.0)
    instances = model(image_batch())[0]["instances"]
    assert len(instances) == 0 and instances.pred_masks.shape[0] == 0


def test_roi_heads_training_unchanged():
    """Training losses are the parent's: same weights, same seed, same losses."""
    ours = tiny_vitdet_cascade(nms_method="soft_gaussian", maskness_thresh=0.5).train()
    parent = copy.deepcopy(ours)
    parent.roi_heads.__class__ = CascadeROIHeads
    losses = []
    for model in (ours, parent):
        torch.manual_seed(1)
        with EventStorage():
            losses.append(model(image_batch()))
    assert set(losses[0]) == set(losses[1]) and "loss_mask" in losses[0] and "loss_cls_stage2" in losses[0]
    for key in losses[0]:
        torch.testing.assert_close(losses[0][key], losses[1][key])


def test_roi_heads_rejects_unknown_method():
    with pytest.raises(ValueError, match="nms_method"):
        tiny_vitdet_cascade(nms_method="soft_box")
