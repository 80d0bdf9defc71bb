"""Importing any module of ``app`` builds nothing: no Faust app, table, producer, consumer or
queue, no thread, no file or socket opened (issue 19). Each role builds its parts in its
composition root (``app.scorer.build``, ``app.explainer.build``) from the settings it is given.

One fresh interpreter imports every module in turn with an audit hook recording what each
import does; the objects alive after each import are searched for the kinds a role builds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

WALK = r"""
import gc, importlib, json, os, pkgutil, sys, threading

events = []
ROOTS = tuple({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})
CODE = (".py", ".pyc", ".so", ".pth")
# What libraries read while they are imported, not state of ours: package metadata (pydantic
# looks for plugins when the first model class is made), psutil's probes of /proc, the system's
# time zone data (pandas, imported by lightgbm and shap, reads UTC's).
LIBRARY = (".egg-info/", ".dist-info/", "/proc/", "/dev/null", "/usr/share/zoneinfo/")

def hook(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.realpath(os.fsdecode(args[0]))
        if path.endswith(CODE) or path.startswith(ROOTS) or os.path.isdir(path):
            return  # code being imported, or a library's own files
        if any(part in path for part in LIBRARY):
            return
        events.append(("open", path))
    elif event.startswith("socket.") and event != "socket.getaddrinfo":
        events.append((event, repr(args)[:80]))

sys.addaudithook(hook)
import app
names = sorted(m.name for m in pkgutil.walk_packages(app.__path__, "app."))
found = {}
for name in names:
    events.clear()
    importlib.import_module(name)
    threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if events or threads:
        found[name] = {"io": events[:5], "threads": threads}

import asyncio, faust, faust.tables.base
from app.explain.scheduler import AgingScheduler
from app.explainer.workers import WorkQueue
from app.kafka.local_table import LocalTable
from app.kafka.sink import Sink
BUILT = (faust.App, faust.tables.base.Collection, Sink, LocalTable, WorkQueue, AgingScheduler, asyncio.Queue)
gc.collect()
alive = sorted({type(o).__qualname__ for o in gc.get_objects() if isinstance(o, BUILT)})
print(json.dumps({"modules": names, "found": found, "alive": alive}))
"""


def test_importing_any_module_builds_nothing_and_opens_nothing() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WALK], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(report["modules"]) > 60  # the walk found the package (sanity of the oracle)
    assert {"app.scorer.loop", "app.explainer.router", "app.relay.server"} <= set(report["modules"])
    assert report["found"] == {}, f"modules that open files, sockets or threads at import: {report['found']}"
    assert report["alive"] == [], f"objects built at import: {report['alive']}"


DOMAIN = r"""
import importlib, json, pkgutil, sys
import app.explain, app.model, app.records
for package in (app.explain, app.model, app.records):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(module.name)
print(json.dumps(sorted(m for m in ("confluent_kafka", "faust", "aiokafka", "mode") if m in sys.modules)))
"""


def test_the_domain_packages_import_no_kafka_client() -> None:
    """Features, scoring, explanations, scheduling, reasons, registry, contracts: plain code."""
    done = subprocess.run(
        [sys.executable, "-c", DOMAIN], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
