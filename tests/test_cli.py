import json
import os
import subprocess
import sys

import pytest
import torch

from tp_vgg.models.zoo import CIFAR_VGGS, TORCHVISION_VGGS


def test_models_lists_the_zoo(run_cli):
    r = run_cli("models")
    assert r.code == 0
    for name in TORCHVISION_VGGS + CIFAR_VGGS:
        assert f"\n{name} " in "\n" + r.out


def test_prune_writes_checkpoint_and_report(run_cli, tmp_path):
    out = tmp_path / "run"
    r = run_cli("prune", "--model", "cifar_vgg11_bn", "--width", "0.25", "--ratio", "0.5",
                "--out", out)
    assert r.code == 0, r.err
    assert sorted(p.name for p in out.iterdir()) == ["pruned.pt", "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert report["before"]["macs"] > 3.5 * report["after"]["macs"]
    assert report["before"]["params"] > report["after"]["params"] > 0
    convs = [l for l in report["layers"] if l["type"] == "Conv2d"]
    assert convs[0] == {**convs[0], "name": "features.0", "out_channels_before": 16,
                        "out_channels_after": 8}
    assert all(l["macs_after"] <= l["macs_before"] for l in report["layers"])
    assert "multiply-add" in report["units"]
    assert "multiply-add" in r.out and "features.0" in r.out
    ckpt = torch.load(out / "pruned.pt", weights_only=True)
    assert ckpt["meta"]["macs_after"] == report["after"]["macs"]


def test_profile_json_and_checkpoint_input(run_cli, tmp_path):
    assert run_cli("prune", "--model", "cifar_vgg11", "--width", "0.25", "--ratio", "0.5",
                   "--out", tmp_path).code == 0
    r = run_cli("profile", "--checkpoint", tmp_path / "pruned.pt", "--json")
    assert r.code == 0
    data = json.loads(r.out)
    report = json.loads((tmp_path / "report.json").read_text())
    assert data["macs"] == report["after"]["macs"] and data["params"] == report["after"]["params"]
    assert {l["name"] for l in data["layers"]} >= {"features.0", "classifier.2"}


ERROR_CASES = {
    "unknown model": (["--model", "vgg99"], "unknown model 'vgg99'; accepted: vgg11"),
    "ratio not a number": (["--ratio", "half"], "argument --ratio: 'half' is not a number"),
    "ratio is 1": (["--ratio", "1"], "'1' is outside [0, 1)"),
    "ratio negative": (["--ratio", "-0.2"], "'-0.2' is outside [0, 1)"),
    "layer missing": (["--layer-ratios", '{"features.77": 0.5}'], "'features.77', which is not a module"),
    "layer ratio out of range": (["--layer-ratios", '{"features.0": 1.5}'],
                                 "--layer-ratios['features.0'] must be a number in [0, 1)"),
    "no channels left": (["--width", "0.03", "--ratio", "0.6"],
                         "would leave layer 'features.0' with 0 of its 2 channels"),
    "malformed layer json": (["--layer-ratios", "{features.0: 0.5"], "malformed JSON"),
    "malformed kwargs json": (["--model-kwargs", "[1, 2"], "malformed JSON"),
    "kwargs not an object": (["--model-kwargs", "[1, 2]"], "is JSON but not an object"),
    "bad model kwarg": (["--model-kwargs", '{"depth": 3}'], "bad --model-kwargs for cifar_vgg11"),
    "missing checkpoint": (["--checkpoint", "nope.pt"], "checkpoint 'nope.pt' does not exist"),
    "bad importance": (["--importance", "taylorr"], "invalid choice: 'taylorr'"),
    "round-to zero": (["--round-to", "0"], "'0' is below 1"),
    "input too small": (["--input-size", "8"], "cannot run on a 1x3x8x8 input"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_user_mistakes_exit_2_with_one_line_and_no_files(run_cli, tmp_path, case):
    extra, message = ERROR_CASES[case]
    args = {"--model": "cifar_vgg11", "--ratio": "0.5"}
    if "--checkpoint" in extra:
        args.pop("--model")
    flat = [x for kv in args.items() for x in kv if kv[0] not in extra] + extra
    out = tmp_path / "out"
    r = run_cli("prune", *flat, "--out", out)
    assert r.code == 2
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.err
    assert "Traceback" not in r.err
    assert not out.exists() or not any(out.iterdir())


def test_debug_shows_the_traceback(run_cli, tmp_path):
    r = run_cli("prune", "--model", "vgg99", "--ratio", "0.5", "--out", tmp_path, "--debug")
    assert r.code == 2 and "Traceback" in r.err


@pytest.mark.parametrize("entry", [["tp-vgg"], [sys.executable, "-m", "tp_vgg"]])
def test_console_script_and_module_agree(entry, tmp_path):
    if entry == ["tp-vgg"]:
        entry = [os.path.join(os.path.dirname(sys.executable), "tp-vgg")]
    ok = subprocess.run(entry + ["prune", "--model", "cifar_vgg11", "--width", "0.25", "--ratio",
                                 "0.5", "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "o" / "pruned.pt").exists()
    bad = subprocess.run(entry + ["prune", "--model", "nope", "--ratio", "0.5", "--out",
                                  str(tmp_path / "x")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    assert ok.stderr == ""  # no fvcore/tracer warnings reach the terminal
