"""Ray dashboard, Jobs and metrics: a local head, a search submitted as a job, a prunenas metric read back."""

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from prunenas.search.monitor import auth_headers, auth_token

from .search_helpers import EXPERIMENT


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_bin():
    return os.path.join(os.path.dirname(sys.executable), "ray")


@pytest.fixture()
def head(tmp_path):
    """A Ray head with its dashboard on loopback (auth disabled: loopback tests only)."""
    ports = {"gcs": free_port(), "dashboard": free_port(), "metrics": free_port()}
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]  # the cluster's `python` = this one
    env = {**os.environ, "PATH": path, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_metrics_report_interval_ms": "1000", "PRUNENAS_CACHE": str(tmp_path / "cache")}
    subprocess.run([ray_bin(), "start", "--head", f"--port={ports['gcs']}", "--num-cpus=2",
                    "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={ports['dashboard']}",
                    f"--metrics-export-port={ports['metrics']}", "--disable-usage-stats"],
                   check=True, capture_output=True, env=env)
    try:
        yield ports, env
    finally:
        subprocess.run([ray_bin(), "stop", "--force"], capture_output=True, env=env)


def get(url):
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback only
        return response.read().decode()


def test_submit_a_search_as_a_job_and_read_metrics(head, tmp_path):
    ports, env = head
    dashboard = f"http://127.0.0.1:{ports['dashboard']}"
    for _ in range(60):
        try:
            if get(f"{dashboard}/api/gcs_healthz").strip() == "success":
                break
        except OSError:
            time.sleep(1)
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(dict(EXPERIMENT, recipe={"name": "fast", "epochs": 3})))
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "prunenas", "submit", str(exp), "--address", dashboard,
                           "--out", str(run)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    job = re.search(r"submitted job (\S+);", proc.stdout).group(1)
    metric_lines, status = [], None
    deadline = time.time() + 400
    while time.time() < deadline:
        text = get(f"http://127.0.0.1:{ports['metrics']}/metrics")
        metric_lines += [line for line in text.splitlines() if line.startswith("ray_prunenas_")]
        out = subprocess.run([sys.executable, "-m", "prunenas", "status", job, "--address", dashboard, "--json"],
                             capture_output=True, text=True, env=env)
        status = json.loads(out.stdout)["job_status"]
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(2)
    logs = subprocess.run([ray_bin(), "job", "logs", job, "--address", dashboard], capture_output=True, text=True,
                          env=env).stdout
    assert status == "SUCCEEDED", logs[-3000:]
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert any(line.startswith("ray_prunenas_val_accuracy") for line in metric_lines), metric_lines[:5]
    info = json.loads(subprocess.run([sys.executable, "-m", "prunenas", "status", job, "--address", dashboard,
                                      "--json"], capture_output=True, text=True, env=env).stdout)
    assert info["job_status"] == "SUCCEEDED" and info["status"] == "finished" and "best_so_far" in info
    assert json.loads(get(f"{dashboard}/api/version"))["ray_version"]


def test_auth_token_is_found_the_ray_way(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert auth_token() is None and auth_headers() == {}
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-file\n")
    assert auth_headers() == {"Authorization": "Bearer from-file"}
    (tmp_path / "other").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "other"))
    assert auth_token() == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert auth_token() == "from-env"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert auth_token() is None


def test_submit_and_status_errors(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "prunenas", "status", "raysubmit_nope"], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "neither a run folder nor" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "prunenas", "submit", str(tmp_path / "missing.yaml"), "--address",
                           "http://127.0.0.1:9", "--out", str(tmp_path / "r")], capture_output=True, text=True)
    assert proc.returncode == 2 and "cannot read experiment file" in proc.stderr
