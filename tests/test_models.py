import pytest
import torch
import torch.nn as nn
from conftest import zoo_spec

from tp_vgg import UserError
from tp_vgg.models.zoo import (CIFAR_VGGS, MODELS, TIMM_VGGS, TORCHVISION_VGGS, ModelSpec,
                               build_model, check_forward, list_models, timm_installed)


def test_zoo_lists_all_sixteen_vggs_and_timms_with_timm():
    names = list(list_models())
    assert names == TORCHVISION_VGGS + CIFAR_VGGS + (TIMM_VGGS if timm_installed() else [])
    assert TIMM_VGGS == ["timm:" + n for n in TORCHVISION_VGGS]
    assert TORCHVISION_VGGS == ["vgg11", "vgg11_bn", "vgg13", "vgg13_bn",
                                "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]
    assert CIFAR_VGGS == ["cifar_" + n for n in TORCHVISION_VGGS]


@pytest.mark.parametrize("name", TORCHVISION_VGGS + CIFAR_VGGS)
def test_forward_shape(name):
    spec = zoo_spec(name)
    model = build_model(spec).eval()
    with torch.no_grad():
        y = model(spec.example_input(batch=2))
    assert y.shape == (2, 50)


@pytest.mark.parametrize("name,convs", [("cifar_vgg11", 8), ("cifar_vgg13", 10),
                                        ("cifar_vgg16", 13), ("cifar_vgg19", 16)])
def test_cifar_form_depth_width_and_bn(name, convs):
    plain = build_model(ModelSpec(name, width=0.25))
    bn = build_model(ModelSpec(name + "_bn", width=0.25))
    conv_layers = [m for m in plain.modules() if isinstance(m, nn.Conv2d)]
    assert len(conv_layers) == convs
    assert conv_layers[0].out_channels == 16 and conv_layers[-1].out_channels == 128
    assert all(m.kernel_size == (3, 3) for m in conv_layers)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == convs
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())


def test_cifar_in_channels_and_input_size():
    spec = ModelSpec("cifar_vgg11_bn", in_channels=1, input_size=64, num_classes=7).resolved()
    model = build_model(spec).eval()
    assert model.features[0].in_channels == 1
    assert model(spec.example_input(batch=3)).shape == (3, 7)


def test_input_too_small_is_a_user_error():
    spec = ModelSpec("cifar_vgg11_bn", input_size=16).resolved()
    with pytest.raises(UserError, match=r"cifar_vgg11_bn cannot run on a 1x3x16x16 input.*--input-size"):
        check_forward(build_model(spec), spec)


def test_torchvision_default_input_and_head():
    spec = ModelSpec("vgg11").resolved()
    assert (spec.input_size, spec.in_channels) == (224, 3)
    model = build_model(spec)
    assert model.classifier[0].in_features == 25088 and model.classifier[-1].out_features == 1000


def test_torchvision_rejects_cifar_only_options():
    with pytest.raises(UserError, match="--width is not accepted by vgg11"):
        build_model(ModelSpec("vgg11", width=0.5))


def test_unknown_model_lists_accepted_names():
    with pytest.raises(UserError, match=r"unknown model 'vgg99'.*cifar_vgg11_bn"):
        build_model(ModelSpec("vgg99"))


FACTORY_FILE = '''
import torch.nn as nn
def make(num_classes=10, hidden=8):
    return nn.Sequential(nn.Conv2d(3, hidden, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(hidden, num_classes))
def broken(**kw):
    raise ValueError("no such depth")
def not_a_model(**kw):
    return 42
'''


@pytest.fixture
def factory_file(tmp_path):
    path = tmp_path / "my_vgg.py"
    path.write_text(FACTORY_FILE)
    return path


def test_user_factory_by_file_path_with_kwargs(factory_file):
    spec = ModelSpec(f"{factory_file}:make", num_classes=4, kwargs={"hidden": 6}).resolved()
    model = build_model(spec)
    assert model[0].out_channels == 6 and model[-1].out_features == 4
    assert (spec.input_size, spec.in_channels) == (32, 3)


def test_user_factory_by_import_string(factory_file, monkeypatch):
    monkeypatch.syspath_prepend(str(factory_file.parent))
    model = build_model(ModelSpec("my_vgg:make", num_classes=3))
    assert model[-1].out_features == 3


@pytest.mark.parametrize("target,message", [
    ("{f}:broken", r"factory .* raised ValueError: no such depth"),
    ("{f}:not_a_model", r"returned int, not a torch.nn.Module"),
    ("{f}:missing", r"has no callable 'missing'"),
    ("no_such_module_xyz:make", r"cannot import module 'no_such_module_xyz'"),
    ("{d}/nope.py:make", r"model file .* does not exist"),
])
def test_user_factory_errors(factory_file, target, message):
    target = target.format(f=factory_file, d=factory_file.parent)
    with pytest.raises(UserError, match=message):
        build_model(ModelSpec(target))


def test_registry_refuses_duplicates():
    with pytest.raises(ValueError, match="registered twice"):
        MODELS.register("vgg11", MODELS.get("vgg11"))
