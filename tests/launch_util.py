"""Run a script under ``python -m paddle.distributed.launch`` with 2 CPU processes for the parallel tests: its own
log folder, a time limit, and the whole process group killed when it fails or runs over."""

import os
import signal
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(args, log_dir, nproc=2, timeout=240):
    """Run ``python -m paddle.distributed.launch --nproc_per_node nproc ARGS``; returns (returncode, combined
    output of the launcher and every worker's log)."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for key in [k for k in env if k.startswith("PADDLE_")]:  # a fresh launch, whatever this process was given
        del env[key]
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc), "--log_dir",
           str(log_dir), *map(str, args)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        out += f"\n[launch killed after {timeout} s]"
        proc.returncode = -9
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    logs = []
    for r in range(nproc):
        path = os.path.join(log_dir, f"workerlog.{r}")
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                logs.append(f"--- workerlog.{r}\n" + f.read()[-6000:])
    return proc.returncode, out + "\n".join(logs)
