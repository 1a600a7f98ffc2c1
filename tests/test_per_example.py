"""Per-example gradients from the ordinary backward pass agree with torch.func's, for the chosen
parameters only, in every layout and around in-place ops."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from pptp.errors import ConfigError
from pptp.per_example import (
    Factored,
    Formed,
    PerExampleGrads,
    _unfold,
    chunk_size,
    per_example,
    refuse_batchnorm,
)


class Scaled(nn.Module):
    """A module with its own parameter and no Opacus grad sampler (like ConvNeXt's blocks)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.scale = nn.Parameter(torch.full((channels, 1, 1), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale * self.conv(x)


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.GroupNorm(2, 8),
        nn.ReLU(inplace=True),  # modifies the GroupNorm's output in place (torchvision style)
        Scaled(8),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),  # 4x4 map, few channels: formed
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),  # 2x2 map: kept as factors (ghost norms)
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),  # on vectors: factors
    )


def reference(
    model: nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """torch.func: grad of each example's own cross-entropy, (n, *shape) per chosen name."""
    params = dict(model.named_parameters())
    chosen = {n: params[n].detach() for n in names}

    def loss_one(ps: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, {**params, **ps}, (xi[None],))
        return nn.functional.cross_entropy(out, yi[None])

    return vmap(grad(loss_one), in_dims=(None, 0, 0))(chosen, x, y)  # type: ignore[no-any-return]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize(
    ("names", "forms"),
    [
        (["0.weight", "1.weight", "1.bias"], {Formed}),  # conv, GroupNorm before in-place ReLU
        (["3.scale", "3.conv.weight", "3.conv.bias"], {Formed}),  # torch.func fallback
        (["4.weight", "4.bias", "6.weight", "6.bias"], {Formed, Factored}),  # strided convs
        (["9.weight", "9.bias"], {Factored}),  # the linear head
    ],
)
def test_agrees_with_torch_func(layout: str, names: list[str], forms: set[type]) -> None:
    model, n = net(), 6
    x, y = torch.randn(n, 3, 8, 8), torch.randint(0, 5, (n,))
    if layout == "channels_last":  # Opacus' conv sampler alone reads these wrongly
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    params = dict(model.named_parameters())
    ref = {k: g / n for k, g in reference(model, names, x, y).items()}  # mean loss: grad l_i / n
    grads = PerExampleGrads(model, {k: params[k] for k in names})
    nn.functional.cross_entropy(model(x), y).backward()
    parts = grads.pop()
    assert {type(p) for p in parts} == forms
    got = per_example(parts)
    assert set(got) == set(names)
    for k in names:
        assert got[k].shape == (n, *params[k].shape)
        torch.testing.assert_close(got[k], ref[k], atol=1e-6, rtol=1e-4)
        if k in grads.taken:  # conv / linear: autograd's own batch gradient is not computed
            assert params[k].grad is None and not params[k].requires_grad
        else:
            torch.testing.assert_close(got[k].sum(0), params[k].grad)  # they sum to .grad
    # what the noise operator uses: norms over all chosen parameters, weighted sums
    norms = sum(p.sq_norms() for p in parts)
    expected = sum(ref[k].flatten(1).square().sum(1) for k in names)
    torch.testing.assert_close(norms, expected, atol=1e-8, rtol=1e-4)
    weights = torch.rand(n)
    summed = {k: v for p in parts for k, v in p.weighted_sum(weights).items()}
    for k in names:
        torch.testing.assert_close(summed[k], torch.einsum("n,n...->...", weights, ref[k]))
    assert grads.bytes_per_example == sum(p.nbytes() for p in parts) / n
    grads.remove()
    assert grads.pop() == []
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
        nn.Conv2d(3, 4, 3, padding="same", dilation=2),
        nn.Conv2d(3, 4, 5, padding="valid"),
    ],
)
def test_unfold_matches_torch_in_any_layout(conv: nn.Conv2d, layout: torch.memory_format) -> None:
    x = torch.randn(2, 3, 9, 8).contiguous(memory_format=layout)
    ours = _unfold(x, conv)  # (n, positions, c k k)
    hwc = _unfold(x, conv, hwc=True)  # (n, positions, k k c)
    kh, kw = conv.kernel_size
    torch.testing.assert_close(hwc.unflatten(2, (kh, kw, 3)).movedim(-1, 2).flatten(2), ours)
    padding = conv.padding
    if isinstance(padding, str):  # torch's unfold takes numbers: same padding is symmetric here
        padding = (0, 0) if padding == "valid" else (2, 2)
    theirs = nn.functional.unfold(
        x, conv.kernel_size, dilation=conv.dilation, padding=padding, stride=conv.stride
    )
    torch.testing.assert_close(ours, theirs.transpose(1, 2))


def test_only_hooks_modules_owning_chosen_parameters_and_removes_them() -> None:
    model = net()
    grads = PerExampleGrads(model, {"9.weight": model.get_parameter("9.weight")})
    hooked = [name for name, m in model.named_modules() if m._forward_hooks]
    assert hooked == ["9"]
    grads.remove()
    assert all(not m._forward_hooks for m in model.modules())


def test_eval_mode_and_no_grad_collect_nothing() -> None:
    model = net()
    grads = PerExampleGrads(model, dict(model.named_parameters()))
    model.eval()
    model(torch.randn(2, 3, 8, 8))
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 8, 8))
    assert grads.pop() == []
    grads.remove()


def test_chunk_size_keeps_per_example_memory_within_budget() -> None:
    assert chunk_size(4000.0, 256, budget=40_000) == 10
    assert chunk_size(4000.0, 8, budget=40_000) == 8  # never more than the batch
    assert chunk_size(4000.0, 256, budget=100) == 1  # never less than one example


def test_refuse_batchnorm_names_the_layer_and_the_fix() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    with pytest.raises(ConfigError, match=r"operator .noise. .*\(found .1.\).*model\.norm: group"):
        refuse_batchnorm(model, "operator 'noise'")
    refuse_batchnorm(nn.Sequential(nn.Conv2d(1, 2, 3), nn.GroupNorm(1, 2)), "x")
