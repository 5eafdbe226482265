"""Freezing and LoRA in segmentation training (model.backbone.frozen_stages / .lora, eva02.backbone.tuning) through
tools/train_seg.py, then the merged LoRA checkpoint through tools/convert_checkpoint.py and tools/test_seg.py."""
import re
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
LORA = ["model.backbone.lora.rank=4", "model.backbone.lora.alpha=8"]


def train(run_tool, tiny_config, tmp: Path, *overrides) -> tuple[dict, dict]:
    """2 iterations, a checkpoint after each; returns both state dicts."""
    work = tmp / "work"
    run_tool("train_seg.py", "--config-file", tiny_config(tmp, max_iters=2), "--output", work,
             "default_hooks.checkpoint.interval=1", *overrides)
    return [torch.load(work / f"iter_{i}.pth", weights_only=True)["state_dict"] for i in (1, 2)]


def test_frozen_weights_are_bit_identical_after_training(run_tool, tiny_config, tmp_path):
    first, second = train(run_tool, tiny_config, tmp_path, "--frozen-stages", "1")  # model.backbone.frozen_stages=1
    frozen = [k for k in first if k.startswith(("backbone.patch_embed", "backbone.pos_embed", "backbone.cls_token",
                                                "backbone.blocks.0."))]
    trained = [k for k in first if k.startswith(("backbone.blocks.1.", "decode_head.")) and k.endswith("weight")
               and "bn" not in k]
    assert frozen and trained
    assert all(torch.equal(first[k], second[k]) for k in frozen)
    assert sum(not torch.equal(first[k], second[k]) for k in trained) >= len(trained) - 2  # (a conv may not move)


def test_lora_trains_adapters_only_and_its_merged_checkpoint_evaluates_the_same(run_tool, tiny_config, tmp_path):
    first, second = train(run_tool, tiny_config, tmp_path, *LORA)
    adapters = [k for k in second if ".lora_" in k]
    assert len(adapters) == 3 * 5 * 2  # a, b and the scale of 5 projections in each of 2 blocks
    base = [k for k in first if k.startswith("backbone.") and not k.startswith("backbone.pyramid")
            and k not in adapters]
    assert all(torch.equal(first[k], second[k]) for k in base)  # the base encoder is untouched
    assert any(not torch.equal(first[k], second[k]) for k in adapters if k.endswith("lora_b"))
    unmerged = tmp_path / "work" / "iter_2.pth"
    merged = tmp_path / "merged.pth"
    run_tool("convert_checkpoint.py", "--input", unmerged, "--output", merged, "--to", "merged")
    scores = []
    for weights, overrides in ((unmerged, LORA), (merged, [])):
        proc = run_tool("test_seg.py", "--config-file", tiny_config(tmp_path), "--weights", weights, "--output",
                        tmp_path / f"eval{len(scores)}", *overrides)
        scores.append(re.search(r"mIoU: (\d+\.\d+)", proc.stdout).group(1))
    assert scores[0] == scores[1]
    refused = run_tool("test_seg.py", "--config-file", tiny_config(tmp_path), "--weights", unmerged, "--output",
                       tmp_path / "eval_refused", check=False)
    assert refused.returncode == 2 and "LoRA adapter tensors" in refused.stderr
