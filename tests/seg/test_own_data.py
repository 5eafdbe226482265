"""Own data (eva02.seg.own_data): the custom layout, its checks, fine-tuning from a checkpoint of other classes
(class rows re-laid by name), evaluation and inference on it, and mmseg's own inference API on our checkpoints."""
import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.datasets import ADE20KDataset
from mmseg.registry import DATASETS, MODELS

from eva02.seg import load_segmentor_checkpoint, use_own_data
from eva02.seg.demo import SHAPES_CLASSES, SHAPES_PALETTE, make_shapes_own_data
from eva02.seg.own_data import read_classes
from tool_process import run_tool

REPO = Path(__file__).resolve().parents[2]
OWN_CLASSES = ["background", "square", "round"]  # "round" is the disks, under a name the 5-class checkpoint lacks


def write_own_data(root: Path, bad_label: bool = True) -> Path:
    """8 training and 4 validation scenes of 64 px, classes background / square / round (the disks); one training
    label map gets a pixel of value 7, which is no class."""
    make_shapes_own_data(str(root), classes=("background", "square", "disk"), num_train=8, num_val=4, size=64,
                         progress=False)
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in OWN_CLASSES))
    if bad_label:
        path = str(root / "ann_dir" / "train" / "00003.png")
        label = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        label[5, 5] = 7
        cv2.imwrite(path, label)
    return root


@pytest.fixture(scope="module")
def own(tmp_path_factory, tiny_config):
    """(own-data folder, tiny config file, 5-class checkpoint with mmengine meta classes)."""
    tmp = tmp_path_factory.mktemp("own")
    data = write_own_data(tmp / "data")
    config = tiny_config(tmp)
    init_default_scope("mmseg")
    cfg = Config.fromfile(str(config))
    torch.manual_seed(1)
    model = MODELS.build(cfg.model)  # the demo's 5 shapes classes, randomly initialized
    model.init_weights()
    ckpt = tmp / "five_classes.pth"
    torch.save({"meta": {"dataset_meta": {"classes": SHAPES_CLASSES, "palette": SHAPES_PALETTE}},
                "state_dict": model.state_dict()}, ckpt)
    return data, config, ckpt


def test_read_classes_errors_name_the_file_and_format(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "classes.txt")) + ".*one class name per line"):
        read_classes(tmp_path)
    (tmp_path / "classes.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="is empty.*one class name per line"):
        read_classes(tmp_path)
    (tmp_path / "classes.txt").write_text("a\n\nb\n")
    with pytest.raises(ValueError, match="line 2 is empty"):
        read_classes(tmp_path)
    (tmp_path / "classes.txt").write_text(" sky \nroad\n\n")
    assert read_classes(tmp_path) == ["sky", "road"]


@pytest.mark.parametrize("config", ["configs/ade20k/upernet_eva02_B_512.py",
                                    "configs/ade20k/mask2former_eva02_L_640.py", "configs/demo/eva02_Ti_seg.py"])
def test_use_own_data_rewrites_datasets_labels_and_heads(repo, tmp_path, config):
    (tmp_path / "classes.txt").write_text("a\nb\nc\nd\n")
    cfg = Config.fromfile(str(repo / config))
    assert use_own_data(cfg, str(tmp_path)) == ["a", "b", "c", "d"]
    for loader, split in (("train_dataloader", "train"), ("val_dataloader", "val"), ("test_dataloader", "val")):
        ds = cfg[loader].dataset
        assert ds.type == "OwnSegDataset" and ds.data_root == str(tmp_path) and "generate" not in ds
        assert ds.data_prefix == dict(img_path=f"img_dir/{split}", seg_map_path=f"ann_dir/{split}")
    found = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "LoadAnnotations":
                found.append(node.get("reduce_zero_label"))
            for value in node.values():
                walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)

    walk(cfg._cfg_dict.to_dict())
    assert found and all(r in (False, None) for r in found) and False in found  # ADE's reduce_zero_label undone
    assert cfg.model.decode_head.num_classes == 4
    if "auxiliary_head" in cfg.model:
        assert cfg.model.auxiliary_head.num_classes == 4
    if cfg.model.decode_head.type == "Mask2FormerHead":
        assert cfg.model.decode_head.loss_cls.class_weight == [1.0, 1.0, 1.0, 1.0, 0.1]  # K classes + no-object


