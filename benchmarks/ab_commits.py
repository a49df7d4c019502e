"""Two commits of resync side by side: did a change move the lease figures?

    python -m benchmarks.ab_commits --base 189ffd4 --parts lease,pg --repeat 2

Checks ``--base`` out into a temporary git worktree and runs the same
:mod:`benchmarks.worker` part from the base tree and from this tree in turn,
alternating base/head ``--repeat`` times per part and loop, each run a process
of its own (``PYTHONPATH`` picks the tree). Machine speed drifts between
processes, so every resync row is first divided by a reference measured in the
same process -- ``asyncio.Semaphore`` for ``lease``, the wrapped path
(``baseline``) where the row has one -- and the report is head ÷ base of those
normalised figures: 1.00 means no change, a few percent either side is noise.

Both trees use this virtualenv's drivers. The worktree is removed at the end,
also when interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = {"lease": "asyncio.Semaphore"}


def _run(tree: Path, part: str, loop: str, rounds: int, duration: float) -> list[dict[str, Any]]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        path = Path(out.name)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, "-m", "benchmarks.worker", "--part", part, "--loop", loop]
    command += ["--rounds", str(rounds), "--duration", str(duration), "--out", str(path)]
    subprocess.run(command, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    try:
        rows: list[dict[str, Any]] = json.loads(path.read_text())
    finally:
        path.unlink(missing_ok=True)
    return rows


def _normalised(rows: list[dict[str, Any]]) -> dict[tuple[str, str, int], float]:
    """resync rows as ops/s ÷ the same process's reference at the same concurrency."""
    by_key = {(r["workload"], r["impl"], r["concurrency"]): r for r in rows}
    result: dict[tuple[str, str, int], float] = {}
    for (workload, impl, callers), row in by_key.items():
        if not impl.startswith("resync"):
            continue
        if row.get("ratio") is not None:
            result[(workload, impl, callers)] = float(row["ratio"])
            continue
        reference = next(
            (
                by_key.get((workload, ref, callers))
                for k, ref in REFERENCE.items()
                if k in row["backend"]
            ),
            None,
        )
        if reference and reference["ops_per_s"]:
            result[(workload, impl, callers)] = row["ops_per_s"] / reference["ops_per_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare this tree with")
    parser.add_argument("--parts", default="lease,pg")
    parser.add_argument("--loops", default="asyncio,uvloop")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=0.5)
    parser.add_argument("--repeat", type=int, default=2, help="base/head pairs per part and loop")
    args = parser.parse_args()

    base_tree = Path(tempfile.mkdtemp(prefix="resync-ab-")) / "base"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base_tree), args.base],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    figures: dict[tuple[str, str, str, int], dict[str, list[float]]] = defaultdict(
        lambda: {"base": [], "head": []}
    )
    try:
        for part in args.parts.split(","):
            for loop in args.loops.split(","):
                for turn in range(args.repeat):
                    order = [("base", base_tree), ("head", ROOT)]
                    for side, tree in order if turn % 2 == 0 else order[::-1]:
                        print(f"{part} {loop} {side} ({turn + 1}/{args.repeat})", flush=True)
                        rows = _run(tree, part, loop, args.rounds, args.duration)
                        for (workload, impl, callers), value in _normalised(rows).items():
                            figures[(loop, workload, impl, callers)][side].append(value)
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)], check=False
        )
    print(f"\nhead ÷ base ({args.base}) of resync ÷ same-process reference, median of runs")
    print("| loop | workload | impl | callers | base | head | head ÷ base |")
    print("|---|---|---|---:|---:|---:|---:|")
    for (loop, workload, impl, callers), sides in sorted(figures.items()):
        if not sides["base"] or not sides["head"]:
            continue
        base, head = statistics.median(sides["base"]), statistics.median(sides["head"])
        print(
            f"| {loop} | {workload} | {impl} | {callers} "
            f"| {base:.3f} | {head:.3f} | {head / base:.3f} |"
        )


if __name__ == "__main__":
    main()
