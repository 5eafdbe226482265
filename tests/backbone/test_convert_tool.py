"""tools/convert_checkpoint.py end to end on a checkpoint the test writes in the official MIM layout."""
from pathlib import Path

import pytest
import torch

from eva02.backbone import create_trv, load_checkpoint, to_official
from tool_process import run_tool

TOOL = Path(__file__).resolve().parents[2] / "tools" / "convert_checkpoint.py"


def _official_mim(path):
    torch.manual_seed(0)
    src = create_trv("eva02_S", depth=2, with_cls_token=True, with_mask_token=True)
    sd = to_official(src)
    sd["rope.freqs_cos"] = torch.zeros(256, 32)
    torch.save({"module": sd}, path)
    return src


def _run(*args):
    return run_tool(TOOL, *args, check=True)


def test_p14_to_p14to16_then_into_detection_backbone(tmp_path):
    _official_mim(tmp_path / "pt_p14.pt")
    _run("--input", tmp_path / "pt_p14.pt", "--output", tmp_path / "p14to16.pt", "--to", "p14to16")
    out = torch.load(tmp_path / "p14to16.pt")
    assert out["patch_embed.proj.weight"].shape == (384, 3, 16, 16) and out["pos_embed"].shape == (1, 197, 384)
    # S keeps the official S layout (fused qkv, packed w12; checked against the official code in tests/mim)
    assert "blocks.0.attn.qkv.weight" in out and "blocks.0.mlp.w12.weight" in out and not any("rope" in k for k in out)
    det = create_trv("eva02_S", depth=2, patch_size=16, window_size=16, global_blocks=(1,))
    report = load_checkpoint(det, tmp_path / "p14to16.pt")
    assert report.missing == [] and report.converted == ["split the packed mlp.w12 into w1 / w2"]  # no resizing left


def test_p14_to_own_layout_keeps_outputs(tmp_path):
    src = _official_mim(tmp_path / "pt_p14.pt")
    _run("--input", tmp_path / "pt_p14.pt", "--output", tmp_path / "own.pth", "--to", "eva02", "--patch-size", "14")
    out = torch.load(tmp_path / "own.pth")
    assert out["arch"] == {"preset": "eva02_S", "depth": 2, "sub_ln": False, "patch_size": 14, "img_size": 224}
    model = create_trv("eva02_S", depth=2, with_cls_token=True, with_mask_token=True)
    model.load_state_dict(out["model"])
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(model.eval().forward_tokens(x), src.eval().forward_tokens(x))


def test_not_a_backbone_is_a_clear_error(tmp_path):
    torch.save({"model": {"head.weight": torch.zeros(2)}}, tmp_path / "x.pt")
    result = run_tool(TOOL, "--input", tmp_path / "x.pt", "--output", tmp_path / "y.pt", "--to", "p14to16")
    assert result.returncode == 2 and "patch_embed.proj.weight" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("case", ["no TrV in it", "truncated", "damaged pickle"])
def test_bad_checkpoint_is_one_line_naming_the_file(tmp_path, case):
    path = tmp_path / "in.pt"
    if case == "no TrV in it":  # was named "<state dict>": the tool passed the loaded dict on
        torch.save({"model": {"head.weight": torch.zeros(2)}}, path)
        expected = f"{path}: not a TrV"
    elif case == "truncated":
        _official_mim(tmp_path / "whole.pt")
        whole = (tmp_path / "whole.pt").read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
        expected = f"{path} is not a readable checkpoint (PytorchStreamReader failed reading zip archive"
    else:  # a pickle header, then junk: damaged, no case for --unsafe-pickle
        path.write_bytes(b"\x80\x04junk" + bytes(64))
        expected = f"{path} is not a readable checkpoint ("
    result = run_tool(TOOL, "--input", path, "--output", tmp_path / "out.pth", "--to", "eva02")
    message, hint = result.stderr.strip().splitlines()[-2:]
    assert result.returncode == 2 and hint == "(--debug shows the traceback)"
    assert expected in message and "<state dict>" not in message and "--unsafe-pickle" not in message, message
