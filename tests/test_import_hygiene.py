"""Importing the core, the CLI and the server must not pull in a framework (torch / mlx load only on use)."""

from __future__ import annotations

import json
import subprocess
import sys

MODULES = [
    "neuroscope",
    "neuroscope.cli.serve",
    "neuroscope.cli.steer",
    "neuroscope.core.steering",
    "neuroscope.server.serve",
    "neuroscope.server.app",
    "neuroscope.core.engine",
    "neuroscope.runtime",
    "neuroscope.calibration.corpus",
    "neuroscope.cli.autointerp",
    "neuroscope.labels.autointerp.generate",
    "neuroscope.labels.autointerp.scoring",
]
HEAVY = ["torch", "mlx"]

# Imports each module in turn in a fresh interpreter and reports which heavy top-level packages are loaded
# after each one.
PROBE = """
import importlib, json, sys
heavy = set(json.loads(sys.argv[1]))
report = {}
for name in sys.argv[2:]:
    importlib.import_module(name)
    report[name] = sorted({m.split(".")[0] for m in sys.modules} & heavy)
print(json.dumps(report))
"""


def probe(heavy: list[str], modules: list[str]) -> dict[str, list[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(heavy), *modules], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_imports_do_not_load_a_framework():
    assert probe(HEAVY, MODULES) == {m: [] for m in MODULES}


def test_the_probe_detects_a_loaded_package():
    # the check above can fail: a module that imports a watched package is reported
    assert probe(["fractions"], ["neuroscope", "fractions"]) == {"neuroscope": [], "fractions": ["fractions"]}