def _dataset(root, split="train", **kwargs):
    init_default_scope("mmseg")
    return DATASETS.build(dict(type="OwnSegDataset", data_root=str(root), pipeline=[],
                               data_prefix=dict(img_path=f"img_dir/{split}", seg_map_path=f"ann_dir/{split}"),
                               **kwargs))


def test_dataset_checks_label_maps_and_pairs(tmp_path):
    root = write_own_data(tmp_path / "data")
    dataset = _dataset(root)
    assert dataset.metainfo["classes"] == tuple(OWN_CLASSES) and len(dataset.metainfo["palette"]) == 3
    assert len({tuple(c) for c in dataset.metainfo["palette"]}) == 3  # distinct colours
    assert len(dataset) == 7 and dataset.bad_labels == [f"{root}/ann_dir/train/00003.png (values 7)"]
    assert not any("00003" in dataset.get_data_info(i)["img_path"] for i in range(len(dataset)))
    # The label maps are read as mmseg's LoadAnnotations reads them: class indexes and the 255 boundaries.
    sample = cv2.imread(str(root / "ann_dir" / "val" / "00000.png"), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(sample)) <= {0, 1, 2, 255} and 255 in sample

    rgb = root / "ann_dir" / "train" / "00004.png"  # a colour-coded mask instead of class indexes
    cv2.imwrite(str(rgb), np.zeros((64, 64, 3), np.uint8))
    truncated = root / "ann_dir" / "train" / "00005.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    dataset = _dataset(root)
    assert len(dataset) == 5 and f"{rgb} (not single-channel: shape (64, 64, 3))" in dataset.bad_labels
    assert [u.split(" ")[0] for u in dataset.unreadable] == [str(truncated)]

    for i in range(8):  # nothing usable left
        cv2.imwrite(str(root / "ann_dir" / "train" / f"{i:05d}.png"), np.full((64, 64), 3, np.uint8))
    with pytest.raises(ValueError, match="no usable sample left"):
        _dataset(root)

    (root / "ann_dir" / "val" / "00002.png").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{root}/img_dir/val/00002.jpg (expected "
                                                          f"{root}/ann_dir/val/00002.png)")):
        _dataset(root, "val")
    shutil.rmtree(root / "img_dir" / "val")
    with pytest.raises(FileNotFoundError, match=r"does not exist(.|\n)*img_dir/train/\*\.jpg\|png"):
        _dataset(root, "val")


def _tiny_model(config, data):
    init_default_scope("mmseg")
    cfg = Config.fromfile(str(config))
    use_own_data(cfg, str(data))
    torch.manual_seed(2)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


def test_class_rows_relaid_by_name_and_every_other_weight_loaded(own):
    data, config, ckpt = own
    trained = torch.load(ckpt)["state_dict"]
    model = _tiny_model(config, data)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="shape mismatch.*heads are for 5 classes, the config's for 3"):
        load_segmentor_checkpoint(model, ckpt)
    summary = load_segmentor_checkpoint(model, ckpt, classes=OWN_CLASSES, adapt_classes=True)
    for head in ("decode_head", "auxiliary_head"):
        assert (f"{head}.conv_seg: checkpoint 5 classes -> model 3; 2 carried over by name (background, square), "
                "the rest start from their initialization") in summary.splitlines()
    state = model.state_dict()
    for key, value in state.items():
        if ".conv_seg." in key:  # SHAPES_CLASSES: background 0, disk 1, square 2, ...
            assert torch.equal(value[0], trained[key][0]) and torch.equal(value[1], trained[key][2])
            assert torch.equal(value[2], initial[key][2])  # "round": no such class in the checkpoint
        elif not key.endswith("num_batches_tracked"):
            assert torch.equal(value, trained[key]), key

    official = {"state_dict": trained}  # no class names (as the official releases): nothing carried over
    model = _tiny_model(config, data)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    summary = load_segmentor_checkpoint(model, official, classes=OWN_CLASSES, adapt_classes=True)
    assert "decode_head.conv_seg: checkpoint 5 classes -> model 3; no class carried over (the checkpoint names " \
           "no classes)" in summary
    assert torch.equal(model.state_dict()["decode_head.conv_seg.weight"], initial["decode_head.conv_seg.weight"])


