"""The dashboard for real: `streamlit run .../dashboard/app.py` started from another folder, with
the app's own config, listens on 127.0.0.1 only, and headless Chromium (Debian's chromium + chromium-driver, driven by selenium)
shows the store's leaderboard rows. Screenshots go to results/screenshots/ (git-ignored)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from harness.store import Store
from tests.test_store import make_record

ROOT = Path(__file__).parents[1]
SCREENSHOTS = ROOT / "results" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """Two models x three methods, two seeds each, with known scores."""
    store = Store(tmp_path_factory.mktemp("browser") / "h.duckdb")
    for model, offset in (("minilm-l6", 0.0), ("smollm2-135m", 0.05)):
        for method, acc in (("base", 0.55), ("full", 0.81), ("lora", 0.78)):
            for seed in (0, 1):
                store.write_record(make_record(f"{model}-{method}-{seed}", model=model, method=method, seed=seed,
                                               acc=acc + offset + 0.01 * seed))
    return store


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    """`streamlit run /path/to/dashboard/app.py` started from another folder, with a HOME of its
    own (so neither a project's nor a user's .streamlit/config.toml applies: only the app's own,
    dashboard/.streamlit/), without --server.address, on a free port; yields its URL and process
    once /_stcore/health answers."""
    port = free_port()
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    log = elsewhere / "streamlit.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")}  # no option set from outside
    env |= {"HARNESS_DB": str(store.path), "HOME": str(elsewhere)}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard" / "app.py"),
                                 "--server.port", str(port)], cwd=elsewhere, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                    if resp.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit did not answer within {START_TIMEOUT_S} s:\n{log.read_text()}")
            time.sleep(0.3)
        yield url, proc, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def test_started_from_another_folder_it_listens_on_localhost_only_without_usage_statistics(server):
    """Streamlit reads .streamlit/config.toml from the current folder and from the script's own:
    the config lives beside the app, so it applies however the dashboard is started (from any
    other folder it used to bind every interface with usage statistics on)."""
    _, proc, log = server
    processes = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    listening = {c.laddr.ip for p in processes  # psutil < 6 names it connections()
                 for c in getattr(p, "net_connections", p.connections)(kind="inet") if c.status == psutil.CONN_LISTEN}
    assert listening == {"127.0.0.1"}
    text = log.read_text()
    assert "URL: http://127.0.0.1:" in text and "Network URL" not in text
    assert "Collecting usage statistics" not in text


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromium-driver are not installed (.ci/run installs them: "
                    "apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for downloads
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1500,1000", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(START_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()


def grid_rows(driver) -> list[list[str]]:
    """The cells of the first st.dataframe, read from the grid's accessible table."""
    return driver.execute_script("""
        const grid = document.querySelector('[data-testid="stDataFrame"]');
        if (!grid) return [];
        return Array.from(grid.querySelectorAll('table tbody tr'))
            .map(tr => Array.from(tr.querySelectorAll('td')).map(td => td.innerText.trim()));
    """)


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def test_leaderboard_renders_in_a_real_browser(server, browser, store):
    url, _, _ = server
    browser.get(url)
    expected = store.leaderboard("mx", "sentiment")
    rows = wait_for(lambda: [r for r in grid_rows(browser) if r] if len(grid_rows(browser)) >= len(expected) else None,
                    START_TIMEOUT_S, "the leaderboard's rows")
    shown = [(r[0], r[1], r[2]) for r in rows]
    assert shown == [(m, meth, str(n)) for m, meth, n in expected[["model", "method", "n_seeds"]].itertuples(index=False)]
    first_acc = float(rows[0][3])
    assert first_acc == pytest.approx(expected["test_accuracy"].iloc[0], abs=1e-4)
    assert "Traceback" not in browser.page_source
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOTS / "leaderboard.png"))
