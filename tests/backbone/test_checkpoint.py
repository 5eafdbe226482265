"""load_checkpoint on every layout of docs/reference.md §5, built by the test itself."""
import argparse
import os

import numpy as np
import pytest
import torch

from eva02.backbone import create_trv, load_checkpoint, official_p14_to_p16, read_state_dict, to_official

TINY = dict(depth=2, embed_dim=64, num_heads=2, mlp_hidden=170)


def _source(**kw):
    torch.manual_seed(1)
    return create_trv("eva02_B", **TINY, with_cls_token=True, with_mask_token=True, **kw).eval()


def _official_mim(model):
    """The DeepSpeed MIM layout: official names, RoPE buffers, pre-training head, all under `module`."""
    sd = to_official(model)
    sd["rope.freqs_cos"] = torch.zeros(256, 32)
    sd["blocks.0.attn.rope.freqs_sin"] = torch.zeros(256, 32)
    sd["norm.weight"], sd["norm.bias"] = torch.ones(64), torch.zeros(64)
    sd["lm_head.weight"], sd["lm_head.bias"] = torch.zeros(32, 64), torch.zeros(32)
    return {"module": sd, "optimizer": {}, "epoch": 3}


def _det_model(**kw):
    return create_trv("eva02_B", **TINY, patch_size=16, window_size=4, global_blocks=(1,), **kw)


def test_round_trip_own_layout(tmp_path):
    src = _source()
    torch.save({"model": src.state_dict()}, tmp_path / "own.pth")
    dst = create_trv("eva02_B", **TINY, with_cls_token=True, with_mask_token=True)
    report = load_checkpoint(dst, tmp_path / "own.pth")
    assert not report.missing and not report.unexpected
    x = torch.randn(1, 3, 56, 42)
    torch.testing.assert_close(dst.eval().forward_tokens(x), src.forward_tokens(x))


def test_mim_layout_same_patch_size_gives_same_outputs(tmp_path):
    src = _source()
    torch.save(_official_mim(src), tmp_path / "eva02_B_pt_p14.pt")
    dst = create_trv("eva02_B", **TINY, with_cls_token=True, with_mask_token=True).eval()
    report = load_checkpoint(dst, tmp_path / "eva02_B_pt_p14.pt")
    assert not report.missing and not report.unexpected
    assert "rope.freqs_cos" in report.derived and "lm_head.weight" in report.skipped
    x = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(dst.forward_tokens(x), src.forward_tokens(x))


@pytest.mark.parametrize("method", ["bicubic", "pinv"])
def test_mim_p14_into_p16_detection_backbone(tmp_path, method):
    src = _source()
    torch.save(_official_mim(src), tmp_path / "mim.pt")
    dst = _det_model()
    report = load_checkpoint(dst, tmp_path / "mim.pt", patch_resize=method)
    assert report.missing == [] and report.unexpected == []
    assert {"cls_token", "mask_token"} <= set(report.skipped)  # pre-training tokens a detector has no use for
    assert dst.patch_embed.proj.weight.shape[-1] == 16 and dst.pos_embed.shape == (1, 1 + 14 * 14, 64)
    assert any("14->16" in c for c in report.converted)