def test_mask2former_class_embedding_keeps_its_no_object_row(repo, tmp_path, shrunk_config):
    (tmp_path / "classes.txt").write_text("sky\nwall\nnovelty\n")
    init_default_scope("mmseg")
    cfg = shrunk_config(Config.fromfile(str(repo / "configs/ade20k/mask2former_eva02_L_640.py")), str(tmp_path))
    cfg.model.backbone.norm_cfg = dict(type="BN", requires_grad=True)
    ade = MODELS.build(cfg.model)  # 150 classes
    ade.init_weights()
    use_own_data(cfg, str(tmp_path))
    torch.manual_seed(3)
    own_model = MODELS.build(cfg.model)
    own_model.init_weights()
    assert own_model.decode_head.cls_embed.out_features == 4
    assert len(own_model.decode_head.loss_cls.class_weight) == 4
    initial = own_model.decode_head.cls_embed.weight.detach().clone()
    checkpoint = {"meta": {"dataset_meta": {"classes": ADE20KDataset.METAINFO["classes"]}},
                  "state_dict": ade.state_dict()}
    summary = load_segmentor_checkpoint(own_model, checkpoint, classes=["sky", "wall", "novelty"], adapt_classes=True)
    assert ("decode_head.cls_embed: checkpoint 150 classes -> model 3; 2 carried over by name (sky, wall), the rest "
            "start from their initialization; its 1 background / no-object row(s) carried over") in summary.splitlines()
    got, old = own_model.decode_head.cls_embed.weight, ade.decode_head.cls_embed.weight
    ade_classes = list(ADE20KDataset.METAINFO["classes"])
    assert torch.equal(got[0], old[ade_classes.index("sky")]) and torch.equal(got[1], old[ade_classes.index("wall")])
    assert torch.equal(got[2], initial[2]) and torch.equal(got[3], old[150])


