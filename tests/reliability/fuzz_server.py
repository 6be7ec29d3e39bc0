"""Run cache readers on hostile bytes in a child process: a crash or a hang of a C library
(pyarrow, libhdf5) becomes a finding instead of taking the test run down.

`isolated(target, *args)` asks a small server process (this module run with `python -m` from
the repository root, importing only the cache modules, not paddle) to fork one child per call,
so each call costs a few milliseconds instead of a fork of the whole test process.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from offline_ssld.cache.backends import BACKEND_SUFFIX, read_columns, write_columns
from offline_ssld.cache.format import load_manifest, shard_name
from offline_ssld.cache.reader import CacheReader
from offline_ssld.errors import CacheError
from offline_ssld.tools.audit import verify_cache

ROOT = Path(__file__).resolve().parents[2]


def consume_manifest(cache: str) -> None:
    """Everything that reads a manifest: load, open a reader, read shards, verify."""
    load_manifest(cache)
    reader = CacheReader(cache, require_complete=False)
    for number in range(min(len(reader.manifest.shards), 4)):
        reader.load_shard(number)
    verify_cache(cache)


def consume_shard(backend: str, cache: str) -> None:
    """Shard 0 of `cache` through the backend reader and the cache reader, unverified."""
    assert backend in BACKEND_SUFFIX
    images = load_manifest(cache).shards[0].images  # the manifest stays valid: shards fuzzed
    read_columns(backend, Path(cache) / shard_name(0, backend), images)
    CacheReader(cache, require_complete=False).load_shard(0, verify=False)


TARGETS = {"manifest": consume_manifest, "shard": consume_shard}


# ------------------------------------------------------------------------------ server side


def _run_in_child(target: str, args: list, timeout: float) -> tuple[str, str]:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run, report, leave without cleanup
        status, text = "ok", "ok"
        try:
            os.close(read_end)
            try:
                TARGETS[target](*args)
            except CacheError as exc:
                status, text = "CacheError", str(exc)
            except BaseException as exc:  # a finding
                status, text = "other", f"{type(exc).__name__}: {exc}"
            os.write(write_end, json.dumps([status, text[:4000]]).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + timeout
    try:
        while True:
            done, wait_status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return "hang", f"no answer within {timeout} s"
            time.sleep(0.0005)
        answer = os.read(read_end, 1 << 16)
    finally:
        os.close(read_end)
    if os.WIFSIGNALED(wait_status):
        return "crash", f"killed by signal {os.WTERMSIG(wait_status)}"
    if not answer:
        return "crash", f"exit status {os.WEXITSTATUS(wait_status)} without an answer"
    status, text = json.loads(answer)
    return status, text


def _warm_up() -> None:
    """Use both backends once here: their first use costs ~0.5 s (pyarrow's lazy set-up),
    which every forked child would pay again."""
    with tempfile.TemporaryDirectory() as directory:
        columns = {"key": np.zeros((1, 16), np.uint8), "path_name": np.array(["a"], dtype=object)}
        for backend in BACKEND_SUFFIX:
            path = Path(directory) / shard_name(0, backend)
            write_columns(backend, path, columns, "0" * 32)
            read_columns(backend, path, 1)


def serve() -> None:
    _warm_up()
    for line in sys.stdin:
        target, args, timeout = json.loads(line)
        print(json.dumps(_run_in_child(target, args, timeout)), flush=True)


# ------------------------------------------------------------------------------ test side

_server: subprocess.Popen | None = None


def _stop() -> None:
    if _server is not None and _server.poll() is None:
        _server.stdin.close()
        _server.wait(timeout=30)


def isolated(target: str, *args: str, timeout: float = 20.0) -> tuple[str, str]:
    """("ok" | "CacheError" | "other" | "crash" | "hang", message) of `TARGETS[target](*args)`
    run in a child process."""
    global _server
    if _server is None or _server.poll() is not None:
        _server = subprocess.Popen(
            [sys.executable, "-m", __spec__.name],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        atexit.register(_stop)
    _server.stdin.write(json.dumps([target, list(args), timeout]) + "\n")
    _server.stdin.flush()
    answer = _server.stdout.readline()
    if not answer:
        raise RuntimeError("the fuzz server died")
    status, text = json.loads(answer)
    return status, text


if __name__ == "__main__":
    serve()
