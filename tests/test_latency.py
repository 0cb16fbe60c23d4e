"""Latency measurement: structure and arithmetic, never speed (no timed assertions)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn as nn

import tp_vgg
from tp_vgg.errors import UserError
from tp_vgg.latency import timing as latency
from tp_vgg.models.zoo import ModelSpec, build_model

TINY = ModelSpec("cifar_vgg11_bn", width=0.125, num_classes=10).resolved()
QUICK = dict(warmup=1, repeats=3, threads=1)  # one thread: no OpenMP stalls on a busy machine


@pytest.fixture(scope="module")
def tiny_pair():
    torch.manual_seed(0)
    original = build_model(TINY).eval()
    pruned = copy.deepcopy(original)
    tp_vgg.prune(pruned, TINY, tp_vgg.PruneConfig(ratio=0.5))
    return original, pruned, tp_vgg.count(original, TINY).macs, tp_vgg.count(pruned, TINY).macs


def test_timing_statistics_from_samples():
    t = latency.Timing.from_samples([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (t.median_ms, t.min_ms, t.runs) == (3.0, 1.0, 5)
    assert (t.p25_ms, t.p75_ms) == (2.0, 4.0)
    one = latency.Timing.from_samples([7.0])
    assert one.median_ms == one.p25_ms == one.p75_ms == 7.0


def test_comparison_arithmetic_is_exact():
    o = latency.Timing.from_samples([10.0, 12.0, 11.0])
    p = latency.Timing.from_samples([4.0, 5.0, 6.0])
    c = latency.Comparison.of(64, o, p, mac_ratio=3.0)
    assert c.speedup == 11.0 / 5.0
    assert c.efficiency == c.speedup / 3.0


class Recorder(nn.Module):
    """Records the order in which models run (interleaving) and the batch it saw."""

    def __init__(self, name: str, log: list):
        super().__init__()
        self.name, self.log = name, log
        self.lin = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        self.log.append((self.name, x.shape[0]))
        return self.lin(x).mean((2, 3))


def test_models_are_interleaved_after_warmup():
    log: list = []
    models = {"a": Recorder("a", log), "b": Recorder("b", log)}
    cfg = latency.LatencyConfig(batch_sizes=(2, 3), warmup=2, repeats=4, threads=1)
    out = latency.measure(models, TINY, cfg, prepared=True)
    assert list(out) == [2, 3] and set(out[2]) == {"a", "b"}
    assert all(t.runs == 4 and t.median_ms > 0 for d in out.values() for t in d.values())
    per_batch = [[n for n, b in log if b == bs] for bs in (2, 3)]
    for names in per_batch:
        # one check pass + warm-up per model, then rounds in alternating order: ab ba ab ba
        assert names[:6] == ["a", "a", "a", "b", "b", "b"]
        assert names[6:] == ["a", "b", "b", "a", "a", "b", "b", "a"]


@pytest.mark.parametrize("clock", ["wall", "thread"])
def test_compare_reports_speedup_mac_ratio_efficiency(tiny_pair, clock):
    original, pruned, macs_o, macs_p = tiny_pair
    cfg = latency.LatencyConfig(batch_sizes=(1, 4), clock=clock, **QUICK)
    rep = latency.compare(original, pruned, TINY, cfg, macs_o, macs_p)
    assert [c.batch_size for c in rep.comparisons] == [1, 4]
    for c in rep.comparisons:
        assert c.original.median_ms > 0 and c.pruned.median_ms > 0
        assert c.original.min_ms <= c.original.median_ms <= c.original.p75_ms
        assert c.mac_ratio == macs_o / macs_p > 3
        assert c.speedup == c.original.median_ms / c.pruned.median_ms
        assert c.efficiency == c.speedup / c.mac_ratio
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["macs"] == {"original": macs_o, "pruned": macs_p}
    assert d["environment"]["device"] == "cpu" and d["environment"]["threads"] >= 1
    assert set(d["timings"]) == {"1", "4"} and "efficiency" in d["units"]
    text = latency.format_latency_table(rep)
    assert "efficiency" in text and "speed-up" in text


def test_prepare_copies_and_leaves_the_model_alone(tiny_pair):
    original, _, _, _ = tiny_pair
    original.train()
    cfg = latency.LatencyConfig(channels_last=True, fuse_bn=True, dtype="bf16")
    m = latency.prepare(original, cfg)
    try:
        assert original.training and not m.training
        assert any(isinstance(x, nn.BatchNorm2d) for x in original.modules())
        assert not any(isinstance(x, nn.BatchNorm2d) for x in m.modules())
        conv = m.features[0]
        assert conv.weight.dtype == torch.bfloat16
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        assert original.features[0].weight.dtype == torch.float32
    finally:
        original.eval()


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_low_precision_on_cpu_runs(tiny_pair, dtype):
    original, _, macs, _ = tiny_pair
    cfg = latency.LatencyConfig(batch_sizes=(2,), dtype=dtype, channels_last=True, **QUICK)
    rep = latency.single(original, TINY, cfg, macs)
    assert rep.timings[2]["model"].median_ms > 0 and rep.config.dtype == dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_uses_events(tiny_pair):
    original, pruned, macs_o, macs_p = tiny_pair
    cfg = latency.LatencyConfig(batch_sizes=(8,), device="cuda", dtype="fp16", **QUICK)
    rep = latency.compare(original, pruned, TINY, cfg, macs_o, macs_p)
    assert rep.environment["gpu"] and rep.comparisons[0].pruned.median_ms > 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(dtype="fp8"), "--dtype 'fp8' is not supported; accepted: fp32, fp16, bf16"),
    (dict(batch_sizes=(0,)), "--batch-sizes [0] must be positive integers"),
    (dict(batch_sizes=()), "--batch-sizes [] must be positive integers"),
    (dict(repeats=0), "--repeats must be an integer >= 1"),
    (dict(warmup=-1), "--warmup must be an integer >= 0"),
    (dict(device="tpu"), "--device 'tpu' is not a device; accepted: cpu, cuda, cuda:N"),
    (dict(threads=0), "--threads must be a positive integer"),
    (dict(clock="cycles"), "--clock 'cycles' is not accepted; accepted: wall, thread"),
    (dict(clock="thread", threads=2), "--clock thread measures one CPU thread"),
])
def test_bad_config_is_a_user_error(kwargs, message):
    with pytest.raises(UserError) as e:
        latency.LatencyConfig(**kwargs).validate()
    assert message in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_cuda_without_cuda_is_a_user_error():
    with pytest.raises(UserError, match="CUDA is not available"):
        latency.LatencyConfig(device="cuda").validate()


@pytest.mark.parametrize("text, expected", [("1,64", (1, 64)), ("8", (8,)), (" 4, 2 ,4", (4, 2))])
def test_parse_batch_sizes(text, expected):
    assert latency.parse_batch_sizes(text) == expected


@pytest.mark.parametrize("text", ["0", "1,,2", "a", "-3", "1.5", ""])
def test_parse_batch_sizes_rejects(text):
    with pytest.raises(UserError, match="accepted: comma-separated integers >= 1"):
        latency.parse_batch_sizes(text)


def test_default_round_to_follows_the_device(monkeypatch):
    assert latency.default_round_to("cuda") == 8
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert latency.default_round_to("cpu") == 16
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert latency.default_round_to("cpu") == 8


def test_prune_round_to_auto_records_the_learned_multiple(run_cli, tmp_path):
    """auto learns the multiple from a width scan of the latency table (cached) and says which."""
    r = run_cli("prune", "--model", "cifar_vgg11", "--width", "0.5", "--ratio", "0.3",
                "--round-to", "auto", "--device", "cpu", "--threads", "1", "--out", tmp_path)
    assert r.code == 0, r.err
    rep = json.loads((tmp_path / "report.json").read_text())
    learned = rep["round_to_auto"]
    k = rep["config"]["round_to"]  # the learned multiple, halved while a conv would keep none
    assert learned["round_to"] % k == 0 and f"--round-to auto: {k} " in r.out
    assert k == learned["round_to"] or int(32 * 0.7) < 2 * k
    assert learned["runtime"] == "torch" and learned["batch_size"] == 64
    assert learned["learned_from"].startswith("features.")
    convs = [l for l in rep["layers"] if l["type"] == "Conv2d"]
    assert all(l["out_channels_after"] % k == 0 for l in convs)
    assert convs[0]["out_channels_after"] == int(32 * 0.7) // k * k


def test_round_to_auto_shrinks_the_multiple_for_small_layers(run_cli, tmp_path, monkeypatch):
    """16 channels pruned by 70% keep int(4.8) = 4: auto halves 16 -> 8 -> 4 instead of failing."""
    from tp_vgg.latency import budget as latency_target

    monkeypatch.setattr(latency_target, "learn_round_to",
                        lambda t, dist=None: (16, {"learned_from": "features.4"}))
    r = run_cli("prune", "--model", "cifar_vgg11_bn", "--width", "0.25", "--ratio", "0.7",
                "--round-to", "auto", "--device", "cpu", "--out", tmp_path)
    assert r.code == 0, r.err
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["round_to_auto"]["round_to"] == 16 and rep["config"]["round_to"] == 4
    convs = [l for l in rep["layers"] if l["type"] == "Conv2d"]
    assert convs[0]["out_channels_after"] == 4
    assert all(l["out_channels_after"] % 4 == 0 for l in convs)
    r = run_cli("prune", "--model", "cifar_vgg11_bn", "--width", "0.25", "--ratio", "0.7",
                "--round-to", "16", "--out", tmp_path / "explicit")
    assert r.code == 2 and "with 0 of its 16 channels" in r.err  # an explicit K is kept as given


# --------------------------------------------------------------------------------------------
# CLI

@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    from tp_vgg.cli import main

    out = tmp_path_factory.mktemp("lat") / "run"
    assert main(["prune", "--model", "cifar_vgg11_bn", "--width", "0.125", "--ratio", "0.5",
                 "--out", str(out), "--latency", "1,2", "--threads", "1"]) == 0
    return out


def test_prune_latency_goes_into_report_json(pruned_run):
    rep = json.loads((pruned_run / "report.json").read_text())
    lat = rep["latency"]
    assert [c["batch_size"] for c in lat["comparisons"]] == [1, 2]
    # measured in the deployment form unless told otherwise
    assert lat["config"]["channels_last"] and lat["config"]["fuse_bn"]
    # the default device: CUDA when present
    assert lat["config"]["dtype"] == "fp32" and \
        lat["config"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    for c in lat["comparisons"]:
        assert c["mac_ratio"] == rep["before"]["macs"] / rep["after"]["macs"]
        assert math.isclose(c["efficiency"], c["speedup"] / c["mac_ratio"], rel_tol=1e-12)
        assert c["original"]["runs"] == c["pruned"]["runs"] == 20


def test_profile_latency_of_a_pruned_checkpoint(run_cli, pruned_run):
    r = run_cli("profile", "--checkpoint", pruned_run / "pruned.pt", "--latency",
                "--batch-sizes", "3", "--repeats", "2", "--warmup", "0", "--channels-last",
                "--fuse-bn", "--threads", "1", "--json")
    assert r.code == 0, r.err
    data = json.loads(r.out)
    report = json.loads((pruned_run / "report.json").read_text())
    (c,) = data["latency"]["comparisons"]
    assert c["batch_size"] == 3 and c["original"]["runs"] == 2
    assert data["latency"]["macs"] == {"original": report["before"]["macs"],
                                       "pruned": report["after"]["macs"]}
    assert data["latency"]["config"]["channels_last"] and data["latency"]["config"]["fuse_bn"]


def test_profile_latency_of_a_plain_model_prints_a_table(run_cli):
    r = run_cli("profile", "--model", "cifar_vgg11", "--width", "0.125", "--latency",
                "--batch-sizes", "1,2", "--repeats", "2", "--no-channels-last", "--no-fuse-bn",
                "--threads", "1")
    assert r.code == 0, r.err
    assert "images/s" in r.out and "median ms" in r.out
    assert "channels-last" not in r.out and "BN folded" not in r.out


def test_default_batch_sizes_follow_the_input_size(run_cli):
    r = run_cli("profile", "--model", "cifar_vgg11", "--width", "0.125", "--latency",
                "--repeats", "1", "--warmup", "0", "--threads", "1", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["latency"]["config"]["batch_sizes"] == [1, 64]
    from tp_vgg.cli.latency_args import default_batch_sizes
    assert default_batch_sizes(ModelSpec("vgg16_bn")) == "1,8"


CLI_MISTAKES = [
    (["profile", "--latency", "--batch-sizes", "0,4"], "--batch-sizes '0,4': '0' is not a positive integer"),
    (["profile", "--latency", "--dtype", "half"], "--dtype 'half' is not supported; accepted: fp32"),
    (["profile", "--batch-sizes", "4"], "--batch-sizes only applies with --latency"),
    (["profile", "--no-fuse-bn"], "--fuse-bn only applies with --latency"),
    (["prune", "--ratio", "0.5", "--round-to", "eight"], "'eight' is not a whole number; accepted: "
                                                         "an integer >= 1 or auto"),
    (["profile", "--latency", "--repeats", "0"], "--repeats must be an integer >= 1"),
    (["prune", "--ratio", "0.5", "--latency", "1,x"], "--latency '1,x': 'x' is not a positive integer"),
]
if not torch.cuda.is_available():
    CLI_MISTAKES.append((["profile", "--latency", "--device", "cuda"],
                         "--device 'cuda' but CUDA is not available on this machine"))


@pytest.mark.parametrize("argv, message", CLI_MISTAKES)
def test_latency_mistakes_exit_2_with_one_line(run_cli, tmp_path, argv, message):
    out = ["--out", tmp_path / "o"] if argv[0] == "prune" else []
    r = run_cli(*argv, "--model", "cifar_vgg11", "--width", "0.125", *out)
    assert r.code == 2
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.err
    assert not (tmp_path / "o").exists()
