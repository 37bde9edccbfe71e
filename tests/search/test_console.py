"""What a user sees while a search runs: the console (short, one line per training), Ray's output in the run
folder's log, and the identity the Ray dashboard shows for the driver's job and every trial actor."""

import io
import re
import secrets
from pathlib import Path

import pytest
import ray
import yaml
from ray.util.state import list_actors, list_jobs

from prunenas.experiment_file import experiment_from_dict
from prunenas.runs.rundir import RunDir
from prunenas.search import console, monitor
from prunenas.search.tune import run_search

from .devtools import CHROMIUM, Browser
from .search_helpers import EXPERIMENT, cli

pytestmark = pytest.mark.usefixtures("ray_env")

QUICKSTART = Path(__file__).parents[2] / "experiments" / "quickstart.yaml"
TINY = dict(EXPERIMENT, proposers={"random": {}}, targets={"ratios": [0.5]}, seeds={"search": [0], "eval": [0]},
            recipe={"name": "fast", "epochs": 1}, search={"sampler": "tpe", "num_samples": 1})


def final_rows(run):
    return [r for r in RunDir(run).results.rows() if r["status"] in ("ok", "failed", "diverged")]


def test_quickstart_console_is_short_and_names_every_training(tmp_path):
    """`make demo` printed 1,228 lines of Tune tables; now a line per training (quickstart, shrunk to 1 epoch)."""
    exp = yaml.safe_load(QUICKSTART.read_text())
    exp["data"].update(subset=300, val_size=200)
    exp["base"]["epochs"] = 1
    path = tmp_path / "quickstart.yaml"
    path.write_text(yaml.safe_dump(exp))
    run = tmp_path / "run"
    proc = cli("search", path, "--out", run, "--no-dashboard", "--epochs", "1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) < 150, len(lines)
    assert not any("│" in line or "Trial status" in line for line in lines)  # Tune's tables went to the log
    log = run / "logs" / "ray.log"
    assert f"Ray and Tune output: {log}" in proc.stdout and "Configuration for experiment" in log.read_text()
    rows = final_rows(run)
    assert len(rows) >= 20  # 4 search + 3 arms x 2 seeds x 4 proposals (4 reused)
    for row in rows:  # every training, named by what the results row says it was
        want = [row["method"], row["arm"], row["budget"], f"seed {row['seed']}", f"{100 * row['val_acc']:.2f}%"]
        assert any(all(w in line for w in want) for line in lines), (want, proc.stdout)
    assert "| method | target | budget" in proc.stdout


def search_looking_before_shutdown(monkeypatch, out, look):
    """The tiny search with the dashboard on; ``look()`` runs at its end while its Ray is still up."""
    shutdown = ray.shutdown

    def look_then_shutdown(*args, **kwargs):
        try:
            look()
        finally:
            shutdown(*args, **kwargs)

    monkeypatch.setattr(ray, "shutdown", look_then_shutdown)
    return run_search(experiment_from_dict(TINY, "tiny"), out, dashboard=True)


def identities_trained(run):
    """What each training of the tiny search was, written as the trial actors' repr says it, from its rows."""
    trained = {f"prunenas eval {r['method']} {r['arm']} {r['budget']} seed {r['seed']} proposal {r['proposal']}"
               for r in final_rows(run.path) if r["phase"] == "eval" or r.get("test_from_weights")}
    return trained | {"prunenas search random target 0.5 proposed scratch-e"}  # (reused search training above)


def test_dashboard_shows_the_run_and_what_each_actor_trains(tmp_path, monkeypatch):
    """The data behind the dashboard's Jobs and Actors views, read through Ray's state API before shutdown."""
    seen = {}

    def read_state():
        address = ray.get_runtime_context().gcs_address  # other Ray instances may run on this machine
        # Tune's function-trainable class: `ImplicitFunc`, qualified once a second one is defined in the process
        seen["actors"] = [a for a in list_actors(address, detail=True, limit=1000)
                          if a.class_name.endswith("ImplicitFunc")]
        seen["jobs"] = list_jobs(address, detail=True)

    run = search_looking_before_shutdown(monkeypatch, tmp_path / "run", read_state)
    (job,) = [j for j in seen["jobs"] if (j.metadata or {}).get("prunenas_run") == str(run.path)]
    assert job.metadata["job_name"] == f"prunenas {run.path.name}"
    shown = {a.repr_name for a in seen["actors"]}
    assert shown and shown <= identities_trained(run), (shown, identities_trained(run))
    assert {s.split()[1] for s in shown} == {"search", "eval"}, shown


@pytest.fixture
def token_auth(monkeypatch):
    """Ray's token authentication on (ray_env turns it off) with this test's own token in $RAY_AUTH_TOKEN, where
    Ray and prunenas look first (~/.ray/auth_token is left alone). Ray caches the mode and the token per
    process: both are reloaded on the way in and out."""
    from ray._raylet import AuthenticationTokenLoader, Config

    def reload():
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()

    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(16))
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    reload()
    yield
    monkeypatch.undo()
    reload()


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"the dashboard's browser check needs Debian's chromium at "
                                                  f"{CHROMIUM} (`make browser` installs it)")
