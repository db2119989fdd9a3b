"""Starting and stopping the server in tests: a free 127.0.0.1 port, serve.py in a subprocess (or an app in a thread),
always stopped, even when a test fails."""

import base64
import io
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
from PIL import Image

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SERVE = REPO_ROOT / "paddlemix" / "examples" / "emu3" / "serve.py"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(base_url, proc=None, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before becoming healthy")
        try:
            if httpx.get(f"{base_url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server at {base_url} did not become healthy within {timeout} s")


class ServerProcess:
    """``serve.py --demo DIR`` on a free port; ``stop()`` sends SIGINT (Ctrl-C) and returns the exit code."""

    def __init__(self, demo_dir, *extra, log_path=None):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [sys.executable, str(SERVE), "--demo", str(demo_dir), "--port", str(self.port), "--dtype", "float32",
               "--threads", "1", "--log_level", "warning", *extra]
        self.log = open(log_path, "w+") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_healthy(self.base_url, self.proc)
        except Exception:
            self.kill()
            raise

    def stop(self, timeout=60.0):
        """Ctrl-C; the exit code (the process is killed if it does not stop in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class ServerThread:
    """An app (e.g. with a fake engine) served by uvicorn in a thread of this process."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_healthy(self.base_url, timeout=30.0)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30.0)


def png_array(b64):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def data_uri(path):
    return "data:image/png;base64," + base64.b64encode(pathlib.Path(path).read_bytes()).decode("ascii")
