#!/usr/bin/env python3
"""Instructions per policy request (or milter session) of two spamtrapd binaries, counted by callgrind.

CPU time per request on a shared machine moves by 5-15 % from run to run
(docs/performance.md), too much to show a cost of a few percent. The
number of instructions the daemon executes per request does not depend
on the machine's load: this runs each binary under valgrind's callgrind
on a new SQLite store, sends it --warmup policy requests (so that the
absent-key filter's thread has built it), zeroes the counters
(callgrind_control), sends --requests more (policy_load, fixed seed, one
connection, no trap recipients: no write makes the filter build again),
dumps, and divides that dump's instructions (every thread) by the
requests. Instructions are not time (a cache miss or a contended atomic
costs more than one, and the kernel's share is left out), so this
complements the CPU-time rows of bench/run.py; it does not replace them.

--milter counts instructions per milter session instead: the daemon
listens for the milter only and milter_load plays Postfix's side (one
connection, one transaction a session, no trap recipients); B may then
be "milter_ref", the no-op libmilter filter of BUILD/bench, so that what
a spamtrapd session costs beyond libmilter's own work shows as A - B.

--relay counts the relay rows of bench/run.py instead: A runs with run.py's
relay and ratelimit sections (RELAY_EXTRA), B without, both under its SASL
load (policy_load -a --accounts, each account from a few networks of its
own); B defaults to A, so that one binary's relay+ratelimit / blocklist-only
ratio is counted. --extra-a/--extra-b add any config sections (JSON) to
A's or B's config. --keep keeps the callgrind files (callgrind_annotate
them for where the instructions go). --bench-store gives each daemon a
copy of bench/run.py's store instead of a new one (store_bench's --entries
blocklist entries, trap_bench's --traps traps) and sends run.py's load
mix (its trap and blocklisted-sender fractions, so trap hits write).
--redis runs the daemons on a redis-server started here, under callgrind
too (each run under a prefix of its own), and prints its instructions per
request beside the daemon's: with --relay, the Redis relay rows (the hot
copies warmed by --warmup; what the writes behind cost Redis).

Usage: bench/instructions.py --build BUILD [--milter | --relay] A_BINARY [B_BINARY]
(BUILD: a Release build with SPAMTRAPD_BENCH=ON, for policy_load; as
root, both daemons and callgrind_control run as nobody).
Every process is started here and stopped here by PID.
"""

import argparse
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("spamtrapd exited with %d before listening" % proc.returncode)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("spamtrapd did not listen on %d within %d s" % (port, timeout))


def wait_idle(pid, timeout=900):
    """Until the daemon (under valgrind) rests: the filter's thread has built it (a million
    entries take minutes there), the write behind has caught up. At least 2 s."""
    def cpu():
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    time.sleep(2)
    deadline = time.monotonic() + timeout
    last = cpu()
    while time.monotonic() < deadline:
        time.sleep(1)
        now = cpu()
        if now - last < 0.05:
            return
        last = now


