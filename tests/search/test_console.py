"""What a user sees while a search runs: the console (short, one line per training), Ray's output in the run
folder's log, and the identity the Ray dashboard shows for the driver's job and every trial actor."""

import contextlib
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


def reload_ray_auth():
    """Ray caches its authentication mode and token per process; read them again from the environment."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@pytest.fixture(scope="module")
def dashboard_seen(tmp_path_factory):
    """One tiny search with the dashboard on and token authentication (this search's own token in
    $RAY_AUTH_TOKEN, where Ray and prunenas look first; ~/.ray/auth_token is left alone), looked at before its
    Ray shuts down: through Ray's state API and, where chromium is installed, in a real browser (what that
    raised is kept for its test). Returns the run and what was seen."""
    tmp = tmp_path_factory.mktemp("dashboard")
    seen, console_out = {}, io.StringIO()
    shutdown = ray.shutdown

    def look_then_shutdown(*args, **kwargs):
        try:
            seen.update(read_state())
            if CHROMIUM.exists():
                try:
                    seen["browser"] = look_in_browser(console_out.getvalue(), tmp)
                except Exception as err:  # noqa: BLE001 - raised again by the browser test
                    seen["browser"] = err
        finally:
            shutdown(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.setenv("PRUNENAS_CACHE", str(tmp / "cache"))
        mp.setenv("RAY_AUTH_MODE", "token")
        mp.setenv("RAY_AUTH_TOKEN", secrets.token_hex(16))
        mp.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
        mp.setattr(ray, "shutdown", look_then_shutdown)
        reload_ray_auth()
        try:
            with contextlib.redirect_stdout(console_out):
                run = run_search(experiment_from_dict(TINY, "tiny"), tmp / "dashboard-check", dashboard=True)
        finally:
            mp.undo()
            reload_ray_auth()
    return run, seen


def read_state():
    """The data behind the dashboard's Jobs and Actors views, through Ray's state API."""
    address = ray.get_runtime_context().gcs_address  # other Ray instances may run on this machine
    # Tune's function-trainable class: `ImplicitFunc`, qualified once a second one is defined in the process
    actors = list_actors(address, detail=True, limit=1000)
    return {"actors": [a for a in actors if a.class_name.endswith("ImplicitFunc")],
            "jobs": list_jobs(address, detail=True)}


def identities_trained(run):
    """What each training of the tiny search was, written as the trial actors' repr says it, from its rows."""
    trained = {f"prunenas eval {r['method']} {r['arm']} {r['budget']} seed {r['seed']} proposal {r['proposal']}"
               for r in final_rows(run.path) if r["phase"] == "eval" or r.get("test_from_weights")}
    return trained | {"prunenas search random target 0.5 proposed scratch-e"}  # (reused search training above)


def test_dashboard_shows_the_run_and_what_each_actor_trains(dashboard_seen):
    """The data behind the dashboard's Jobs and Actors views, read through Ray's state API before shutdown."""
    run, seen = dashboard_seen
    (job,) = [j for j in seen["jobs"] if (j.metadata or {}).get("prunenas_run") == str(run.path)]
    assert job.metadata["job_name"] == f"prunenas {run.path.name}"
    shown = {a.repr_name for a in seen["actors"]}
    assert shown and shown <= identities_trained(run), (shown, identities_trained(run))
    assert {s.split()[1] for s in shown} == {"search", "eval"}, shown


def test_dashboard_in_a_real_browser(dashboard_seen):
    """Headless Chromium opens the dashboard URL the search printed, is refused a wrong token and let in with the
    one prunenas finds, then finds the run's name on the Jobs page and what a trial trains on the Actors page.
    Screenshots: the fixture's temporary folder, screenshots/."""
    run, seen = dashboard_seen
    if isinstance(seen["browser"], Exception):
        raise seen["browser"]
    jobs, actors, shots = seen["browser"]
    assert any(row["Name"] == f"prunenas {run.path.name}" and row["Status"] == "RUNNING" for row in jobs), jobs
    shown = {row["Repr"] for row in actors if row["Class"].endswith("ImplicitFunc")}
    assert shown and shown <= identities_trained(run), (shown, identities_trained(run))
    assert sorted(p.name for p in shots.glob("*.png")) == ["actors.png", "jobs.png", "token-dialog.png"]


def look_in_browser(printed, tmp):
    """Sign in to the dashboard whose URL the search printed and read its Jobs and Actors tables."""
    url = re.search(r"Ray dashboard (http://\S+)", printed)
    assert url, f"the search printed no dashboard URL:\n{printed}"
    shots = tmp / "screenshots"
    shots.mkdir()
    with Browser(tmp / "chromium-profile") as browser:
        sign_in(browser, url.group(1), monitor.auth_token(), shots / "token-dialog.png")
        jobs = table_rows(browser, url.group(1) + "/#/jobs", "Entrypoint", shots / "jobs.png")
        actors = table_rows(browser, url.group(1) + "/#/actors", "Repr", shots / "actors.png")
    return jobs, actors, shots


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
    lines = console.startup_lines(run, None, "127.0.0.1:8265", "$RAY_AUTH_TOKEN", auth_disabled=False)
    assert "http://127.0.0.1:8265" in lines[-1] and "ray get-auth-token" in lines[-1]
    assert "the token in $RAY_AUTH_TOKEN" in lines[-1]
