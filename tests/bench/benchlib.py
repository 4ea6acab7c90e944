"""Helpers shared by the benchmark scripts in tests/bench/."""

from __future__ import annotations

import shutil
from pathlib import Path


def report(name: str, value) -> None:
    """Prints one figure as a `name: value` line (floats with 3 decimals below 100)."""
    if isinstance(value, float):
        value = f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    print(f"{name}: {value}", flush=True)


def remove_or_keep(root: Path, keep: bool) -> None:
    """Removes a benchmark's temp dir, or says where it was kept (--keep)."""
    if keep:
        print(f"# kept {root}", flush=True)
    else:
        shutil.rmtree(root, ignore_errors=True)


def teardown(env, root: Path, keep: bool) -> None:
    """Ends a benchmark run of the e2e harness: stops its processes (`env`, if it got that
    far) and the client loop, then removes or keeps the temp dir."""
    import harness as h

    if env is not None:
        env.close()
    h.loop_thread().close()
    remove_or_keep(root, keep)
