"""The worker program: one request per line of JSON on stdin, one answer per line on stdout.

Standard library only, so it starts fast and knows nothing of resync. It prints
a ``{"ready": true, "pid": ...}`` line once it is ready, then answers
``{"id": n, "op": "...", "args": {...}}`` with ``{"id": n, "ok": true,
"result": ...}`` or ``{"id": n, "ok": false, "error": "..."}``, and exits when
stdin closes.

Operations: ``ping``, ``echo`` (``value``), ``pid``, ``sleep`` (``seconds``),
``fail`` (an error answer; the worker stays usable) and ``crash`` (exit at once
without answering, as a segfault would).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


def handle(op: str, args: dict[str, Any]) -> Any:
    if op == "ping":
        return "pong"
    if op == "echo":
        return args.get("value")
    if op == "pid":
        return os.getpid()
    if op == "sleep":
        time.sleep(float(args.get("seconds", 0)))
        return "slept"
    if op == "fail":
        raise ValueError(str(args.get("message", "failed on purpose")))
    if op == "crash":
        os._exit(70)
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    out = sys.stdout
    out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = {
                "id": request["id"],
                "ok": True,
                "result": handle(request["op"], request["args"]),
            }
        except Exception as exc:
            reply = {"id": request["id"], "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
