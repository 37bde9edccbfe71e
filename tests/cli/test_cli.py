import json
import subprocess
import sys

import pytest

from prunenas.cli.main import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_info_json_resnet56(capsys):
    code, out, _ = run(capsys, "info", "resnet56-cifar10", "--json")
    info = json.loads(out)
    assert code == 0 and info["params"] == 853_018 and info["macs"] == 125_485_696
    assert {"space", "family", "slots", "widths", "macs", "params"} <= set(info)
    assert info["thop_macs_with_bn"] > info["macs"]


def test_info_preset_json(capsys):
    _, out, _ = run(capsys, "info", "resnet56-cifar10", "--preset", "B", "--json")
    info = json.loads(out)
    assert info["params"] == 735_712 and info["epochs"]["scratch-b"]["epochs"] == 220
    _, out, _ = run(capsys, "info", "vgg16-cifar10", "--preset", "A", "--json")
    info = json.loads(out)
    assert info["params"] == 5_397_034 and info["epochs"]["scratch-b"] == {"epochs": 243, "milestones": [121, 182]}


def test_info_resnet50(capsys):
    _, out, _ = run(capsys, "info", "resnet50-imagenet", "--json")
    info = json.loads(out)
    assert info["params"] == 25_557_032 and info["macs"] == 4_089_184_256


def test_info_human_readable(capsys):
    code, out, _ = run(capsys, "info", "tiny-synthetic")
    assert code == 0 and "residual-tied" in out and "removable" in out and "Scratch-B" in out


def test_uniform_ratio_half(capsys, tmp_path):
    code, out, _ = run(capsys, "uniform", "vgg16-cifar10", "--ratio", "0.5", "--json", "--out",
                       str(tmp_path / "twin.json"))
    result = json.loads(out)
    _, base, _ = run(capsys, "info", "vgg16-cifar10", "--json")
    assert code == 0 and abs(result["macs"] / (json.loads(base)["macs"] / 2) - 1) <= 0.01
    # the written architecture is an input of info
    _, out, _ = run(capsys, "info", str(tmp_path / "twin.json"), "--json")
    assert json.loads(out)["macs"] == result["macs"]


def test_uniform_of_an_architecture_file_and_params(capsys, tmp_path):
    run(capsys, "uniform", "vgg11-fashionmnist", "--ratio", "0.5", "--out", str(tmp_path / "a.json"))
    code, out, _ = run(capsys, "uniform", str(tmp_path / "a.json"), "--macs", "1000000", "--match", "params",
                       "--json")
    assert code == 0 and json.loads(out)["match"] == "params"


def test_spaces_lists_everything(capsys):
    code, out, _ = run(capsys, "spaces")
    assert code == 0 and "resnet56-cifar10" in out and "vgg11-fashionmnist" in out


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


BAD_INPUT = [
    (["info", "nope"], "unknown space 'nope'"),
    (["info", "{tmp}/bad.json"], "is not valid JSON"),
    (["info", "{tmp}/count.json"], "has 4 width slots, got 2 widths"),
    (["info", "{tmp}/zero.json"], "width 0 (slot 'stem') is 0"),
    (["info", "{tmp}/negative.json"], "is -4; allowed 1..8"),
    (["info", "{tmp}/missing.json"], "cannot read architecture file"),
    (["info", "resnet56-cifar10", "--preset", "Z"], "has no preset 'Z'; presets: A, B"),
    (["uniform", "vgg16-cifar10", "--ratio", "0"], "ratio 0.0 must be in (0, 1]"),
    (["uniform", "vgg16-cifar10", "--ratio", "1.5"], "ratio 1.5 must be in (0, 1]"),
    (["uniform", "vgg16-cifar10", "--ratio", "-0.2"], "ratio -0.2 must be in (0, 1]"),
    (["uniform", "vgg16-cifar10", "--macs", "-5"], "--macs -5 must be a positive integer"),
    (["uniform", "vgg16-cifar10"], "one of the arguments --macs --ratio --latency-ms --latency-ratio is required"),
    (["info"], "the following arguments are required: target"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_INPUT, ids=[m for _, m in BAD_INPUT])
def test_bad_input_is_one_line_and_exit_2(tmp_path, argv, message):
    _write(tmp_path, "bad.json", "{oops")
    _write(tmp_path, "count.json", '{"family": "tiny", "widths": [8, 16], "input_shape": [3, 16, 16]}')
    _write(tmp_path, "zero.json", '{"family": "tiny", "widths": [0, 16, 8, 8]}')
    _write(tmp_path, "negative.json", '{"family": "tiny", "widths": [-4, 16, 8, 8]}')
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "prunenas", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr
