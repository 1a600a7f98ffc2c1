"""Tests for pptp.models: shapes, known parameter counts, norm variants, torchvision by name."""

from __future__ import annotations

import functools

import pytest
import torch
import torchvision
from opacus.validators import ModuleValidator
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from pptp.errors import ConfigError
from pptp.layers import LayerGroup, derive_layer_groups, group_parameters, layer_groups
from pptp.models import MODELS, NORMS, create_model, group_norm, list_models

NUM_CLASSES = 7
HAND = sorted(MODELS)
TORCHVISION = ["torchvision.vgg11_bn", "torchvision.mobilenet_v3_small", "torchvision.resnet18"]
# torchvision models whose GroupNorm variant is cheap to build (vgg11_bn's clone takes seconds)
TORCHVISION_CHEAP = TORCHVISION[1:]
DIGITS, MNIST, CIFAR = (1, 8), (1, 28), (3, 32)


@functools.cache
def build(name: str, in_channels: int = 3, image_size: int = 32, norm: str = "batch") -> nn.Module:
    """Shared, cached builds: narrow resnet18 so the suite stays fast."""
    width = 8 if name == "resnet18" else None
    return create_model(
        name,
        num_classes=NUM_CLASSES,
        in_channels=in_channels,
        image_size=image_size,
        width=width,
        norm=norm,
    )


