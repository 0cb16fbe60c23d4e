import pytest
import torch.nn as nn
import torchvision

import tp_vgg
from tp_vgg.models.zoo import TORCHVISION_VGGS, CifarVGG, ModelSpec, build_model

TINY_SPEC = ModelSpec("tiny:vgg", input_size=8, in_channels=3).resolved()


def tiny(batch_norm=True) -> nn.Module:
    # conv 3->8 @8x8, pool, conv 8->16 @4x4, pool, avgpool, linear 16->16, linear 16->10
    return CifarVGG([8, "M", 16, "M"], batch_norm=batch_norm, num_classes=10)


def hand_macs(c1, c2, hidden):
    return 3 * c1 * 9 * 8 * 8 + c1 * c2 * 9 * 4 * 4 + c2 * hidden + hidden * 10


def hand_params(c1, c2, hidden, bn=True):
    convs = (3 * c1 * 9 + c1) + (c1 * c2 * 9 + c2)
    return convs + (2 * (c1 + c2) if bn else 0) + (c2 * hidden + hidden) + (hidden * 10 + 10)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_macs_and_params_match_hand_computation(batch_norm):
    c = tp_vgg.count(tiny(batch_norm), TINY_SPEC)
    assert c.macs == hand_macs(8, 16, 16) == 32672  # BN, ReLU and pooling count 0
    assert c.params == hand_params(8, 16, 16, batch_norm)
    assert [l.macs for l in c.layers if l.type != "BatchNorm2d"] == [
        3 * 8 * 9 * 64, 8 * 16 * 9 * 16, 16 * 16, 16 * 10]
    assert all(l.macs == 0 for l in c.layers if l.type == "BatchNorm2d")


def test_pruned_macs_match_hand_computation():
    model = tiny()
    tp_vgg.prune(model, TINY_SPEC, tp_vgg.PruneConfig(ratio=0.5))
    c = tp_vgg.count(model, TINY_SPEC)
    assert c.macs == hand_macs(4, 8, 8) == 11664
    assert c.params == hand_params(4, 8, 8)


def test_count_is_batch_one_and_keeps_the_mode():
    model = tiny().train()
    c = tp_vgg.count(model, TINY_SPEC)
    assert c.macs == 32672
    assert all(m.training for m in model.modules())


def test_unsupported_ops_are_listed_not_warned(capsys, caplog):
    c = tp_vgg.count(tiny(), TINY_SPEC)
    assert c.unsupported_ops == {"aten::max_pool2d": 2}
    captured = capsys.readouterr()
    assert "unsupported" not in (captured.out + captured.err).lower()
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


@pytest.mark.parametrize("name", TORCHVISION_VGGS)
def test_torchvision_vggs_match_torchvision_published_counts(name):
    """torchvision publishes GFLOPS (multiply-adds) and parameter counts for its weights."""
    meta = torchvision.models.get_model_weights(name).IMAGENET1K_V1.meta
    c = tp_vgg.count(build_model(ModelSpec(name)), ModelSpec(name).resolved())
    assert c.params == meta["num_params"]
    assert c.macs / 1e9 == pytest.approx(meta["_ops"], abs=0.006)
