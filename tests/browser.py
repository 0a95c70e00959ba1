"""A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (no dependencies).

Drives Debian's headless chromium: open a page at a given window width, evaluate JavaScript in it
(to check layout through the DOM: computed colours, boxes, overlaps), click, take screenshots, and
collect every console message, uncaught exception and CSP violation the page produced.
"""
import base64
import json
import os
import select
import subprocess
import time

CHROMIUM = "/usr/bin/chromium"


class BrowserError(AssertionError):
    pass


class Browser:
    def __init__(self, tmp_path, timeout=60.0):
        self.timeout = timeout
        r3, w3 = os.pipe()  # chromium reads commands from fd 3
        r4, w4 = os.pipe()  # and writes answers to fd 4

        def child_fds():
            os.dup2(r3, 3)
            os.dup2(w4, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--disable-extensions", "--hide-scrollbars",
             "--remote-debugging-pipe", f"--user-data-dir={tmp_path / 'chromium-profile'}",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(r3, w4, 3, 4), preexec_fn=child_fds, env=dict(os.environ, HOME=str(tmp_path)))
        os.close(r3)
        os.close(w4)
        self._w = os.fdopen(w3, "wb", buffering=0)
        self._r = os.fdopen(r4, "rb", buffering=0)
        self._buf = b""
        self._id = 0
        self.events = []
        self.session = None
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"],
                                 flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(domain + ".enable")

    # ---------------------------------------------------------------- protocol

    def _read_message(self, deadline=None):
        while b"\0" not in self._buf:
            left = (deadline if deadline is not None else time.monotonic() + self.timeout) \
                - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise BrowserError("chromium did not answer in time")
            chunk = self._r.read(1 << 16)
            if not chunk:
                raise BrowserError("chromium closed the pipe")
            self._buf += chunk
        msg, _, self._buf = self._buf.partition(b"\0")
        return json.loads(msg)

    def call(self, method, **params):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        self._w.write(json.dumps(msg).encode() + b"\0")
        while True:
            m = self._read_message()
            if m.get("id") == self._id:
                if "error" in m:
                    raise BrowserError(f"{method}: {m['error']}")
                return m.get("result", {})
            if "method" in m:
                self.events.append(m)

    def wait_event(self, method, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        for i, m in enumerate(self.events):
            if m["method"] == method:
                return self.events.pop(i)
        while time.monotonic() < deadline:
            m = self._read_message(deadline)
            if m.get("method") == method:
                return m
            if "method" in m:
                self.events.append(m)
        raise BrowserError(f"timed out waiting for {method}")

    # ---------------------------------------------------------------- page

    def open(self, url, width=1400, height=900):
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)
        self.events = [e for e in self.events if e["method"] != "Page.loadEventFired"]
        nav = self.call("Page.navigate", url=url)
        if nav.get("loaderId"):  # not a same-document (fragment-only) navigation
            self.wait_event("Page.loadEventFired")
        return self

    def resize(self, width, height=900):
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)
        self.js("new Promise(function (r) { requestAnimationFrame(function () {"
                " requestAnimationFrame(r); }); })")

    def js(self, expression):
        """Evaluate an expression (awaiting a promise) and return its JSON value."""
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                      awaitPromise=True)
        if "exceptionDetails" in r:
            raise BrowserError(f"{expression[:80]}...: {r['exceptionDetails']}")
        return r["result"].get("value")

    def screenshot(self, path, full_page=False):
        params = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        data = self.call("Page.captureScreenshot", **params)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    def problems(self):
        """Console errors/warnings, uncaught exceptions and browser log errors (CSP, 404s)."""
        # drain anything already sent
        self.js("1")
        out = []
        for m in self.events:
            p = m.get("params", {})
            if m["method"] == "Runtime.exceptionThrown":
                out.append("exception: " + json.dumps(p.get("exceptionDetails"))[:500])
            elif m["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error",
                                                                                  "warning"):
                out.append(f"console.{p['type']}: " + json.dumps(p.get("args"))[:500])
            elif m["method"] == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                out.append(f"log.{p['entry']['level']}: {p['entry'].get('text')}")
        return out

    def close(self):
        try:
            self.call("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._w.close()
        self._r.close()


def drag(b, x1, y1, x2, y2, steps=5):
    """A real mouse drag (press, moves, release) at page coordinates."""
    b.call("Input.dispatchMouseEvent", type="mousePressed", x=x1, y=y1, button="left",
           clickCount=1)
    for i in range(1, steps + 1):
        b.call("Input.dispatchMouseEvent", type="mouseMoved", x=x1 + (x2 - x1) * i / steps,
               y=y1 + (y2 - y1) * i / steps, button="left", buttons=1)
    b.call("Input.dispatchMouseEvent", type="mouseReleased", x=x2, y=y2, button="left",
           clickCount=1)


def click_at(b, x, y):
    drag(b, x, y, x, y, steps=1)


def type_text(b, text):
    b.call("Input.insertText", text=text)