def instructions(args, tmp, binary, requests, tag, extra=None):
    """Total instructions (Ir, every thread) of one daemon run that answers `requests` requests."""
    work = os.path.join(tmp, tag)
    os.mkdir(work)
    port = free_port()
    user = "nobody" if os.getuid() == 0 else None
    listen = {"milter": {"listen": "inet:%d@127.0.0.1" % port}} if args.milter else {
        "policy": {"listen": [{"address": "127.0.0.1:%d" % port, "role": "full"}]}}
    cfg = {
        **listen,
        "store": {"backend": "sqlite", "sqlite": {"path": os.path.join(work, "spamtrapd.db")}},
        "traps": {"files": [os.path.join(tmp, "traps.txt")]},
        "log": {"target": "stderr", "level": "warning"},
        **(extra or {}),
    }
    if args.redis:
        cfg["store"] = {"backend": "redis", "redis": {"host": "127.0.0.1", "port": args.redis["port"],
                                                      "prefix": tag + ":"}}
    with open(os.path.join(work, "spamtrapd.json"), "w") as f:
        json.dump(cfg, f)
    if args.bench_store:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(args.bench_store + suffix):
                shutil.copyfile(args.bench_store + suffix, os.path.join(work, "spamtrapd.db" + suffix))
    # As root, valgrind runs as nobody from the start: callgrind opens its output file at start and
    # writes it at exit, after spamtrapd would have dropped privileges.
    if user:
        pw = pwd.getpwnam(user)
        os.chown(work, pw.pw_uid, pw.pw_gid)
        for name in os.listdir(work):
            os.chown(os.path.join(work, name), pw.pw_uid, pw.pw_gid)
        drop = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    else:
        drop = {}
    # callgrind_control talks to valgrind through files only its user may use.
    as_user = ["setpriv", "--reuid", user, "--regid", str(pwd.getpwnam(user).pw_gid), "--clear-groups"] if user else []
    out = os.path.join(work, "callgrind.out")
    with open(os.path.join(work, "spamtrapd.log"), "w") as log:
        if binary == "milter_ref":
            cmd = [os.path.join(os.path.abspath(args.build), "bench", "milter_ref"), "-p", str(port)]
        else:
            cmd = [os.path.abspath(binary), "-f", "-c", os.path.join(work, "spamtrapd.json")]
        threads = ["--separate-threads=yes"] if args.threads else []
        proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out] + threads + cmd,
                                stdout=log, stderr=subprocess.STDOUT, cwd=work, **drop)
    tool = "milter_load" if args.milter else "policy_load"

    def load(n, seed):
        accounts = ["-a", str(args.accounts)] if args.accounts else []
        # run.py's mix (trap hits, blocklisted senders of the store), or no trap recipients at all
        mix = ["-T", str(args.traps), "-B", str(max(args.blocked, 1))] if args.bench_store else ["-t", "0"]
        r = subprocess.run([os.path.join(args.build, "bench", tool), "-p", str(port), "-c", "1", "-w", "0",
                            "-d", "3600", "-n", str(n), "-r", str(seed)] + mix + accounts,
                           capture_output=True, text=True, timeout=3600)
        if r.returncode != 0:
            raise RuntimeError("%s failed: %s%s" % (tool, r.stdout, r.stderr))
        result = json.loads(r.stdout.strip().splitlines()[-1])
        if result.get("all") != n:
            raise RuntimeError("%s: %s answered, not %d" % (tool, result.get("all"), n))

    def callgrind_control(flag):
        subprocess.run(as_user + ["callgrind_control", flag, str(proc.pid)], check=True, capture_output=True,
                       timeout=60)

    try:
        wait_port(port, proc)
        # Warm-up: the absent-key filter's thread builds it (lookups go to SQLite until then); no trap
        # recipients, so that no write makes it build again while counting.
        load(args.warmup, 3)
        wait_idle(proc.pid)
        callgrind_control("--zero")
        if args.redis:
            subprocess.run(["callgrind_control", "--zero", str(args.redis["proc"].pid)], check=True,
                           capture_output=True, timeout=60)
        load(requests, 7)
        callgrind_control("--dump=measured")
        if args.redis:
            subprocess.run(["callgrind_control", "--dump=" + tag, str(args.redis["proc"].pid)], check=True,
                           capture_output=True, timeout=60)
            args.redis["per"] = redis_dump(args.redis["dir"], tag) / requests
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    total, parts = 0, {}
    for name in sorted(os.listdir(work)):
        if name.startswith("callgrind.out"):
            with open(os.path.join(work, name)) as f:
                text = f.read()
            if "measured" in text.split("events:")[0]:
                m = re.search(r"^summary: (\d+)", text, re.M)
                if m:
                    total += int(m.group(1))
                    kind = thread_kind(text)
                    parts[kind] = parts.get(kind, 0) + int(m.group(1))
    if not parts:
        raise RuntimeError("no dump with totals in " + work)
    return total, parts


def redis_dump(rdir, tag):
    """The instructions of redis-server's dump named tag (callgrind_control --dump=TAG)."""
    for _ in range(50):
        for name in os.listdir(rdir):
            if not name.startswith("callgrind.out."):
                continue
            with open(os.path.join(rdir, name)) as f:
                text = f.read()
            m = re.search(r"^summary: (\d+)", text, re.M)
            if re.search(r"^desc: Trigger: .*\b%s$" % re.escape(tag), text, re.M) and m:
                return int(m.group(1))
        time.sleep(0.1)
    raise RuntimeError("no redis-server dump for " + tag + " in " + rdir)


def start_redis(tmp):
    """redis-server under callgrind, for --redis."""
    rdir = os.path.join(tmp, "redis")
    os.mkdir(rdir)
    port = free_port()
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + os.path.join(rdir, "callgrind.out"),
                             "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", rdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return {"proc": proc, "port": port, "dir": rdir, "per": 0.0}


# --threads: a thread's dump named by the first of these functions it ran (spamtrapd's thread mains).
THREAD_KINDS = (("worker_main", "policy workers"), ("flusher_main", "write behind"),
                ("builder_main", "filter builder"), ("exporter_main", "exporter"))


def thread_kind(text):
    names = set(re.findall(r"^c?fn=\(\d+\) (\S+)", text, re.M))
    for fn, kind in THREAD_KINDS:
        if fn in names:
            return kind
    return "other"


