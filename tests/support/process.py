"""``neuroscope serve`` as a real process: start it, read the URLs from its ready line, stop it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

READY = re.compile(r"^ready chat: (http://\S+)/v1\s+features: (http://\S+)/v1/features/stream")


@dataclass
class ServeProcess:
    proc: subprocess.Popen
    chat: str  # e.g. http://127.0.0.1:41234 (no /v1)
    features: str
    lines: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise
        return self.proc.returncode


def start_serve(cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> ServeProcess:
    """``python -m neuroscope serve --port 0 --features-port 0 ARGS`` (offline, wide console) in ``cwd``;
    returns once it printed its ready line."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "neuroscope", "serve", "--port", "0", "--features-port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env, cwd=cwd,
    )
    lines: list[str] = []
    ready = threading.Event()
    urls: list[str] = []

    def pump():
        for line in proc.stdout:
            lines.append(line)
            m = READY.match(line)
            if m:
                urls.extend(m.groups())
                ready.set()
        ready.set()  # the process ended

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(timeout) or not urls:
        if proc.poll() is None:
            proc.kill()
        pytest.fail("neuroscope serve never printed its ready line:\n" + "".join(lines))
    return ServeProcess(proc, urls[0], urls[1], lines)
