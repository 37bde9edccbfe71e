"""A small client of Chromium's DevTools protocol (CDP) for the tests that look at the Ray dashboard in a real
browser: headless Debian ``chromium`` with a fresh profile, driven over one page's websocket (aiohttp's client,
installed with ``ray[default]``). It navigates, evaluates JavaScript, waits for text, clicks and types as a user
does (real mouse and keyboard input events, so React sees them) and saves screenshots."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
import urllib.request
from pathlib import Path

import aiohttp

CHROMIUM = Path("/usr/bin/chromium")
# Flags that work on a closed network: no sandbox (root in containers), no GPU, nothing fetched in the background.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0", "--window-size=1400,1000"]


class Browser:
    """One headless Chromium tab. Use as a context manager; every wait raises TimeoutError with what the page
    showed, so a failing test says what the browser saw."""

    def __init__(self, profile: Path, timeout: float = 20.0):
        profile.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self._process = subprocess.Popen([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._loop = asyncio.new_event_loop()
        self._session = self._socket = None
        self._next_id = 0
        try:
            port = self._devtools_port(profile / "DevToolsActivePort")
            self._loop.run_until_complete(self._connect(self._page_socket_url(port)))
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _devtools_port(self, active_port: Path) -> int:
        """Chromium writes the port it chose (``--remote-debugging-port=0``) to the profile's DevToolsActivePort."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if active_port.exists() and active_port.read_text().strip():
                return int(active_port.read_text().split()[0])
            if self._process.poll() is not None:
                raise RuntimeError(f"chromium exited with status {self._process.returncode}")
            time.sleep(0.1)
        raise TimeoutError(f"chromium wrote no {active_port.name} in {self.timeout:g} s")

    @staticmethod
    def _page_socket_url(port: int) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            targets = json.load(response)
        return next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")

    async def _connect(self, url: str) -> None:
        self._session = aiohttp.ClientSession()
        self._socket = await self._session.ws_connect(url, max_msg_size=0)

    async def _call(self, method: str, params: dict) -> dict:
        self._next_id += 1
        await self._socket.send_json({"id": self._next_id, "method": method, "params": params})
        while True:  # events (no "id") and nothing else may come in between
            message = json.loads((await self._socket.receive(timeout=self.timeout)).data)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def send(self, method: str, **params) -> dict:
        """One CDP command, e.g. ``send("Page.navigate", url=...)``; returns its result."""
        return self._loop.run_until_complete(self._call(method, params))

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def text(self) -> str:
        """What the page shows: its body's innerText."""
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_until(self, read, what: str):
        """Poll ``read()`` until it returns something true and return that; the page may be loading or
        navigating meanwhile (its errors count as not yet)."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                value = read()
            except RuntimeError:  # e.g. "Inspected target navigated or closed" while the app reloads
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} after {self.timeout:g} s; the page shows:\n{self.text()[:3000]}")
            time.sleep(0.25)

    def wait_for(self, expression: str, what: str):
        """Wait until a JavaScript expression is true in the page; returns its value."""
        return self.wait_until(lambda: self.evaluate(expression), what)

    def wait_for_text(self, text: str) -> None:
        self.wait_for(f"document.body && document.body.innerText.includes({json.dumps(text)})", repr(text))

    def tables(self) -> list[list[dict[str, str]]]:
        """Every table on the page as rows of {column header: cell text}."""
        return self.evaluate("""Array.from(document.querySelectorAll('table')).map(table => {
            const heads = Array.from(table.querySelectorAll('thead th')).map(th => th.innerText.trim());
            return Array.from(table.querySelectorAll('tbody tr')).map(tr => Object.fromEntries(
                Array.from(tr.cells).map((td, i) => [heads[i], td.innerText.trim()])));
        })""")

    def click(self, selector: str) -> None:
        """Click the centre of the first element matching a CSS selector with the mouse."""
        box = self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                            " if (!e) return null; e.scrollIntoView({block: 'center'});"
                            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2];"
                            " })()")
        if box is None:
            raise LookupError(f"no element {selector!r}; the page shows:\n{self.text()[:3000]}")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def type(self, selector: str, text: str) -> None:
        """Click into a field and type ``text`` as keyboard input, replacing what the field held."""
        self.click(selector)
        self.evaluate(f"document.querySelector({json.dumps(selector)}).select()")
        self.send("Input.insertText", text=text)

    def press_enter(self) -> None:
        for kind in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13)

    def screenshot(self, path: Path) -> Path:
        """Save what the tab shows now as a PNG."""
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self) -> None:
        if self._socket is not None:
            self._loop.run_until_complete(self._socket.close())
        if self._session is not None:
            self._loop.run_until_complete(self._session.close())
        self._loop.close()
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
