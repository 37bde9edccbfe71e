"""Faults: failing, diverging and killed trials, a killed driver in the evaluation phase, two Ray nodes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from safetensors.torch import load_file

from prunenas.runs.report import write_report
from prunenas.runs.rundir import RunDir

from .search_helpers import EXPERIMENT, cli, expected_keys, study, trained_keys, write

pytestmark = pytest.mark.usefixtures("ray_env")


def rows_by_status(run):
    out = {}
    for row in RunDir(run).results.rows():
        out.setdefault(row["status"], []).append(row)
    return out


def test_failed_and_diverged_trainings_are_recorded_and_the_search_goes_on(tmp_path):
    run = tmp_path / "run"
    # one target, one evaluation seed, a grid over the two methods: 2 search trainings, 3 evaluation arms
    exp = dict(EXPERIMENT, arms=["proposed", "uniform", "random"], max_failures=1, targets={"ratios": [0.5]},
               seeds={"search": [0], "eval": [0]}, search={"sampler": "grid"})
    faults = "trial.start@method=random:diverge;trial.start@arm=random:raise"
    proc = cli("search", write(tmp_path, exp), "--out", run, "--no-dashboard", env={"PRUNENAS_FAULT": faults})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((run / "run.json").read_text())["status"] == "incomplete"
    rows = rows_by_status(run)
    diverged, failed = rows["diverged"], rows["failed"]
    # the random proposer's search trainings diverged: recorded once each, with epoch and step, never retried
    assert diverged and all(r["method"] == "random" and r["phase"] == "search" for r in diverged)
    assert all(r["diverged_epoch"] == 1 and r["diverged_step"] == 0 for r in diverged)
    assert len({r["key"] for r in diverged}) == len(diverged)
    # ... and Optuna never saw them as scores; the study knows they are final (resume does not retry them)
    assert json.loads((run / "run.json").read_text())["search"]["diverged"] == len(diverged)
    for trial in study(run).trials:
        expected = optuna.trial.TrialState.FAIL if trial.params["method"] == "random" else \
            optuna.trial.TrialState.COMPLETE
        assert trial.state == expected
    # the random arm raised: failed rows with a traceback file; the other arms went on
    assert failed and all(r["arm"] == "random" for r in failed)
    assert all((run / r["traceback"]).read_text().startswith("Traceback") for r in failed)
    assert {r["arm"] for r in rows["ok"]} >= {"proposed", "uniform"}
    report = write_report(RunDir(run), latency=False)["text"]
    assert "## Failed or diverged trainings" in report and "InjectedFault" in report
    # resume retries the failed trainings (not the diverged ones) and completes the run
    proc = cli("resume", run, "--no-dashboard")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    latest = RunDir(run).results.latest()
    assert all(latest[k]["status"] == "ok" for k in expected_keys(run))
    assert [r["key"] for r in RunDir(run).results.rows() if r["status"] == "diverged"] == [r["key"] for r in diverged]


def test_killed_worker_is_retried_from_its_epoch_checkpoint(tmp_path):
    exp = dict(EXPERIMENT, proposers={"uniform": {}}, seeds={"search": [0], "eval": [0]},
               recipe={"name": "fast", "epochs": 3}, arms=["proposed"], max_failures=2)
    clean, faulty = tmp_path / "clean", tmp_path / "faulty"
    assert cli("search", write(tmp_path, exp), "--out", clean, "--no-dashboard").returncode == 0
    proc = cli("search", write(tmp_path, exp), "--out", faulty, "--no-dashboard",
               env={"PRUNENAS_FAULT": "train.checkpoint@epoch=1:kill"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((faulty / "run.json").read_text())["status"] == "finished"  # the killed trial was retried
    a, b = RunDir(clean).results.latest(), RunDir(faulty).results.latest()
    assert a.keys() == b.keys() and all(r["status"] == "ok" for r in b.values())
    for key in a:  # the retried trainings end exactly as the uninterrupted ones
        assert a[key]["val_acc"] == b[key]["val_acc"]
        x, y = load_file(clean / a[key]["weights"]), load_file(faulty / b[key]["weights"])
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    tune_logs = "".join(p.read_text(errors="ignore") for p in (faulty / "tune").rglob("error.txt"))
    assert tune_logs, "no trial was killed: the fault did not fire"


def test_driver_killed_in_the_evaluation_phase_resumes(tmp_path):
    run = tmp_path / "run"
    exp = dict(EXPERIMENT, recipe={"name": "fast", "epochs": 3})
    driver = subprocess.Popen([sys.executable, "-m", "prunenas", "search", write(tmp_path, exp), "--out", run,
                               "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and driver.poll() is None:
        if (run / "plan.json").exists() and any(r["phase"] == "eval" for r in RunDir(run).results.rows()):
            break
        time.sleep(0.5)
    assert driver.poll() is None, "the search finished before it could be killed"
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    before = {r["key"] for r in RunDir(run).results.rows() if r["status"] == "ok"}
    proc = cli("resume", run, "--no-dashboard")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ok = trained_keys(run)
    assert len(ok) == len(set(ok)) and before <= set(ok) and expected_keys(run) <= set(ok)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_the_whole_search_not_only_its_phase(tmp_path, stop):
    """Tune ends only the running phase on SIGINT, and the next phase would start: prunenas stops the driver.
    SIGTERM (``kill``, a scheduler) does the same; Python's default would end it with the run left "running"."""
    run = tmp_path / "run"
    exp = dict(EXPERIMENT, recipe={"name": "fast", "epochs": 3})
    driver = subprocess.Popen([sys.executable, "-m", "prunenas", "search", write(tmp_path, exp), "--out", run,
                               "--no-dashboard"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and driver.poll() is None and not (run / "optuna.journal").exists():
        time.sleep(0.5)
    assert driver.poll() is None, "the search finished before it could be interrupted"
    driver.send_signal(stop)
    output, _ = driver.communicate(timeout=120)
    assert driver.returncode == 130, output[-3000:]
    assert f"interrupted: `prunenas resume {run}` continues where it stopped" in output
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    assert not (run / "plan.json").exists() and "phase 2" not in output  # no later phase started
    if stop == signal.SIGTERM:
        return
    before = _read_state(run)
    resumed = subprocess.Popen([sys.executable, "-m", "prunenas", "resume", run, "--no-dashboard"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and resumed.poll() is None and _read_state(run) == before:
        time.sleep(0.2)
    status = _read_state(run)
    resumed.send_signal(signal.SIGINT)
    output, _ = resumed.communicate(timeout=120)
    assert status.startswith("running"), (status, output[-3000:])  # while it runs, status says so


def _read_state(run):
    """``STATUS phase N`` from run.json."""
    state = json.loads((run / "run.json").read_text())
    return f"{state['status']} phase {state['phase']}"


def _processes():
    """(pid, ppid, cmdline) of every process, from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
            except OSError:
                continue
            out.append((int(entry), int(stat.rsplit(")", 1)[1].split()[1]), cmd))
    return out


def test_two_nodes_share_the_trials_and_a_lost_node_is_survived(tmp_path):
    from .test_jobs import free_port, ray_bin

    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PRUNENAS_CACHE": str(tmp_path / "cache"),
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    gcs, manager = free_port(), free_port()
    subprocess.run([ray_bin(), "start", "--head", f"--port={gcs}", "--num-cpus=1", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, capture_output=True, env=env)
    try:
        subprocess.run([ray_bin(), "start", f"--address=127.0.0.1:{gcs}", "--num-cpus=1",
                        f"--node-manager-port={manager}"], check=True, capture_output=True, env=env)
        run = tmp_path / "run"
        exp = dict(EXPERIMENT, recipe={"name": "fast", "epochs": 4}, max_failures=3)
        driver = subprocess.Popen([sys.executable, "-m", "prunenas", "search", write(tmp_path, exp), "--out", run,
                                   "--address", f"127.0.0.1:{gcs}"], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, env=env)
        raylet = next(pid for pid, _, cmd in _processes() if "raylet" in cmd and f"node_manager_port={manager}" in cmd)
        deadline, killed = time.time() + 300, False
        while time.time() < deadline and driver.poll() is None and not killed:
            nodes = {r["environment"].get("node") for r in RunDir(run).results.rows()}
            busy = any(ppid == raylet and "ImplicitFunc" in cmd for _, ppid, cmd in _processes())
            if len(nodes) >= 2 and busy:  # both nodes have trained, and the worker is in a trial now
                os.kill(raylet, signal.SIGKILL)
                killed = True
            time.sleep(0.3)
        output = driver.communicate(timeout=600)[0]
        assert killed, "the worker node was never busy while the search ran"
        assert driver.returncode == 0, output[-3000:]
        rows = RunDir(run).results.rows()
        assert len({r["environment"]["node"] for r in rows}) >= 2  # trials spread over both nodes
        ok = trained_keys(run)
        assert len(ok) == len(set(ok)) and expected_keys(run) <= set(ok)
        assert json.loads((run / "run.json").read_text())["status"] == "finished"
    finally:
        subprocess.run([ray_bin(), "stop", "--force"], capture_output=True, env=env)


def _train_tiny_key(run_path, queue):
    from prunenas.experiment_file import experiment_from_dict
    from prunenas.runs.rundir import RunDir
    from prunenas.trial import Context, Trial, run_trial

    from .search_helpers import EXPERIMENT

    exp = experiment_from_dict(EXPERIMENT)
    ctx = Context(exp, RunDir(run_path), threads=1)
    row = run_trial(ctx, Trial(exp.space.base, "uniform", "scratch-e", 0), "eval")
    queue.put(row["key"])


def test_two_processes_training_one_key_train_it_once(tmp_path):
    import multiprocessing

    from prunenas.runs.rundir import RunDir

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_train_tiny_key, args=(tmp_path, queue)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(300)
    keys = [queue.get(timeout=5) for _ in workers]
    rows = RunDir(tmp_path).results.rows()
    assert keys[0] == keys[1] and [r["key"] for r in rows] == [keys[0]]  # the second waited and reused the row
