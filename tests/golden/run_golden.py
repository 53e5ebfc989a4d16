#!/usr/bin/env python3
"""Run the golden scenarios (tests/golden/*.in) through golden_driver on one store and
compare the output with the reference (*.ref): the same references for SQLite and Redis.

Usage: run_golden.py DRIVER sqlite|redis. GOLDEN_UPDATE=1 rewrites the references instead
(review the diff before committing it). Redis: a redis-server on a free loopback port,
started and stopped here by PID.
"""

import difflib
import glob
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# What differs from run to run: a store's back-off left after a failed connection.
VARIABLE = ((re.compile(r"next attempt in \d+ ms"), "next attempt in N ms"),)


def normalise(text):
    for pattern, fixed in VARIABLE:
        text = pattern.sub(fixed, text)
    return text


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(tmp):
    if not shutil.which("redis-server"):
        print("redis-server is not installed (scripts/install-deps.sh test)", file=sys.stderr)
        sys.exit(77)
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


def main():
    driver, store = sys.argv[1], sys.argv[2]
    update = os.environ.get("GOLDEN_UPDATE") == "1"
    failed = 0
    with tempfile.TemporaryDirectory(prefix="spamtrapd-golden.") as tmp:
        os.chmod(tmp, 0o755)
        redis = None
        args = ["--sqlite", tmp]
        if store == "redis":
            redis, port = start_redis(tmp)
            args = ["--redis", str(port)]
        env = dict(os.environ, GOLDEN_UNUSED_PORT=str(free_port()))
        try:
            for path in sorted(glob.glob(os.path.join(HERE, "*.in"))):
                ref = path[:-3] + ".ref"
                run = subprocess.run([driver, path, *args], capture_output=True, text=True, env=env,
                                     timeout=120)
                if run.returncode != 0:
                    print(f"{os.path.basename(path)}: golden_driver exited {run.returncode}\n"
                          f"{run.stdout[-2000:]}{run.stderr}")
                    failed += 1
                    continue
                out = normalise(run.stdout)
                if update:
                    with open(ref, "w", encoding="utf-8") as f:
                        f.write(out)
                    print(f"{os.path.basename(ref)}: written")
                    continue
                with open(ref, encoding="utf-8") as f:
                    want = f.read()
                if out != want:
                    failed += 1
                    diff = difflib.unified_diff(want.splitlines(True), out.splitlines(True),
                                                ref, f"{store} output")
                    print("".join(diff))
                else:
                    print(f"{os.path.basename(path)} on {store}: same as {os.path.basename(ref)}")
        finally:
            if redis:
                redis.terminate()
                redis.wait(10)
    print(f"golden {store}: {'FAILED' if failed else 'ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
