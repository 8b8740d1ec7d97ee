"""``python -m service serve``: clear one-line errors, serving, and a clean exit on SIGTERM."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _serve(*args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "service", "serve", *args],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_missing_bundle_is_one_line_and_exit_2(tmp_path: Path) -> None:
    process = _serve("--bundle", str(tmp_path / "nope"))
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    assert stderr.strip().splitlines() == [f"error: bundle {tmp_path / 'nope'}: no such directory"]


def test_invalid_setting_is_named(tiny_bundle: Path) -> None:
    process = _serve("--bundle", str(tiny_bundle), NEXTWORD_MAX_K="500")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "NEXTWORD_MAX_K" in stderr
    assert "Traceback" not in stderr


def test_serves_then_exits_cleanly_on_sigterm(tiny_bundle: Path) -> None:
    port = _free_port()
    process = _serve("--bundle", str(tiny_bundle), "--port", str(port))
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "server never became ready"
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("POST", "/v1/suggest", json.dumps({"text": "The "}))
        response = conn.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["suggestions"]
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        # uvicorn shuts down gracefully, then re-raises the signal so the parent sees it.
        assert process.returncode in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_workers_serve_from_one_port_and_stop_on_sigterm(tiny_bundle: Path) -> None:
    import psutil

    port = _free_port()
    process = _serve("--bundle", str(tiny_bundle), "--port", str(port), "--workers", "2")
    try:
        deadline = time.monotonic() + 180
        ready = 0
        while ready < 4:  # several answers in a row: every worker has finished starting
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "workers never became ready"
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("POST", "/v1/suggest", json.dumps({"text": "The "}))
                response = conn.getresponse()
                ready = ready + 1 if response.status == 200 else 0
                conn.close()
            except OSError:
                ready = 0
                time.sleep(0.2)
        workers = [
            child
            for child in psutil.Process(process.pid).children()
            if "multiprocessing.resource_tracker" not in " ".join(child.cmdline())
        ]
        assert len(workers) == 2
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode in (0, -signal.SIGTERM)
        assert stderr.count("Application shutdown complete") == 2
        assert not any(worker.is_running() for worker in workers)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
