"""ONNX export at every input size: the adaptive pools of torchvision's and timm's VGGs, which
``torch.onnx.export`` refuses where the feature map is not a multiple of 7, are folded into the
layer after them (exactly) in the exported copy; the ONNX file computes the checkpoint's logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tp_vgg
from tp_vgg.export.folding import MatrixPool, fold_adaptive_pools, pool_matrix

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.mark.parametrize("h, w, oh, ow", [(1, 1, 7, 7), (2, 3, 7, 7), (5, 9, 7, 7),
                                          (13, 13, 7, 7), (9, 4, 3, 5), (7, 7, 7, 7)])
def test_pool_matrix_is_the_adaptive_pool(h, w, oh, ow):
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    pool = MatrixPool(pool_matrix(h, oh), pool_matrix(w, ow))
    assert torch.allclose(pool(x), F.adaptive_avg_pool2d(x, (oh, ow)), atol=1e-6)
    assert torch.allclose(pool_matrix(h, oh).sum(1), torch.ones(oh, dtype=torch.float64))


def _onnx_logits(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


def _gemm_inputs(path):
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(path)).graph
    inits = {t.name: numpy_helper.to_array(t).shape for t in g.initializer}
    return [inits[n.input[1]] for n in g.node if n.op_type == "Gemm"]


SIZES = [32, pytest.param(64, marks=pytest.mark.slow), pytest.param(224, marks=pytest.mark.slow)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", ["vgg11", "timm:vgg11"])
def test_export_of_a_pruned_checkpoint_equals_it_at_every_size(run_cli, tmp_path, name, size):
    out, onnx_path = tmp_path / "run", tmp_path / "m.onnx"
    r = run_cli("prune", "--model", name, "--num-classes", "10", "--input-size", size,
                "--ratio", "0.75", "--out", out)
    assert r.code == 0, r.err
    r = run_cli("export", "--checkpoint", out / "pruned.pt", "--onnx", onnx_path)
    assert r.code == 0, r.err
    assert "onnxruntime matches PyTorch" in r.out
    ckpt = tp_vgg.load_checkpoint(str(out / "pruned.pt"))
    model = tp_vgg.load(str(out / "pruned.pt")).eval()
    x = ckpt.spec.example_input(batch=3)
    with torch.no_grad():
        want = model(x)
    got = _onnx_logits(onnx_path, x)
    assert got.shape == want.shape == (3, 10)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    feat = size // 32  # the last feature map is feat x feat
    if feat % 7:  # the pool was folded: the layer after it reads the feature map itself
        assert "folded" in r.out and "exact at input size" in r.out
        if name == "vgg11":
            c = model.features[-3].out_channels
            assert _gemm_inputs(onnx_path)[0] == (model.classifier[0].out_features,
                                                  c * feat * feat)
    else:
        assert "folded" not in r.out


def test_a_pool_onnx_cannot_export_elsewhere_becomes_two_matrix_products(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((3, 3)),
                          nn.Flatten(), nn.Linear(36, 5)).eval()
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(Exception, match="factor of input size"):
        torch.onnx.export(model, (x,), str(tmp_path / "raw.onnx"), dynamo=False)
    folded, notes = fold_adaptive_pools(model, x)
    assert notes == ["wrote 2 (4x4 -> 3x3) as two matrix products"]
    assert isinstance(folded[2], MatrixPool) and isinstance(model[2], nn.AdaptiveAvgPool2d)
    torch.onnx.export(folded, (x,), str(tmp_path / "m.onnx"), dynamo=False)
    with torch.no_grad():
        assert torch.allclose(_onnx_logits(tmp_path / "m.onnx", x), model(x), atol=1e-6)


def test_a_pool_onnx_can_export_is_left_alone():
    model = nn.Sequential(nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten())
    folded, notes = fold_adaptive_pools(model, torch.randn(1, 2, 14, 14))
    assert folded is model and notes == []