@pytest.fixture(scope="module")
def finetuned(own, tmp_path_factory):
    """tools/train_seg.py --data --weights (5-class checkpoint), 2 iterations; returns (work dir, log)."""

    data, config, ckpt = own
    work = tmp_path_factory.mktemp("finetune") / "work"
    proc = run_tool("tools/train_seg.py", "--config-file", config, "--data", data, "--weights", ckpt,
                    "--output", work, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, proc.stdout + proc.stderr


def test_finetune_from_other_classes_reports_relaid_heads(own, finetuned):
    data, _, ckpt = own
    work, log = finetuned
    assert "own data" in log and "3 classes (background, square, round)" in log
    assert re.search(r"OwnSegDataset: 1 of 8 samples in \S+ann_dir/train left out, .*00003\.png \(values 7\)", log)
    for head in ("decode_head", "auxiliary_head"):
        assert (f"{head}.conv_seg: checkpoint 5 classes -> model 3; 2 carried over by name (background, square), "
                "the rest start from their initialization") in log
    assert "Iter(train) [2/2]" in log and "round" in log  # validated on the 3 classes
    final = torch.load(work / "iter_2.pth")  # weights_only
    assert final["meta"]["dataset_meta"]["classes"] == tuple(OWN_CLASSES)
    trained = torch.load(ckpt)["state_dict"]
    # Two warm-up steps move a weight by about 1e-4 at most: the carried rows are the checkpoint's rows of the same
    # class, the new class's row is none of them.
    row = final["state_dict"]["decode_head.conv_seg.weight"]
    old = trained["decode_head.conv_seg.weight"]
    assert torch.allclose(row[0], old[0], atol=1e-3) and torch.allclose(row[1], old[2], atol=1e-3)
    assert all((row[2] - old[i]).abs().max() > 1e-2 for i in range(5))
    assert torch.allclose(final["state_dict"]["backbone.patch_embed.proj.weight"],
                          trained["backbone.patch_embed.proj.weight"], atol=1e-3)


def test_test_and_infer_on_own_data(own, finetuned, run_tool, tmp_path):
    data, config, _ = own
    work, _ = finetuned
    ckpt = work / "iter_2.pth"
    proc = run_tool("test_seg.py", "--config-file", config, "--data", data, "--weights", ckpt, "--output",
                    tmp_path / "eval")
    assert re.search(r"mIoU: \d+\.\d+", proc.stdout) and re.search(r"\|\s+round\s+\|", proc.stdout)
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["unreadable_images"] == 0 and results["bad_label_files"] == [] and "mIoU" in results

    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        shutil.copy(data / "img_dir" / "val" / f"{i:05d}.jpg", inputs / f"v{i}.jpg")
    whole = (inputs / "v1.jpg").read_bytes()
    (inputs / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    proc = run_tool("infer_seg.py", "--config-file", config, "--data", data, "--weights", ckpt, "--input", inputs,
                    "--output", tmp_path / "out", "--batch-size", "2", "--tta", check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [Path(r["file_name"]).name for r in results["unreadable_files"]] == ["truncated.jpg"]
    assert "truncated" in results["unreadable_files"][0]["error"]
    assert [(Path(r["file_name"]).name, r["drawn"], r["labels"]) for r in results["images"]] == [
        (f"v{i}.jpg", f"v{i}.png", f"v{i}_labels.png") for i in range(3)]
    labels = cv2.imread(str(tmp_path / "out" / "v0_labels.png"), cv2.IMREAD_UNCHANGED)
    assert labels.shape == (64, 64) and labels.max() < 3
    assert cv2.imread(str(tmp_path / "out" / "v0.png")).shape[1] > 64  # image + legend


def test_mmseg_inference_api_and_seg_predictor_agree(own, finetuned):
    """mmseg's init_model / inference_model and MMSegInferencer on the training run's config and checkpoint;
    SegPredictor gives the same labels, batched or not; its TTA equals the average of mmseg's two passes on
    the image and its mirror; slide inference from an overridden test_cfg equals mmseg's."""
    from mmseg.apis import MMSegInferencer, inference_model, init_model

    from eva02.seg.predictor import SegPredictor

    data, tiny, _ = own
    work, _ = finetuned
    config, ckpt = str(work / "tiny_seg.py"), str(work / "iter_2.pth")  # the config as the run dumped it
    paths = [str(data / "img_dir" / "val" / f"{i:05d}.jpg") for i in range(2)]
    images = [cv2.imread(p) for p in paths]

    model = init_model(config, ckpt, device="cpu")
    assert list(model.dataset_meta["classes"]) == OWN_CLASSES
    reference = inference_model(model, paths)
    ref_labels = [r.pred_sem_seg.data[0].numpy() for r in reference]
    inferencer = MMSegInferencer(model=config, weights=ckpt, device="cpu")
    got = inferencer(paths, return_datasamples=True)
    got = got["predictions"] if isinstance(got, dict) else got
    assert all(np.array_equal(g.pred_sem_seg.data[0].numpy(), r) for g, r in zip(got, ref_labels))

    predictor = SegPredictor(str(tiny), ckpt, data=str(data))  # the original config + --data
    assert predictor.classes == OWN_CLASSES and predictor.palette.shape == (3, 3)
    ours, theirs = predictor.model.state_dict(), model.state_dict()  # load_segmentor_checkpoint = mmengine's load
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    batched = predictor.predict(paths, batch_size=2)
    single = [predictor(img) for img in images]
    for b, s, r in zip(batched, single, ref_labels):
        assert b.dtype == np.int64 and np.array_equal(b, r) and np.array_equal(s, r)

    cfg = Config.fromfile(config)
    flips = cfg.tta_pipeline[1].transforms[1]
    cfg.tta_pipeline[1].transforms = [[dict(type="Resize", scale_factor=1.0, keep_ratio=True)], flips,
                                      *cfg.tta_pipeline[1].transforms[2:]]
    tta = SegPredictor(cfg, ckpt, tta=True).predict(images, batch_size=2)
    changed = []
    for img, labels in zip(images, tta):
        plain = inference_model(model, img).seg_logits.data
        mirrored = inference_model(model, np.ascontiguousarray(img[:, ::-1])).seg_logits.data.flip(dims=(2,))
        average = (torch.zeros_like(plain) + plain.softmax(dim=0) + mirrored.softmax(dim=0)) / 2
        assert not torch.allclose(plain.softmax(dim=0), mirrored.softmax(dim=0), atol=1e-3)  # the flip matters
        assert np.array_equal(labels, average.argmax(dim=0).numpy())
        changed.append(not np.array_equal(labels, plain.argmax(dim=0).numpy()))
    assert any(changed)  # TTA changes some prediction
    full = SegPredictor(config, ckpt, tta=True)(images[0])  # the config's 6 scales x 2 flips
    assert full.shape == (64, 64) and full.max() < 3

    slide = dict(model=dict(test_cfg=dict(mode="slide", crop_size=(48, 48), stride=(32, 32))))
    slid = SegPredictor(config, ckpt, cfg_options=slide).predict(images)
    mmseg_slide = init_model(config, ckpt, device="cpu", cfg_options=slide)
    assert mmseg_slide.test_cfg.mode == "slide"
    for labels, img in zip(slid, images):
        assert np.array_equal(labels, inference_model(mmseg_slide, img).pred_sem_seg.data[0].numpy())
