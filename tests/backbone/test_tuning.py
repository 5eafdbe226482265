"""Freezing and LoRA (eva02.backbone.tuning): against closed forms and against the plain model."""
import pytest
import torch

from eva02.backbone import LoRALinear, create_trv, load_checkpoint, merge_lora, param_groups
from eva02.backbone.checkpoint import IncompleteCheckpointError, check_complete

SMALL = dict(depth=3, embed_dim=64, num_heads=2, mlp_hidden=170, img_size=64, patch_size=16)


def small(**kwargs):
    torch.manual_seed(0)
    return create_trv("eva02_B", **SMALL, **kwargs)  # B: sub-LN, so w3 sees the ffn_ln output


def trained_adapters(model):
    """Give every adapter a non-zero update, as training would."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".lora_b"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


def test_lora_linear_is_the_closed_form():
    layer = LoRALinear(6, 5, bias=True, rank=2, alpha=3.0)
    with torch.no_grad():
        layer.lora_b.normal_()
    x = torch.randn(4, 6)
    by_hand = x @ layer.weight.T + layer.bias + 1.5 * (x @ layer.lora_a.T) @ layer.lora_b.T
    torch.testing.assert_close(layer(x), by_hand)


def test_a_plain_checkpoint_starts_the_adapter_model_as_the_plain_model():
    plain = small().eval()
    adapted = small(lora=dict(rank=4, alpha=8))
    report = load_checkpoint(adapted, plain.state_dict())
    assert report.missing and all(".lora_" in k for k in report.missing)  # only the adapters: fresh
    check_complete("plain.pth", report.missing, report.unexpected, "")  # they are not "left unloaded"
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(adapted.eval()(x), plain(x), rtol=0, atol=0)  # B = 0: not a bit changed


def test_merged_weights_give_the_adapter_models_outputs():
    adapted = trained_adapters(small(lora=dict(rank=4, alpha=8))).eval()
    targets = [n for n, m in adapted.named_modules() if isinstance(m, LoRALinear)]
    assert len(targets) == 3 * 5  # qkv, proj, w1, w2, w3 of each block
    merged = merge_lora(adapted.state_dict())
    assert not any(".lora_" in k for k in merged)
    w = adapted.blocks[1].mlp.w2
    torch.testing.assert_close(merged["blocks.1.mlp.w2.weight"], w.weight + 2.0 * w.lora_b @ w.lora_a)
    plain = small().eval()
    load_checkpoint(plain, merged)
    x = torch.randn(2, 3, 64, 64)
    out, ref = plain(x), adapted(x)
    assert (ref - small().eval()(x)).abs().max() > 1e-2  # the adapters do change the output...
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)  # ...and the merge keeps that change


def test_only_adapters_train_and_an_unmerged_checkpoint_is_refused_by_a_plain_model():
    adapted = small(lora=dict(rank=2, alpha=2, targets=("qkv",)))
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable == {f"blocks.{i}.attn.qkv.lora_{ab}" for i in range(3) for ab in "ab"}
    plain = small()
    report = load_checkpoint(plain, adapted.state_dict())
    with pytest.raises(IncompleteCheckpointError, match="LoRA adapter tensors .* --to merged"):
        check_complete("lora.pth", report.missing, report.unexpected, "")
    with pytest.raises(ValueError, match="no TrV projections"):
        small(lora=dict(rank=2, targets=("fc1",)))


@pytest.mark.parametrize("frozen_stages", [0, 2, "all"])
def test_freezing_leaves_out_what_it_names_and_keeps_the_rest_of_layer_decay(frozen_stages):
    model = small(frozen_stages=frozen_stages, drop_path_rate=0.2)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    blocks = {"all": 3}.get(frozen_stages, frozen_stages)
    expected = {n for n, _ in model.named_parameters() if n.startswith(("patch_embed.", "pos_embed"))
                or any(n.startswith(f"blocks.{i}.") for i in range(blocks))}
    assert frozen == expected
    model.train()
    assert [b.training for b in model.blocks] == [i >= blocks for i in range(3)]  # frozen blocks: no drop path
    groups = param_groups(model.named_parameters(), 1e-3, 0.05, 3, 0.8)
    reference = {n: g["lr"] for g in param_groups(small().named_parameters(), 1e-3, 0.05, 3, 0.8)
                 for n in g["param_names"]}
    names = [n for g in groups for n in g["param_names"]]
    assert sorted(names) == sorted(set(reference) - frozen)  # what trains, each at its own layer-decay lr
    assert all(g["lr"] == reference[n] for g in groups for n in g["param_names"])
    with pytest.raises(ValueError, match="frozen_stages=5"):
        small(frozen_stages=5)
    assert all(p.requires_grad for p in small(frozen_stages=-1).parameters())