def relay_extra():
    """bench/run.py's relay and ratelimit sections, so that both count the same config."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import run  # noqa: E402 (bench/run.py: its main runs only as a script)
    return run.Bench.RELAY_EXTRA


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build-bench", help="Release build with the bench tools")
    ap.add_argument("--warmup", type=int, default=2000, help="requests before counting")
    ap.add_argument("--requests", type=int, default=10000, help="requests counted")
    ap.add_argument("--reps", type=int, default=2, help="runs of each binary")
    ap.add_argument("--milter", action="store_true",
                    help="instructions per milter session (milter_load) instead of per policy request")
    ap.add_argument("--relay", action="store_true",
                    help="A with bench/run.py's relay and ratelimit sections, B without, both under its SASL "
                    "load (--accounts)")
    ap.add_argument("--accounts", type=int, default=None,
                    help="SASL accounts of the load (policy_load -a; default 10000 with --relay, none without)")
    ap.add_argument("--extra-a", type=json.loads, default={}, help="config sections (JSON) added to A's config")
    ap.add_argument("--extra-b", type=json.loads, default={}, help="config sections (JSON) added to B's config")
    ap.add_argument("--bench-store", action="store_true",
                    help="each daemon on a copy of bench/run.py's store (--entries, --traps) under its load mix")
    ap.add_argument("--entries", type=int, default=1000000, help="with --bench-store: blocklist entries")
    ap.add_argument("--traps", type=int, default=100000, help="with --bench-store: trap addresses")
    ap.add_argument("--threads", action="store_true",
                    help="also per thread: the policy workers, the write behind, the filter's builder (callgrind "
                    "--separate-threads); the write behind's share is per second of the run, which callgrind "
                    "stretches some 50 times: its refreshes and flushes count that much more per request")
    ap.add_argument("--redis", action="store_true",
                    help="the daemons on a redis-server of this run, counted too (instructions per request)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (callgrind files, logs)")
    ap.add_argument("a", help="spamtrapd binary A (e.g. this tree)")
    ap.add_argument("b", nargs="?", help="spamtrapd binary B (e.g. built with -DSPAMTRAPD_METRICS=OFF); with "
                    "--milter also milter_ref, the no-op libmilter filter; default A")
    args = ap.parse_args()
    if args.b is None:
        args.b = args.a
    if args.relay:
        if args.milter:
            ap.error("--relay counts policy requests, not milter sessions")
        args.extra_a = {**relay_extra(), **args.extra_a}
        if args.accounts is None:
            args.accounts = 10000
    if args.redis and (args.bench_store or args.milter):
        ap.error("--redis counts policy requests on a new Redis store: not with --bench-store or --milter")
    tmp = tempfile.mkdtemp(prefix="spamtrapd-instructions-")
    os.chmod(tmp, 0o755)
    try:
        if args.redis:
            args.redis = start_redis(tmp)
        if args.bench_store:
            # as bench/run.py's steps 1 and 2: the traps, the store with its blocklisted senders
            tools = os.path.join(args.build, "bench")
            subprocess.run([os.path.join(tools, "trap_bench"), "-d", tmp, "-n", str(args.traps)], check=True,
                           capture_output=True, timeout=600)
            db = os.path.join(tmp, "bench.db")
            out = subprocess.run([os.path.join(tools, "store_bench"), "-b", "sqlite", "-n", str(args.entries),
                                  "-l", "1000", "-f", db], check=True, capture_output=True, text=True,
                                 timeout=1800).stdout
            args.blocked = json.loads(out.strip().splitlines()[-1])["blocked_senders"]
            args.bench_store = db
        else:
            args.bench_store = None
            with open(os.path.join(tmp, "traps.txt"), "w") as f:
                # A trap list as sites have (policy_load -t 0 sends none of them: BENCH_TRAP_FMT).
                for i in range(50):
                    f.write("trap%d@traps.example\n" % i)
        per = {}
        unit = "session" if args.milter else "request"
        extras = {"A": args.extra_a, "B": args.extra_b}
        for rep in range(args.reps):
            for name, binary in (("A", args.a), ("B", args.b)):
                total, parts = instructions(args, tmp, binary, args.requests, "%s%d" % (name, rep), extras[name])
                per.setdefault(name, []).append(total / args.requests)
                print("%s %s: %.0f instructions per %s%s" % (
                    name, binary, total / args.requests, unit,
                    " (redis-server: %.0f)" % args.redis["per"] if args.redis else ""), flush=True)
                if args.threads:
                    print("  " + ", ".join("%s %.0f" % (k, v / args.requests) for k, v in sorted(parts.items())),
                          flush=True)
        a, b = min(per["A"]), min(per["B"])
        print("A/B %.4f (fewest per %s of each: %.0f / %.0f)" % (a / b, unit, a, b))
    finally:
        if args.redis:
            args.redis["proc"].send_signal(signal.SIGTERM)
            args.redis["proc"].wait(timeout=120)
        if args.keep:
            print("kept " + tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
