"""Multi-worker and fault figures, side by side in one run on this machine (loopback workers).

(a) seconds per epoch: one process against two MultiWorkerMirroredStrategy workers on
127.0.0.1 (same global batch, same data); (b) how long the surviving worker takes to stop
after the other is SIGKILLed; (c) final val MSE of a run SIGKILLed mid-epoch and resumed,
against the same run uninterrupted.

    .venv/bin/python benchmarks/multiworker.py --data ../shared/data/mnist --epochs 4
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

AEKIT = str(Path(sys.executable).with_name("aekit"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list, **kw) -> subprocess.Popen:
    env = {**os.environ, "AEKIT_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_CONFIG", None)
    return subprocess.Popen(
        [AEKIT, "train", *map(str, args)], env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw
    )


def history(run: Path) -> list:
    try:
        return json.loads((run / "history.json").read_text())
    except (OSError, ValueError):
        return []


def wait_epochs(run: Path, n: int, procs) -> None:
    while len(history(run)) < n:
        if any(p.poll() is not None for p in procs):
            raise SystemExit(f"a process ended early: {procs[0].stderr.read()[-1500:]}")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/mnist")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/multiworker.json"))
    args = parser.parse_args()
    common = ["--dataset", args.data, "--val-split", 0.2, "--gpus", 0, "--quiet"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        one = launch([*common, "--epochs", args.epochs, "-o", tmp / "one"])
        assert one.wait() == 0, one.stderr.read()
        workers = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
        pair = [
            launch([*common, "--epochs", args.epochs, "-o", tmp / "two", "--workers", workers, "--task-index", i]) for i in (0, 1)
        ]
        assert all(p.wait() == 0 for p in pair), pair[0].stderr.read()
        per_epoch = {name: [row["seconds"] for row in history(tmp / name)] for name in ("one", "two")}
        results["seconds_per_epoch"] = {name: sum(v[1:]) / len(v[1:]) for name, v in per_epoch.items()}
        results["final_val_mse"] = {name: history(tmp / name)[-1]["val_mse"] for name in ("one", "two")}

        workers = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
        pair = [launch([*common, "--epochs", 100, "-o", tmp / "lost", "--workers", workers, "--task-index", i]) for i in (0, 1)]
        wait_epochs(tmp / "lost", 1, pair)
        pair[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        code = pair[0].wait(timeout=120)
        results["survivor_stop_seconds"] = time.monotonic() - killed
        results["survivor_exit_code"] = code
        results["survivor_message"] = pair[0].stderr.read().strip().splitlines()[-1]

        run = [*common, "--epochs", args.epochs, "--checkpoint-steps", 20]
        victim = launch([*run, "-o", tmp / "killed"])
        wait_epochs(tmp / "killed", 1, [victim])
        time.sleep(1.0)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        results["killed_after_epochs"] = len(history(tmp / "killed"))
        resume = launch(["--resume", tmp / "killed", "--quiet"])
        assert resume.wait() == 0, resume.stderr.read()
        results["resumed_final_val_mse"] = history(tmp / "killed")[-1]["val_mse"]
        results["uninterrupted_final_val_mse"] = results["final_val_mse"]["one"]
        results["resumed_epochs"] = [row["epoch"] for row in history(tmp / "killed")]

    for key, value in results.items():
        print(f"{key:>30}: {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
