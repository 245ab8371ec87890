"""How long the `omni` command takes to start: `omni --help` and light commands, whole processes, median of N.

Light commands touch no Celery, pandas or worker: `omni --help`, `omni kill --help`, `omni status` with
the pipeline not running (an empty data folder: the embedded Redis socket is absent) are what an operator types most. Each is run ``--runs`` times after one warm-up, in a
fresh data folder, and the wall-clock median is reported, with the median CPU seconds (user + system, from
``getrusage``: what a loaded machine inflates least); with ``--baseline PYTHON`` the same commands run
with another interpreter (another checkout's virtualenv) for a before/after comparison. The commands run with
bytecode caches, as an installed ``omni`` does (in a scratch ``PYTHONPYCACHEPREFIX``: nothing is written to the
checkouts; ``PYTHONDONTWRITEBYTECODE`` is ignored, it would add the compiling of every module to each run).

    python bench/cli_startup.py [--runs 7] [--baseline /path/to/other/.venv/bin/python]

The last line is one JSON object: ``{"help_s", "kill_help_s", "status_not_running_s", "runs", ...}`` and the
CPU medians ``help_cpu_s``, ... (with ``--baseline``: the same keys prefixed ``baseline_``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = {
    "help_s": ["--help"],
    "kill_help_s": ["kill", "--help"],
    "status_not_running_s": ["status", "--json"],
}


def _times(pythons: list[str], argv: list[str], env: dict[str, str], runs: int, cwd: str) -> list[tuple[float, float]]:
    """(median wall seconds, median CPU seconds) per interpreter, runs interleaved (A B A B ...) so a busy machine's
    drift hits both alike. Run from ``cwd`` (not a checkout: ``-m omni_tasks`` then imports each interpreter's own install).
    """
    times: list[list[float]] = [[] for _ in pythons]
    cpu: list[list[float]] = [[] for _ in pythons]
    for i in range(runs + 1):
        for k, python in enumerate(pythons):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            subprocess.run([python, "-m", "omni_tasks", *argv], env=env, capture_output=True, check=False, timeout=120, cwd=cwd)
            took = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if i:  # the first round warms the file cache and writes the bytecode caches
                times[k].append(took)
                cpu[k].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return [(round(statistics.median(t), 3), round(statistics.median(c), 3)) for t, c in zip(times, cpu, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--baseline", help="another interpreter (e.g. the main checkout's .venv/bin/python) to compare with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="omni-cli-bench-") as scratch:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OMNI_") and k != "PROMETHEUS_MULTIPROC_DIR"}
        env["OMNI_DATA_DIR"] = str(Path(scratch) / "data")
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(Path(scratch) / "pycache")
        result: dict[str, float | int] = {}
        for name, argv in COMMANDS.items():
            pythons = [sys.executable, *([args.baseline] if args.baseline else [])]
            medians = _times(pythons, argv, env, args.runs, scratch)
            for prefix, label, (wall, cpu) in zip(("", "baseline_"), (" ".join(["omni", *argv]), "  baseline"), medians, strict=False):
                result[f"{prefix}{name}"] = wall
                result[f"{prefix}{name.removesuffix('_s')}_cpu_s"] = cpu
                print(f"{label:<24} median {wall:.3f} s, CPU {cpu:.3f} s (N={args.runs})", flush=True)
        result["runs"] = args.runs
        result["load_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
