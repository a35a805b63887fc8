"""A finished trial's model, reused for the next trial, equals a fresh copy of the pretrained model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from covers import model_spares
from covers.models.create import create_model
from covers.models.freeze import freeze_groups
from covers.training.loop import create_runtime

LITE0 = "tf_efficientnet_lite0"


@pytest.fixture(autouse=True)
def no_spares():
    model_spares.clear()
    yield
    model_spares.clear()


def used_model(n_frozen: int = 3) -> torch.nn.Module:
    """A model after a trial: frozen groups (timm swaps their BatchNorms), channels_last, one SGD step (weights,
    BatchNorm statistics and gradients changed), then switched to eval mode."""
    model = create_model(LITE0, 5, weights="package")
    freeze_groups(model, n_frozen)
    create_runtime("cpu", "fp32", channels_last=True).place(model).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x = torch.randn(4, 3, 32, 32).to(memory_format=torch.channels_last)
    F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    return model.eval()


def assert_equal_models(a: torch.nn.Module, b: torch.nn.Module) -> None:
    assert [(n, type(m), m.training) for n, m in a.named_modules()] == [
        (n, type(m), m.training) for n, m in b.named_modules()
    ]
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    assert [(n, p.requires_grad, p.grad) for n, p in a.named_parameters()] == [
        (n, p.requires_grad, None) for n, p in b.named_parameters()
    ]


def test_a_released_model_is_restored_equal_to_a_fresh_copy():
    used = used_model()
    assert model_spares.release(used)
    torch.manual_seed(1)
    reused = create_model(LITE0, 5, weights="package")
    assert reused is used
    torch.manual_seed(1)
    fresh = create_model(LITE0, 5, weights="package")  # no spare left: a deep copy
    assert fresh is not reused
    assert_equal_models(reused, fresh)
    # frozen again with fewer groups, both train the same
    for model in (reused, fresh):
        freeze_groups(model, 1)
        create_runtime("cpu", "fp32", channels_last=False).place(model).train()
        assert all(p.is_contiguous() for p in model.parameters())
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(reused(x), fresh(x))


@pytest.mark.parametrize("change", ["hook", "compile"])
def test_a_model_with_hooks_or_compiled_is_copied_afresh(change):
    used = used_model(n_frozen=0)
    if change == "hook":
        used.blocks[0].register_forward_hook(lambda *args: None)
    else:
        used.compile()
    model_spares.release(used)
    torch.manual_seed(1)
    model = create_model(LITE0, 5, weights="package")
    assert model is not used
    assert not any(m._forward_hooks for m in model.modules()) and model._compiled_call_impl is None


def test_only_models_from_the_pretrained_cache_are_taken():
    assert not model_spares.release(create_model(LITE0, 5, weights="none"))
    assert not model_spares._spares