def test_pinv_resize_keeps_token_embeddings():
    """FlexiViT property: <resized kernel, bilinearly resized patch> == <kernel, patch>."""
    from eva02.backbone.checkpoint import resize_patch_kernel

    w = torch.randn(8, 3, 14, 14, dtype=torch.float64)
    patch = torch.randn(1, 3, 14, 14, dtype=torch.float64)
    big = torch.nn.functional.interpolate(patch, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    w16 = resize_patch_kernel(w, 16, "pinv")
    torch.testing.assert_close((w16 * big).sum((1, 2, 3)), (w * patch).sum((1, 2, 3)))


def test_p14to16_layout_loads_without_resizing(tmp_path):
    src = _source()
    converted = official_p14_to_p16(_official_mim(src)["module"])
    assert converted["patch_embed.proj.weight"].shape[-1] == 16 and converted["pos_embed"].shape[1] == 197
    assert not any("rope" in k for k in converted)
    torch.save({"model": converted}, tmp_path / "p14to16.pt")
    dst = _det_model()
    report = load_checkpoint(dst, tmp_path / "p14to16.pt")
    assert report.missing == [] and not any("14->16" in c or "pos_embed" in c for c in report.converted)
    torch.testing.assert_close(dst.patch_embed.proj.weight, converted["patch_embed.proj.weight"])


def test_detectron2_detector_layout_with_ema(tmp_path):
    src = _det_model()
    net = {f"backbone.net.{k}": v for k, v in to_official(src).items()}
    net["backbone.net.rope_win.freqs_cos"] = torch.zeros(16, 32)
    net["backbone.net.blocks.0.attn.rope.freqs_cos"] = torch.zeros(16, 32)
    heads = {"backbone.simfp_2.0.weight": torch.zeros(1), "roi_heads.box_head.0.conv1.weight": torch.zeros(1),
             "proposal_generator.rpn_head.conv.weight": torch.zeros(1)}
    ema = {k: v + 1 for k, v in net.items()}
    torch.save({"model": {**net, **heads}, "ema_state": {**ema, **heads}, "iteration": 5}, tmp_path / "det.pth")

    dst = _det_model()
    report = load_checkpoint(dst, tmp_path / "det.pth")
    assert report.missing == [] and report.unexpected == []
    assert set(heads) <= set(report.skipped)
    torch.testing.assert_close(dst.blocks[0].attn.q_bias, src.blocks[0].attn.q_bias)

    load_checkpoint(dst, tmp_path / "det.pth", use_ema=True)
    torch.testing.assert_close(dst.blocks[0].attn.q_bias, src.blocks[0].attn.q_bias + 1)
    x = torch.randn(1, 3, 80, 48)
    load_checkpoint(dst, tmp_path / "det.pth")
    torch.testing.assert_close(dst.eval()(x), src.eval()(x))


def test_mmseg_prefix_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    src = _det_model()
    save_file({f"backbone.{k}": v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    dst = _det_model()
    report = load_checkpoint(dst, tmp_path / "w.safetensors")
    assert report.missing == [] and "stripped prefix 'backbone.'" in report.converted


def test_equals_timm_eva_with_the_same_weights():
    """Our TrV and timm's Eva (fused and unfused timm layouts) give identical tokens."""
    timm = pytest.importorskip("timm")
    for timm_name, ours, kw in [("eva02_tiny_patch14_224", "eva02_Ti", {}),
                                ("eva02_base_patch14_224", "eva02_B", {"qkv_fused": False, "depth": 3})]:
        ref = timm.create_model(timm_name, pretrained=False, **kw).eval()
        for p in ref.parameters():
            p.data.normal_(0, 0.05)
        ref.norm = torch.nn.Identity()
        model = create_trv(ours, with_cls_token=True, depth=kw.get("depth", 12)).eval()
        report = load_checkpoint(model, ref.state_dict())
        assert report.missing == [] and report.unexpected == []
        x = torch.randn(1, 3, 224, 224)
        with torch.no_grad():
            torch.testing.assert_close(model.forward_tokens(x), ref.forward_features(x), rtol=1e-4, atol=1e-4)


def test_errors_name_the_file_or_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_checkpoint(_det_model(), tmp_path / "nowhere.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_checkpoint(_det_model(), tmp_path / "junk.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="list.pt.*list"):
        load_checkpoint(_det_model(), tmp_path / "list.pt")
    bad = _det_model().state_dict()
    bad["blocks.1.mlp.w1.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="blocks.1.mlp.w1.weight"):
        load_checkpoint(_det_model(), bad)
    with pytest.raises(KeyError, match="ema_state"):
        load_checkpoint(_det_model(), _det_model().state_dict(), use_ema=True)


def test_a_file_that_is_no_checkpoint_says_so_without_suggesting_unpickling(tmp_path):
    path = tmp_path / "random.pth"
    path.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    with pytest.raises(ValueError, match="random.pth is not a checkpoint") as error:
        read_state_dict(path)
    assert "unsafe" not in str(error.value) and "weights_only=False" not in str(error.value)


class _RunsCode:
    """An object whose unpickling calls a function: what weights_only loading exists to refuse."""

    def __reduce__(self):
        return (print, ("unpickled code ran",))


def _as_numpy1_file(src, dst):
    """Rewrite a torch.save archive as numpy 1.x wrote it: the numpy globals under `numpy.core` (the module name
    in released files) instead of numpy 2's `numpy._core`. torch.save pickles with protocol 2, whose GLOBAL
    opcode spells the module as newline-terminated text, so the rename is a byte substitution."""
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray\n" in data
                data = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
            zout.writestr(item, data)


def test_official_non_tensor_objects_load_with_weights_only(tmp_path):
    """DeepSpeed's argparse.Namespace and detectron2's numpy scalars / arrays load without --unsafe-pickle,
    also under the numpy 1 module names of the released files; the objects equal what full unpickling gives."""
    extras = {"args": argparse.Namespace(lr=1.5e-3, model="eva02_B"), "step": np.float64(2.5),
              "iteration": np.int64(7), "milestones": np.array([3, 5]), "dtype": np.dtype("float32")}
    torch.save({"module": _det_model().state_dict(), **extras}, tmp_path / "numpy2.pth")
    _as_numpy1_file(tmp_path / "numpy2.pth", tmp_path / "numpy1.pth")
    for name in ("numpy2.pth", "numpy1.pth"):
        safe = read_state_dict(tmp_path / name)
        trusted = torch.load(tmp_path / name, weights_only=False)
        assert safe["args"] == trusted["args"] == extras["args"]
        for key in ("step", "iteration", "dtype"):
            assert safe[key] == trusted[key] and type(safe[key]) is type(extras[key])
        assert np.array_equal(safe["milestones"], extras["milestones"])
        assert load_checkpoint(_det_model(), tmp_path / name).missing == []


def test_objects_that_run_code_are_still_refused(tmp_path, capsys):
    torch.save({"model": {}, "hook": _RunsCode()}, tmp_path / "code.pth")
    with pytest.raises(ValueError, match="code.pth holds pickled objects.*print.*--unsafe-pickle") as error:
        read_state_dict(tmp_path / "code.pth")
    assert "not a checkpoint" not in str(error.value)
    assert "unpickled code ran" not in capsys.readouterr().out
    read_state_dict(tmp_path / "code.pth", weights_only=False)  # the user's explicit choice: it runs
    assert "unpickled code ran" in capsys.readouterr().out


def test_stale_temporaries_of_killed_writes_are_removed(tmp_path):
    import subprocess
    import sys

    from eva02.common.files import atomic_write, remove_stale_temporaries

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has exited
    stale = tmp_path / f".model_0000999.pth.tmp.{dead_pid}"
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f".model_0001999.pth.tmp.{os.getppid()}"  # a writer still running: its file stays
    live.write_bytes(b"being written")
    keep = [tmp_path / "model_final.pth", tmp_path / ".hidden.tmp", tmp_path / "notes.tmp.12"]
    for path in keep:
        path.write_bytes(b"user data")
    assert remove_stale_temporaries(tmp_path) == [str(stale)]
    assert not stale.exists() and live.exists() and all(path.exists() for path in keep)
    assert remove_stale_temporaries(tmp_path / "absent") == []

    def killed_mid_write(tmp):
        open(tmp, "wb").write(b"partial")
        raise KeyboardInterrupt  # an interruption Python sees still cleans up; only a SIGKILL leaves the file

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "x.pth", killed_mid_write)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".x.pth")) == []
