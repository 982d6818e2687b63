#!/usr/bin/env python3
"""Drives Debian's chromium (headless) over the DevTools protocol for
tests/status_page.rs: signs in to the status page with the token, waits
for the backend to show `up`, says so on stdout, waits for `down` on stdin
(the test has failed the backend's health checks), times how long the page
takes to show it, drains the backend with the page's button (confirming),
waits for `draining`, saves a screenshot, and fails if the page logged any
console error or exception.

    status_page.py URL TOKEN BACKEND SCREENSHOT
"""

import asyncio
import base64
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

import websockets


async def main(url, token, backend, shot):
    profile = tempfile.mkdtemp(prefix="edgebox-chromium-")
    chrome = subprocess.Popen(
        [
            "chromium", "--headless=new", "--no-sandbox", "--disable-gpu",
            "--ignore-certificate-errors", "--remote-debugging-port=0",
            "--user-data-dir=" + profile, "--window-size=1280,1400",
            "--no-first-run", "--no-default-browser-check", "about:blank",
        ],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        port = None
        deadline = time.time() + 30
        while port is None and time.time() < deadline:
            line = chrome.stderr.readline()
            m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            if m:
                port = m.group(1)
        if port is None:
            raise SystemExit("chromium did not open its DevTools port")
        pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        page = next(p for p in pages if p["type"] == "page")
        async with websockets.connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            await drive(ws, url, token, backend, shot)
    finally:
        chrome.terminate()
        try:
            chrome.wait(10)
        except subprocess.TimeoutExpired:
            chrome.kill()


async def drive(ws, url, token, backend, shot):
    events = []
    waiting = {}
    seq = 0

    async def reader():
        async for raw in ws:
            msg = json.loads(raw)
            if "id" in msg and msg["id"] in waiting:
                waiting.pop(msg["id"]).set_result(msg)
            elif "method" in msg:
                events.append(msg)

    task = asyncio.create_task(reader())

    async def call(method, **params):
        nonlocal seq
        seq += 1
        fut = asyncio.get_running_loop().create_future()
        waiting[seq] = fut
        await ws.send(json.dumps({"id": seq, "method": method, "params": params}))
        msg = await asyncio.wait_for(fut, 30)
        if "error" in msg:
            raise SystemExit(f"{method}: {msg['error']}")
        return msg.get("result", {})

    async def js(expr):
        r = await call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        return r.get("result", {}).get("value")

    async def until(what, expr, want, limit=20):
        start = time.time()
        while time.time() - start < limit:
            if await js(expr) == want:
                return time.time() - start
            await asyncio.sleep(0.05)
        raise SystemExit(f"the page never showed {what}: {await js(expr)!r}")

    for domain in ("Runtime", "Log", "Page"):
        await call(domain + ".enable")
    await call("Page.navigate", url=url)
    await until("the sign-in form", "!document.getElementById('login').hidden", True)
    await js(
        "document.getElementById('token').value = " + json.dumps(token) + ";"
        "document.getElementById('login').requestSubmit(); true"
    )
    health = ("(document.querySelector('tr[data-backend=" + json.dumps(backend)
              + "] .health') || {}).textContent")
    await until("the backend up", health, "up")
    print("up", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if line.strip() != "down":
        raise SystemExit(f"expected 'down' on stdin, got {line!r}")
    took = await until("the backend down", health, "down")
    print(f"down shown after {took * 1000:.0f} ms", flush=True)
    await js(
        "window.confirm = () => true;"
        "document.querySelector('tr[data-backend=" + json.dumps(backend)
        + "] button[data-action=drain]').click(); true"
    )
    took = await until("the backend draining", health, "draining")
    print(f"draining shown after {took * 1000:.0f} ms", flush=True)
    acme = ("[...document.querySelectorAll('#certs tr')].map((r) => r.textContent)"
            ".find((t) => t.startsWith('ACME')) || ''")
    await until("the ACME certificates", "(" + acme + ").startsWith('ACME3 served')", True)
    print("acme: " + await js(acme), flush=True)
    # A few more polls, so that the screenshot's charts have lines.
    await asyncio.sleep(4)
    png = await call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    with open(shot, "wb") as f:
        f.write(base64.b64decode(png["data"]))
    errors = []
    for e in events:
        p = e.get("params", {})
        if e["method"] == "Runtime.exceptionThrown":
            errors.append(p["exceptionDetails"].get("text", "exception"))
        elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") == "error":
            errors.append(" ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
        elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
            errors.append(p["entry"]["text"] + " " + p["entry"].get("url", ""))
    print(f"console errors: {len(errors)}", flush=True)
    for e in errors:
        print("  " + e, flush=True)
    task.cancel()
    if errors:
        raise SystemExit(1)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
