import json
import subprocess
import sys

import torch

from prunenas.proposers.basemodel import BaseModelProvider, BaseTraining, list_entries
from prunenas.spaces import load_space


def cli(*args):
    return subprocess.run([sys.executable, "-m", "prunenas", *map(str, args)], capture_output=True, text=True)


def test_doctor_reports_versions_datasets_and_cache():
    proc = cli("doctor")
    assert proc.returncode == 0, proc.stderr
    for line in ("torch:", "ray:", "optuna:", "onnxruntime:", "fashion-mnist: found", "base-model cache:",
                 "ray auth:"):
        assert line in proc.stdout


def test_doctor_json_checks_an_unreachable_dashboard():
    proc = cli("doctor", "--address", "http://127.0.0.1:9", "--json")
    info = json.loads(proc.stdout)
    assert proc.returncode == 0 and info["ray cluster"].startswith("not reachable")
    assert info["packages"]["torch"] == torch.__version__ and info["datasets"]["fashion-mnist"] == "found"


def test_cache_list_and_prune(tmp_path):
    provider = BaseModelProvider(load_space("tiny-synthetic"), BaseTraining(epochs=1), cache_dir=tmp_path, log=None)
    key = provider.get(None).key
    listing = cli("cache", "list", "--cache-dir", tmp_path)
    assert key in listing.stdout and "1 base model(s)" in listing.stdout
    assert json.loads(cli("cache", "list", "--cache-dir", tmp_path, "--json").stdout) == list_entries(tmp_path)
    bad = cli("cache", "prune", "--cache-dir", tmp_path, "--key", key, "--key", "nope")
    assert bad.returncode == 2 and "no cache entry 'nope'" in bad.stderr
    assert [e["key"] for e in list_entries(tmp_path)] == [key]  # nothing removed on bad input
    assert cli("cache", "prune", "--cache-dir", tmp_path).returncode == 2
    pruned = cli("cache", "prune", "--cache-dir", tmp_path, "--key", key, "--json")
    assert pruned.returncode == 0 and json.loads(pruned.stdout) == {"removed": [key]}
    assert list_entries(tmp_path) == []