@pytest.mark.parametrize("shape", [DIGITS, MNIST, CIFAR], ids=["digits", "mnist", "cifar"])
@pytest.mark.parametrize("name", HAND)
def test_hand_written_forward_shape(name: str, shape: tuple[int, int]) -> None:
    channels, size = shape
    model = build(name, channels, size)
    assert model.training
    out = model(torch.randn(5, channels, size, size))
    assert out.shape == (5, NUM_CLASSES)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_forward_shape(name: str) -> None:
    out = build(name)(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", TORCHVISION_CHEAP)
def test_torchvision_grayscale_input(name: str) -> None:
    out = build(name, in_channels=1)(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, NUM_CLASSES)


def test_torchvision_aux_heads_are_off() -> None:
    model = create_model("torchvision.googlenet", num_classes=3, in_channels=3, image_size=32)
    out = model.train()(torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 3)


@pytest.mark.parametrize("in_channels", [1, 2, 4, 5])
def test_torchvision_input_conv_keeps_model_init(in_channels: int) -> None:
    # same seed: the adapted conv's weights are the 3-channel weights, sliced or tiled
    name = "torchvision.resnet18"
    torch.manual_seed(0)
    rgb = create_model(name, num_classes=NUM_CLASSES, in_channels=3, image_size=32)
    torch.manual_seed(0)
    other = create_model(name, num_classes=NUM_CLASSES, in_channels=in_channels, image_size=32)
    expected = rgb.get_parameter("conv1.weight")[:, [c % 3 for c in range(in_channels)]]
    assert other.get_submodule("conv1").in_channels == in_channels
    assert torch.equal(other.get_parameter("conv1.weight"), expected)
    assert torch.equal(other.get_parameter("fc.weight"), rgb.get_parameter("fc.weight"))


def test_known_parameter_counts() -> None:
    def count(name: str) -> int:
        model = create_model(name, num_classes=10, in_channels=3, image_size=32)
        return sum(p.numel() for p in model.parameters())

    assert count("resnet18") == 11_173_962  # the usual CIFAR ResNet-18 figure
    # 4 convs 3->32->32->64->64 (3x3, no bias), 4 BatchNorms (2C), linear 64->10
    assert count("small_cnn") == 864 + 9216 + 18432 + 36864 + 2 * (32 + 32 + 64 + 64) + 650
    assert count("mlp") == 3072 * 256 + 2 * 256 * 256 + 3 * 2 * 256 + 256 * 10 + 10


MOBILENET_V3_SMALL = (*(f"features.{i}" for i in range(13)), "classifier")
VGG11_BN_STAGES = ("features.0-1", "features.4-5", "features.8-12", "features.15-19")
EXPECTED_GROUPS = {
    "resnet18": ("stem", "layer1", "layer2", "layer3", "layer4", "head"),
    "small_cnn": ("block1", "block2", "block3", "block4", "head"),
    "mlp": ("fc1", "fc2", "fc3", "head"),
    "torchvision.vgg11_bn": (*VGG11_BN_STAGES, "features.22-26", "classifier"),
    "torchvision.mobilenet_v3_small": MOBILENET_V3_SMALL,
    "torchvision.resnet18": ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"),
}


@pytest.mark.parametrize("name", HAND + TORCHVISION)
def test_groups_in_declared_order(name: str) -> None:
    model = build(name)
    assert tuple(g.name for g in layer_groups(model)) == EXPECTED_GROUPS[name]
    # groups follow the model's parameter order (registration order)
    order = [n for n, _ in model.named_parameters()]
    firsts = [order.index(ps[0][0]) for ps in group_parameters(model).values()]
    assert firsts == sorted(firsts)


def test_every_registered_model_has_expected_groups() -> None:
    assert set(HAND) <= set(EXPECTED_GROUPS), "add the new model's groups to EXPECTED_GROUPS"


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_groups_stored_on_instance(name: str) -> None:
    model = build(name)
    stored = vars(model)["layer_groups"]
    assert tuple(n for n, _ in stored) == EXPECTED_GROUPS[name]


# Classifiers built as a container of stages plus a head (features + classifier, an encoder,
# a trunk) and the usual stage-per-child ones. Built on the meta device: no memory, no
# initialisation, so the whole list costs about a second. (RegNet cannot build on meta: its
# width computation reads a tensor.)
TORCHVISION_GROUPED = [
    "alexnet",
    "convnext_tiny",
    "densenet121",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "googlenet",
    "inception_v3",
    "maxvit_t",
    "mnasnet0_5",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "resnet18",
    "resnet101",
    "resnext50_32x4d",
    "shufflenet_v2_x0_5",
    "squeezenet1_0",
    "swin_t",
    "vgg11",
    "vgg16_bn",
    "vit_b_16",
    "wide_resnet50_2",
]


@pytest.mark.parametrize("name", TORCHVISION_GROUPED)
def test_torchvision_models_get_at_least_four_stage_groups(name: str) -> None:
    options = (
        {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    )
    with torch.device("meta"):
        model = torchvision.models.get_model(name, weights=None, num_classes=10, **options)
    groups = derive_layer_groups(model)
    assert len(groups) >= 4, [g.name for g in groups]
    grouped = _assign_all(model, groups)
    # no group holds the bulk of the model's layers, except a classifier-sized head
    biggest = max(len(params) for params in grouped.values())
    assert biggest < 0.8 * sum(len(params) for params in grouped.values())


def _assign_all(model: nn.Module, groups: tuple[LayerGroup, ...]) -> dict[str, list[str]]:
    """Every parameter in exactly one group (via the models' own check)."""
    setattr(model, "layer_groups", groups)  # noqa: B010
    return {g: [n for n, _ in ps] for g, ps in group_parameters(model).items()}


def test_regnet_groups_are_its_trunk_stages() -> None:
    model = create_model("torchvision.regnet_y_400mf", num_classes=3, in_channels=3, image_size=32)
    stages = tuple(f"trunk_output.block{i}" for i in range(1, 5))
    assert tuple(g.name for g in layer_groups(model)) == ("stem", *stages, "fc")


def test_vit_groups_are_encoder_layers_with_embeddings_first() -> None:
    with torch.device("meta"):
        model = torchvision.models.get_model("vit_b_16", weights=None, num_classes=10)
    groups = {g.name: g for g in derive_layer_groups(model)}
    assert list(groups)[:2] == ["conv_proj", "encoder.layers.encoder_layer_0"]
    assert list(groups)[-3:] == ["encoder.layers.encoder_layer_11", "encoder.ln", "heads"]
    assert groups["conv_proj"].matches("class_token")  # root token: the first group
    assert groups["encoder.layers.encoder_layer_0"].matches("encoder.pos_embedding")


def _norm_types(model: nn.Module) -> set[type]:
    return {type(m) for m in model.modules() if isinstance(m, _BatchNorm | nn.GroupNorm)}


@pytest.mark.parametrize("name", HAND + TORCHVISION_CHEAP)
def test_group_norm_variant_has_no_batchnorm(name: str) -> None:
    model = build(name, norm="group")
    assert _norm_types(model) == {nn.GroupNorm}
    assert ModuleValidator.is_valid(model)  # Opacus can compute per-example gradients
    assert not ModuleValidator.is_valid(build(name))  # the BatchNorm variant is not
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            assert m.num_channels % m.num_groups == 0
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", HAND)
def test_no_norm_variant_has_biases_instead(name: str) -> None:
    model = build(name, norm="none")
    assert _norm_types(model) == set()
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            assert m.bias is not None
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize(
    ("channels", "groups"),
    [(1, 1), (2, 1), (8, 1), (24, 3), (32, 4), (64, 8), (72, 9), (256, 32), (512, 32)],
)
def test_group_norm_groups_divide_channels(channels: int, groups: int) -> None:
    norm = group_norm(channels)
    assert norm.num_groups == groups
    assert channels % groups == 0
    assert channels // groups >= 8 or groups == 1


def test_group_norm_on_a_one_by_one_map() -> None:
    # narrow small_cnn on 8x8 digits: every norm sees >= 2 values per group in training
    model = create_model(
        "small_cnn", num_classes=3, in_channels=1, image_size=8, width=4, norm="group"
    )
    out = model.train()(torch.randn(1, 1, 8, 8))
    assert out.shape == (1, 3)
    model = create_model(
        "resnet18", num_classes=3, in_channels=1, image_size=8, width=2, norm="group"
    )  # layer4: 16 channels at 1x1
    assert model.train()(torch.randn(1, 1, 8, 8)).shape == (1, 3)


def test_dry_run_leaves_model_untouched() -> None:
    torch.manual_seed(3)
    model = create_model("small_cnn", num_classes=NUM_CLASSES, in_channels=1, image_size=8)
    after_create = torch.rand(1)
    assert model.training
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.num_batches_tracked is not None and m.running_mean is not None
            assert m.num_batches_tracked.item() == 0
            assert torch.all(m.running_mean == 0)
    # the factory alone, no dry run: same weights, same RNG position afterwards
    torch.manual_seed(3)
    bare = MODELS["small_cnn"](
        num_classes=NUM_CLASSES, in_channels=1, image_size=8, width=None, norm=NORMS["batch"]
    )
    assert torch.equal(torch.rand(1), after_create)
    for a, b in zip(model.parameters(), bare.parameters(), strict=True):
        assert torch.equal(a, b)


def test_list_models() -> None:
    assert list_models() == sorted(MODELS) == ["mlp", "resnet18", "small_cnn"]
    assert list_models("res*") == ["resnet18"]
    with_tv = list_models(include_torchvision=True)
    assert set(TORCHVISION) <= set(with_tv)
    assert set(MODELS) <= set(with_tv)
    assert "torchvision.resnet18" in list_models("*resnet1*", include_torchvision=True)


def test_norms_registry() -> None:
    assert sorted(NORMS) == ["batch", "group", "none"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "resnet19"}, "unknown model 'resnet19'; known: mlp, resnet18, small_cnn"),
        ({"name": "mlp", "norm": "layer"}, "unknown norm 'layer'; known: batch, group, none"),
        ({"name": "torchvision.resnet19"}, "did you mean torchvision.resnet18"),
        ({"name": "torchvision.resnet18", "norm": "none"}, "use 'batch' or 'group'"),
        ({"name": "torchvision.resnet18", "width": 8}, "hand-written models only"),
        ({"name": "mlp", "num_classes": 0}, "num_classes must be a positive integer"),
        ({"name": "mlp", "image_size": -1}, "image_size must be a positive integer"),
        ({"name": "mlp", "width": 0}, "width must be a positive integer"),
        (
            {"name": "torchvision.squeezenet1_0", "image_size": 8},
            "torchvision.squeezenet1_0 cannot take 3x8x8 inputs",
        ),
    ],
)
def test_create_model_errors(kwargs: dict, message: str) -> None:
    full = {"num_classes": NUM_CLASSES, "in_channels": 3, "image_size": 32, **kwargs}
    name = full.pop("name")
    with pytest.raises(ConfigError, match=message):
        create_model(name, **full)
