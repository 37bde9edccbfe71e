"""A user's own module (``tests.traced_models:user_net``) searched end to end on Fashion-MNIST through Ray."""

import json

import pytest

from prunenas.arch import from_dict
from prunenas.cli.main import main
from prunenas.cost import count
from prunenas.runs.rundir import RunDir
from prunenas.spaces import load_space

from .search_helpers import cli, write

pytestmark = pytest.mark.usefixtures("ray_env")

USER_NET = "tests.traced_models:user_net?in_channels=1"
EXPERIMENT = {
    "name": "user-net",
    "space": USER_NET,
    "input_shape": [1, 32, 32],
    "num_classes": 10,
    "data": {"name": "fashion-mnist", "val_size": 128, "subset": 256},
    "base": {"epochs": 1},
    "proposers": {"l1-norm": {}},
    "targets": {"ratios": [0.5]},
    "arms": ["proposed", "uniform"],
    "seeds": {"search": [0], "eval": [0]},
    "recipe": {"name": "fast", "epochs": 1},
    "search": {"sampler": "random", "num_samples": 1},
    "resources": {"cpu": 1},
    "concurrency": 2,
}


def test_user_module_is_searched_and_reported(tmp_path, capsys):
    run = tmp_path / "run"
    proc = cli("search", write(tmp_path, EXPERIMENT), "--out", run, "--no-dashboard")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    rows = RunDir(run).results.rows()
    assert {r["arm"] for r in rows} == {"proposed", "uniform"} and all(r["status"] == "ok" for r in rows)
    space = load_space(USER_NET, (1, 32, 32), 10)
    for row in rows:  # the trials trained the user's network (re-traced by the workers) at half its MACs
        arch = from_dict(row["arch"])
        assert (arch.family, arch.opts["model"], arch.opts["graph"]) == ("traced", USER_NET, space.base.opts["graph"])
        assert count(arch).macs == pytest.approx(0.5 * count(space.base).macs, rel=0.05)
    assert main(["report", str(run), "--no-latency"]) == 0
    assert "| l1-norm | 0.5 | scratch-e |" in capsys.readouterr().out
