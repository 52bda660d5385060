"""`neuroscope serve --demo` as a real process: starts offline, serves, and exits 0 on SIGTERM / Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.support.server import SSEReader


def _start(tmp_path, *extra, demo=True, env_extra=None):
    env = {**os.environ, "NEUROSCOPE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "COLUMNS": "200",
           **(env_extra or {})}
    env = {k: v for k, v in env.items() if v is not None}  # None: unset
    proc = subprocess.Popen(
        [sys.executable, "-m", "neuroscope", "serve", *(["--demo"] if demo else []), "--backend", "torch-cpu",
         "--port", "0", "--features-port", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
    )
    lines: list[str] = []
    ready = threading.Event()

    def pump():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("ready"):
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(120):
        proc.kill()
        pytest.fail("server never printed its ready line:\n" + "".join(lines))
    m = re.search(r"chat: http://127\.0\.0\.1:(\d+)/v1\s+features: http://127\.0\.0\.1:(\d+)/", lines[-1])
    assert m, lines[-1]
    return proc, lines, int(m.group(1)), int(m.group(2))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_demo_serves_and_shuts_down_cleanly(tmp_path, sig):
    proc, lines, chat, feat = _start(tmp_path)
    try:
        text = "".join(lines)
        assert "neuroscope-demo" in text and "random weights" in text
        models = httpx.get(f"http://127.0.0.1:{chat}/v1/models").json()
        assert models["data"][0]["id"] == "neuroscope-demo"
        reader = SSEReader(f"http://127.0.0.1:{feat}/v1/features/stream").start()
        deadline = time.monotonic() + 10
        while httpx.get(f"http://127.0.0.1:{feat}/health").json()["subscribers"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = httpx.post(f"http://127.0.0.1:{chat}/v1/chat/completions",
                       json={"model": "neuroscope-demo", "messages": [{"role": "user", "content": "hi"}],
                             "max_tokens": 6, "temperature": 0}, timeout=60)
        assert r.status_code == 200
        proc.send_signal(sig)
        assert proc.wait(30) == 0
        reader.wait(10)  # the open feature stream was closed by the shutdown
        assert any(e == "generation_complete" for e, _ in reader.events)
        assert "stopped" in "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_port_in_use_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        env = {**os.environ, "NEUROSCOPE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
        out = subprocess.run(
            [sys.executable, "-m", "neuroscope", "serve", "--demo", "--backend", "torch-cpu", "--port", str(port),
             "--features-port", "0"],
            capture_output=True, text=True, env=env, timeout=120,
        )
    assert out.returncode == 1
    assert "error: cannot listen" in out.stderr and str(port) in out.stderr and "in use" in out.stderr


def test_default_serve_offline_falls_back_to_the_demo(tmp_path):
    proc, lines, chat, _ = _start(tmp_path, demo=False)
    try:
        text = "".join(lines)
        assert "Serving the demo because the default model could not be loaded" in text
        assert httpx.get(f"http://127.0.0.1:{chat}/v1/models").json()["data"][0]["id"] == "neuroscope-demo"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_public_host_without_a_key_warns(tmp_path):
    proc, lines, chat, _ = _start(tmp_path, "--host", "0.0.0.0", env_extra={"NEUROSCOPE_API_KEY": None})
    try:
        text = "".join(lines)
        warning = [line for line in lines if line.startswith("warning:")]
        assert len(warning) == 1, text
        assert "--host 0.0.0.0" in warning[0] and "--api-key" in warning[0] and "NEUROSCOPE_API_KEY" in warning[0]
        assert "no API key" in text  # the panel's access row
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_public_host_with_a_key_from_the_environment(tmp_path):
    key = "proc-secret-4242"
    proc, lines, chat, feat = _start(tmp_path, "--host", "0.0.0.0", "--log-level", "debug",
                                     env_extra={"NEUROSCOPE_API_KEY": key})
    try:
        body = {"model": "neuroscope-demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        url = f"http://127.0.0.1:{chat}/v1/chat/completions"
        assert httpx.post(url, json=body, timeout=60).status_code == 401
        assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{feat}/v1/features/labels?api_key={key}").status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        text = "".join(lines)
        # no exposure warning line (the panel may still warn inside it, e.g. that no calibration was found)
        assert not [line for line in lines if line.startswith("warning:")] and "API key required" in text
        assert key not in text  # not in the panel, not in the (debug) logs
    finally:
        if proc.poll() is None:
            proc.kill()