def test_dashboard_in_a_real_browser(tmp_path, monkeypatch, capsys, token_auth):
    """Headless Chromium opens the dashboard URL the search printed, is refused a wrong token and let in with the
    one prunenas finds, then finds the run's name on the Jobs page and what a trial trains on the Actors page.
    Screenshots: tmp_path/screenshots."""
    shots = tmp_path / "screenshots"
    shots.mkdir()
    seen = {}

    def look():
        url = re.search(r"Ray dashboard (http://\S+)", capsys.readouterr().out).group(1)
        with Browser(tmp_path / "chromium-profile") as browser:
            sign_in(browser, url, monitor.auth_token(), shots / "token-dialog.png")
            seen["jobs"] = table_rows(browser, url + "/#/jobs", "Entrypoint", shots / "jobs.png")
            seen["actors"] = table_rows(browser, url + "/#/actors", "Repr", shots / "actors.png")

    run = search_looking_before_shutdown(monkeypatch, tmp_path / "dashboard-check", look)
    assert any(row["Name"] == f"prunenas {run.path.name}" and row["Status"] == "RUNNING" for row in seen["jobs"]), \
        seen["jobs"]
    shown = {row["Repr"] for row in seen["actors"] if row["Class"].endswith("ImplicitFunc")}
    assert shown and shown <= identities_trained(run), (shown, identities_trained(run))
    assert sorted(p.name for p in shots.glob("*.png")) == ["actors.png", "jobs.png", "token-dialog.png"]


def sign_in(browser, url, token, screenshot):
    """Open the dashboard; its sign-in dialog refuses a wrong token and takes the right one."""
    field = "[role=dialog] input[type=password]"
    browser.navigate(url)
    browser.wait_for(f"!!document.querySelector('{field}')", "token dialog")
    browser.type(field, "not-" + token)
    browser.press_enter()
    browser.wait_for_text("Invalid authentication token")
    browser.type(field, token)
    browser.screenshot(screenshot)
    browser.press_enter()
    browser.wait_for("document.body && !document.querySelector('[role=dialog]')", "dashboard without the dialog")


def table_rows(browser, url, column, screenshot):
    """The rows of the page's table that has ``column``, once it has some; saves a screenshot."""
    browser.navigate(url)
    rows = browser.wait_until(lambda: [row for table in browser.tables() for row in table if column in row],
                              f"table with a {column!r} column")
    browser.screenshot(screenshot)
    return rows


def test_progress_lines_and_eta(tmp_path, monkeypatch):
    """Without a terminal, one plain line per finished row with done/total, and the ETA's closed form:
    elapsed / (MACs x epochs done) x trainings left x planned MACs x epochs per training."""
    run = RunDir(tmp_path / "run")
    clock = iter([100.0, 100.0, 160.0, 160.0, 160.0])
    monkeypatch.setattr(console.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    monkeypatch.setattr(console, "_console", out)
    progress = console.Progress(run, "eval", total=4, cost_per_training=2e6, bars=False)
    run.results.append({"key": "a", "phase": "eval", "arm": "uniform", "budget": "scratch-b", "seed": 1,
                        "method": "l1-norm", "status": "ok", "val_acc": 0.8125, "macs": 1_000_000, "epochs": 3,
                        "seconds": 42.0})
    run.results.append({"key": "b", "phase": "search", "status": "ok", "macs": 1, "epochs": 1})  # other phase
    progress.poll(force=True)
    assert progress.done == 1 and progress.cost_done == 3e6
    assert progress.eta() == pytest.approx(60 / 3e6 * 3 * 2e6)
    (line,) = out.getvalue().splitlines()
    assert re.search(r"\[eval 1/4 1:00 ETA 2:00\] ok +l1-norm .* uniform +scratch-b seed 1 +val +81\.25% +"
                     r"MACs +1\.00M +42s", line), line


def test_verbose_keeps_tune_output_on_the_console(tmp_path):
    run = RunDir(tmp_path / "run")
    with console.ray_output_to_log(run, verbose=True) as log:
        assert log is None and console.tune_verbosity() == 1
    with console.ray_output_to_log(run, verbose=False) as log:
        print("from a library")
        assert console.tune_verbosity() == 0
    assert log.read_text() == "from a library\n" and console.tune_verbosity() == 1
    lines = console.startup_lines(run, None, "127.0.0.1:8265", "t0k3n", auth_disabled=False)
    assert "http://127.0.0.1:8265" in lines[-1] and "ray get-auth-token" in lines[-1] and "t0k3n" not in lines[-1]
