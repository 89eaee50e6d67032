"""What a user sees in TensorBoard for a log directory, read through TensorBoard's own HTTP data API.

Starts `tensorboard --logdir <dir>` on 127.0.0.1 (a free port), waits for it, and prints as JSON: the runs, the
scalar, image and text tags of each, and the HPARAMS tab (columns with their types, and each run's values).
The tests use it on finished runs and sweeps (tests/test_tensorboard.py); a person can too:

    python scripts/check_tensorboard.py outputs/multirun/2026-12-01/15-48-24
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(base: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "X-TensorBoard-Client": "gentrain"} if body is not None else {}
    with urllib.request.urlopen(urllib.request.Request(base + path, data=data, headers=headers), timeout=30) as reply:
        return json.loads(reply.read().decode())


def hparams_view(base: str) -> dict[str, Any]:
    """The HPARAMS tab: its columns (name -> type) and one row of values per run."""
    experiment = request(base, "/data/plugin/hparams/experiment", {"experimentName": ""})
    columns = {h["name"]: h.get("type", "") for h in experiment.get("hparamInfos", [])}
    groups = request(base, "/data/plugin/hparams/session_groups", {
        "experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                                  "STATUS_RUNNING"],
        "colParams": [{"hparam": name} for name in columns], "startIndex": 0, "sliceSize": 1000,
    })
    rows = {}
    for group in groups.get("sessionGroups", []):
        for session in group.get("sessions", []):
            rows[session["name"]] = group.get("hparams", {})
    return {"columns": columns, "rows": rows, "metrics": [m["name"]["tag"] for m in experiment.get("metricInfos", [])]}


def view(logdir: Path, timeout: float = 120.0) -> dict[str, Any]:
    port = free_port()
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
               "--port", str(port), "--load_fast", "false", "--reload_interval", "0"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                runs = request(base, "/data/runs")
                scalars = request(base, "/data/plugin/scalars/tags")
                if set(scalars) >= set(runs) and runs:  # every run is loaded
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"tensorboard did not serve {logdir}: {server.stderr.read() if server.stderr else ''}")
            time.sleep(0.5)
        images = request(base, "/data/plugin/images/tags")
        texts = request(base, "/data/plugin/text/tags")
        return {
            "runs": runs,
            "scalars": {run: sorted(tags) for run, tags in scalars.items()},
            "images": {run: sorted(tags) for run, tags in images.items()},
            "text": {run: sorted(tags) for run, tags in texts.items()},
            "hparams": hparams_view(base),
        }
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logdir", type=Path)
    args = parser.parse_args()
    print(json.dumps(view(args.logdir), indent=2))


if __name__ == "__main__":
    main()
