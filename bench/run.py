#!/usr/bin/env python3
"""spamtrapd benchmark: speed and memory against the protocol limits and postgrey.

Runs, in one go on this machine (docs/performance.md explains every number):

1. trap_bench: config_load of a 100,000-address trap file, and the cost of
   the decision core per request.
2. store_bench: 1,000,000 blocklist entries loaded through the store API
   (SQLite, and Redis when redis-server is installed), lookups timed at
   10k / 100k / 1M entries; then the same 1,000,000 entries as a file,
   loaded into a new SQLite file with `spamtrapctl import` (the bulk path).
3. The servers, each on free loopback ports: spamtrapd on that SQLite file
   with the 100,000 traps (and spamtrapd on that Redis), the bare epoll
   policy responder (policy_ref), the no-op libmilter filter (milter_ref)
   and Debian's postgrey with its own --inet and a temporary --dbdir.
4. policy_load against every policy server and milter_load against every
   milter at 1, 8 and 64 connections, interleaved (every server at one
   level, then the next level) and repeated, keeping each server's best
   run, so that noise from other work on the machine hits all alike.
5. Greylisting (issue 13): spamtrapd with the greylist check on a new
   SQLite file (and on that Redis) beside postgrey, every request with a
   sender of its own (policy_load -u), so that every triplet is new and
   every request writes, at the same levels.
6. Relay and ratelimit (issue 14): spamtrapd with the relay check and one
   ratelimit rule (per SASL account) on, beside the same spamtrapd with
   only the blocklist, both under the same SASL-authenticated load
   (policy_load -a: many accounts, each from a few networks), on SQLite
   (each on its own copy of the store) and on the Redis server.
7. DNS checks (issue 15): spamtrapd with `dnsbl` (two sites) and `spf`
   on, beside the same spamtrapd without them, under the same load of a
   small pool of clients (policy_load -C) from one sender domain, on
   SQLite. One rbldnsd serves both DNSBL zones and the sender domains'
   SPF records (its generic dataset) through `dns.forwarders`, with long
   TTLs: after a warm-up load every answer comes from the resolver's
   cache, which the count of rbldnsd's queries during the measured loads
   shows (it should be 0).
8. One table on stdout: requests/s, p50/p99 latency, the ratios
   spamtrapd/limit and spamtrapd/postgrey, peak RSS (VmHWM) of every
   server, load and lookup times, server CPU per request and its ratios, and
   one block of target lines (met / missed, with the figure; issues 6, 13,
   14, 15 and 18: target() adds one), also kept in the results ("targets").

Every process is started here and stopped here by PID. Raw results go to
bench/out/results.json (or --out). Usage: bench/run.py --build BUILD_DIR;
--only greylist runs steps 3 to 5 for the greylisting rows alone, --only
relay step 6 alone (with the store it needs), --only dns step 7 alone.
"""

import argparse
import grp
import json
import os
import platform
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

LEVELS = (1, 8, 64)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def run_json(cmd, timeout):
    """Run a bench tool; its stdout is one JSON object a line."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode not in (0, 1):
        raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd), proc.returncode, proc.stderr.strip()))
    out = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if not out:
        raise RuntimeError("%s printed no result: %s" % (" ".join(cmd), proc.stderr.strip()))
    return out


def dns_rcode(port, name, qtype):
    """The rcode of one UDP query to 127.0.0.1:port, None without an answer within 0.2 s."""
    qid = os.getpid() & 0xFFFF
    qname = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
    packet = qid.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + qname \
        + qtype.to_bytes(2, "big") + b"\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        try:
            s.sendto(packet, ("127.0.0.1", port))
            msg = s.recv(4096)
        except OSError:
            return None
    return msg[3] & 0xF if len(msg) >= 12 and msg[:2] == packet[:2] else None


class Server:
    """A process this script started, with the ports it must open before it is ready."""

    def __init__(self, name, kind, cmd, ports, log_path, env=None):
        self.name, self.kind, self.cmd, self.ports = name, kind, cmd, ports
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.ready_seconds = None
        self.hwm_kib = None

    def wait_ready(self, timeout=30):
        deadline = time.monotonic() + timeout
        pending = list(self.ports.values())
        while pending and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited (%d) before it was ready; see %s"
                                   % (self.name, self.proc.returncode, self.log_path))
            pending = [p for p in pending if not port_open(p)]
            if pending:
                time.sleep(0.01)
        if pending:
            raise RuntimeError("%s did not open ports %s within %d s" % (self.name, pending, timeout))
        self.ready_seconds = time.monotonic() - self.started

    def read_hwm(self):
        try:
            with open("/proc/%d/status" % self.proc.pid) as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        self.hwm_kib = int(line.split()[1])
        except OSError:
            pass
        return self.hwm_kib

    def cpu_seconds(self):
        """user + system time of every thread so far (/proc/PID/stat fields 14 and 15)."""
        try:
            with open("/proc/%d/stat" % self.proc.pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0

    def signal_stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout=15):
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Bench:
    def __init__(self, args):
        self.args = args
        self.bin = os.path.join(args.build, "bench")
        self.spamtrapd = os.path.join(args.build, "src", "spamtrapd")
        self.tmp = tempfile.mkdtemp(prefix="spamtrapd-bench-")
        # spamtrapd refuses to serve as root: run as root (CI), it gets "nobody" and the
        # temporary folder, where its SQLite file and WAL live, is handed to that user.
        self.run_user = "nobody" if os.getuid() == 0 else None
        self.give(self.tmp)
        self.servers = []
        self.results = {"machine": machine(), "args": vars(args), "policy": {}, "milter": {}, "greylist": {},
                        "relay": {}, "dns": {}, "store": {}, "traps": [], "servers": {}, "notes": []}
        self.redis = self.postgrey = None

    def give(self, path):
        if self.run_user:
            pw = pwd.getpwnam(self.run_user)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def tool(self, name):
        return os.path.join(self.bin, name)

    def note(self, text):
        self.results["notes"].append(text)
        print("note: " + text, file=sys.stderr)

    # --- 1, 2: traps and store at scale ------------------------------------------------

    def trap_bench(self):
        out = run_json([self.tool("trap_bench"), "-d", self.tmp, "-n", str(self.args.traps)], 300)
        self.results["traps"] = out
        return os.path.join(self.tmp, "traps.txt")

    def import_bench(self):
        """store_bench -x writes its entries as an import file; spamtrapctl import loads them into a new file."""
        path = os.path.join(self.tmp, "import.tsv")
        db = os.path.join(self.tmp, "import.db")
        run_json([self.tool("store_bench"), "-n", str(self.args.entries), "-x", path], 300)
        cfg = os.path.join(self.tmp, "import.json")
        with open(cfg, "w") as f:
            json.dump({"store": {"sqlite": {"path": db}}, "user": self.run_user}, f)
        ctl = os.path.join(self.args.build, "src", "spamtrapctl")
        start = time.monotonic()
        with open(os.path.join(self.tmp, "import.log"), "w+") as log:
            proc = subprocess.Popen([ctl, "-c", cfg, "import", path], stdout=log, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)  # its own peak RSS (ru_maxrss, KiB)
            proc.returncode = os.waitstatus_to_exitcode(status)
            seconds = time.monotonic() - start
            log.seek(0)
            output = log.read().strip()
        if proc.returncode != 0:
            raise RuntimeError("spamtrapctl import failed (%d): %s" % (proc.returncode, output))
        self.results["import"] = {"entries": self.args.entries, "seconds": seconds, "hwm_kib": usage.ru_maxrss,
                                  "output": output}
        for p in (path, db, db + "-wal", db + "-shm"):
            if os.path.exists(p):
                os.unlink(p)

    def store_bench(self, backend, extra):
        cmd = [self.tool("store_bench"), "-b", backend, "-n", str(self.args.entries), "-l",
               str(self.args.lookups)] + extra
        out = run_json(cmd, 600)
        self.results["store"][backend] = out
        return out[-1]

    # --- 3: servers ------------------------------------------------------------------

    def start(self, name, kind, cmd, ports, env=None):
        srv = Server(name, kind, cmd, ports, os.path.join(self.tmp, name.replace(" ", "_") + ".log"), env)
        self.servers.append(srv)
        return srv

    def spamtrapd_config(self, name, store, trap_file, policy_port, milter_port, extra=None):
        cfg = {
            "milter": {"listen": "inet:%d@127.0.0.1" % milter_port},
            "policy": {"listen": [{"address": "127.0.0.1:%d" % policy_port, "role": "full"}]},
            "store": store,
            "traps": {"files": [trap_file] if trap_file else []},
            "log": {"target": "stderr", "level": "info"},
            "user": self.run_user,
        }
        cfg.update(extra or {})
        path = os.path.join(self.tmp, name + ".json")
        with open(path, "w") as f:
            json.dump(cfg, f, indent=1)
        return path

    def start_spamtrapd(self, name, store, trap_file, binary=None, extra=None):
        ports = {"policy": free_port(), "milter": free_port()}
        cfg = self.spamtrapd_config(name.replace(" ", "_"), store, trap_file, ports["policy"], ports["milter"],
                                    extra)
        return self.start(name, "spamtrapd", [binary or self.spamtrapd, "-f", "-c", cfg], ports)

    def config_error(self, name, store, extra):
        """What `spamtrapd -t` says against a config (None when it accepts it): a daemon built
        before the greylist check refuses the greylist section."""
        cfg = self.spamtrapd_config(name.replace(" ", "_") + "_check", store, None, free_port(), free_port(),
                                    extra)
        proc = subprocess.run([self.spamtrapd, "-t", "-c", cfg], capture_output=True, text=True, timeout=60)
        if proc.returncode == 0:
            return None
        return (proc.stderr.strip() or proc.stdout.strip() or "exit %d" % proc.returncode).splitlines()[0]

    def start_redis(self):
        port = free_port()
        rdir = os.path.join(self.tmp, "redis")
        os.mkdir(rdir)
        return self.start("redis", "store", ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                             "--save", "", "--appendonly", "no", "--dir", rdir],
                          {"redis": port})

    def start_postgrey(self):
        port = free_port()
        dbdir = os.path.join(self.tmp, "postgrey")
        os.mkdir(dbdir)
        user = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(os.getgid()).gr_name
        return self.start("postgrey", "policy",
                          ["postgrey", "--inet=127.0.0.1:%d" % port, "--dbdir=" + dbdir, "--user=" + user,
                           "--group=" + group, "--pidfile=" + os.path.join(dbdir, "pid")], {"policy": port})

    # --- 4: loads ------------------------------------------------------------------

    def load(self, proto, port, conns, blocked):
        tool = "milter_load" if proto == "milter" else "policy_load"
        cmd = [self.tool(tool), "-p", str(port), "-c", str(conns), "-d", str(self.args.duration),
               "-w", str(self.args.warmup), "-T", str(self.args.traps), "-B", str(max(blocked, 1))]
        if proto == "greylist":
            # a sender of its own per request (every triplet new), no trap and no blocklisted sender
            cmd += ["-u", "grey", "-t", "0", "-b", "0"]
        if proto == "relay":
            # SASL logins of many accounts, each from a few networks of its own
            cmd += ["-a", str(self.args.accounts)]
        if proto == "dns":
            cmd += self.DNS_LOAD
        return run_json(cmd, self.args.duration + self.args.warmup + 60)[0]

    def measure(self, proto, targets, side=None):
        """targets: [(name, port, blocked, servers)]; best of --reps runs per server and level,
        interleaved. Each run also gets the CPU time its servers spent per request answered.
        side: processes whose CPU time per request is recorded beside (side_cpu_us), not counted
        in cpu_us, and a function whose growth over the run is recorded as side_count."""
        table = self.results[proto]
        side_procs, side_count = side or ([], None)
        for conns in self.args.levels:
            for _ in range(self.args.reps):
                for name, port, blocked, servers in targets:
                    each = [s.cpu_seconds() for s in servers]
                    side_cpu = sum(s.cpu_seconds() for s in side_procs)
                    count = side_count() if side_count else 0
                    r = self.load(proto, port, conns, blocked)
                    each = [s.cpu_seconds() - c for s, c in zip(servers, each)]
                    r["cpu_us"] = sum(each) * 1e6 / r["all"] if r["all"] else 0.0
                    # each server's share (a daemon and its redis-server), in the order of servers
                    r["cpu_each_us"] = [c * 1e6 / r["all"] if r["all"] else 0.0 for c in each]
                    if side:
                        side_cpu = sum(s.cpu_seconds() for s in side_procs) - side_cpu
                        r["side_cpu_us"] = side_cpu * 1e6 / r["all"] if r["all"] else 0.0
                        r["side_count"] = (side_count() if side_count else 0) - count
                    best = table.setdefault(name, {}).get(str(conns))
                    if best is None or r["rps"] > best["rps"]:
                        table[name][str(conns)] = r
                    print("  %-6s %-18s %2d conns %8.0f /s  p50 %8.1f us  p99 %8.1f us  cpu %6.1f us%s"
                          % (proto, name, conns, r["rps"], r["p50_us"], r["p99_us"], r["cpu_us"],
                             "  (DNS server: %d queries, cpu %.1f us)" % (r["side_count"], r["side_cpu_us"])
                             if side else ""), file=sys.stderr)

    def stop_all(self):
        for s in self.servers:
            s.read_hwm()
            s.signal_stop()
        for s in self.servers:
            s.wait_stopped()
            self.results["servers"][s.name] = {"hwm_kib": s.hwm_kib, "ready_seconds": s.ready_seconds,
                                               "log": s.log_path}

    def ensure_redis(self):
        """The one redis-server of the run (None without redis-server or with --no-redis)."""
        if self.redis is None and shutil.which("redis-server") and not self.args.no_redis:
            self.redis = self.start_redis()
            self.redis.wait_ready()
        return self.redis

    def ensure_postgrey(self):
        """The one postgrey of the run (None without postgrey or with --no-postgrey)."""
        if self.postgrey is None and shutil.which("postgrey") and not self.args.no_postgrey:
            self.postgrey = self.start_postgrey()
            self.postgrey.wait_ready()
        return self.postgrey

    def greylist(self):
        """Step 5: every triplet new, spamtrapd (SQLite, Redis) and postgrey at each level."""
        a = self.args
        # postgrey's defaults (5 min delay, 35 d max age, auto-whitelist after 5) are spamtrapd's. The
        # run writes a few 100,000 triplets: a cap far above them, so that none passes as "greylist full".
        extra = {"greylist": {"mode": "enforce", "max_triplets": 100000000}}
        targets = []
        stores = [("spamtrapd grey sqlite", {"sqlite": {"path": os.path.join(self.tmp, "greylist.db")}})]
        redis = self.ensure_redis()
        if redis:
            stores.append(("spamtrapd grey redis", {"backend": "redis", "redis": {
                "host": "127.0.0.1", "port": redis.ports["redis"], "prefix": "grey:"}}))
        for name, store in stores:
            error = self.config_error(name, store, extra)
            if error:
                self.note("no %s row: spamtrapd -t refuses the greylist section (%s)" % (name, error))
                continue
            st = self.start_spamtrapd(name, store, None, extra=extra)
            st.wait_ready()
            targets.append((name, st.ports["policy"], 1, [st, redis] if "redis" in store else [st]))
        pg = self.ensure_postgrey()
        if pg:
            targets.append(("postgrey", pg.ports["policy"], 1, [pg]))
        else:
            self.note("no postgrey greylist row (%s)" % ("--no-postgrey" if a.no_postgrey
                                                          else "postgrey not installed: scripts/install-deps.sh bench"))
        if targets:
            print("bench: greylisting, every triplet new, at %s connections" % ",".join(map(str, a.levels)),
                  file=sys.stderr)
            self.measure("greylist", targets)

    RELAY_EXTRA = {"relay": {"mode": "enforce"},
                   "ratelimit": {"mode": "enforce", "rules": [
                       # a rate no account of the load reaches: every request is charged, none refused
                       {"name": "account", "key": "sasl_username", "rate": "1000000/1h"}]}}

    def copy_store(self, db, name):
        path = os.path.join(self.tmp, name)
        shutil.copyfile(db, path)
        self.give(path)
        return path

    def baseline_store(self, db):
        """The same entries for a build of another tree, before anything writes to db: imported
        with that build's own spamtrapctl from what this tree's lists, so that a schema this
        tree changed (the other build refuses a newer file) does not end the comparison; a
        copy of the file when there is no such spamtrapctl beside the baseline binary."""
        a = self.args
        base_db = os.path.join(self.tmp, "baseline.db")
        base_ctl = os.path.join(os.path.dirname(os.path.abspath(a.baseline)), "spamtrapctl")
        if not os.access(base_ctl, os.X_OK):
            shutil.copyfile(db, base_db)
            self.give(base_db)
            return base_db
        dump = os.path.join(self.tmp, "baseline.tsv")
        ctl = os.path.join(a.build, "src", "spamtrapctl")
        with open(dump, "w") as out:
            subprocess.run([ctl, "-c", self.ctl_config(db), "list"], stdout=out, check=True, timeout=600)
        subprocess.run([base_ctl, "-c", self.ctl_config(base_db), "import", dump], check=True,
                       stdout=subprocess.DEVNULL, timeout=600)
        os.unlink(dump)
        for p in (db, db + "-wal", db + "-shm", base_db, base_db + "-wal", base_db + "-shm"):
            if os.path.exists(p):
                self.give(p)  # spamtrapctl ran as this user; the daemons run as run_user
        return base_db

    def ctl_config(self, db):
        path = db + ".ctl.json"
        with open(path, "w") as f:
            json.dump({"store": {"sqlite": {"path": db}}, "user": self.run_user}, f)
        return path

    def relay(self, trap_file, sqlite_dbs, sq, redis, rd):
        """Step 6: relay + one ratelimit rule beside the blocklist alone, same SASL load, per store.
        sqlite_dbs: two copies of the preloaded store (the blocklist row's, the relay row's)."""
        stores = [("sqlite", sq, [{"sqlite": {"path": p}} for p in sqlite_dbs])]
        if redis:
            st = {"backend": "redis", "redis": {"host": "127.0.0.1", "port": redis.ports["redis"]}}
            stores.append(("redis", rd, [st, st]))
        targets = []
        for backend, filled, (bl_store, rl_store) in stores:
            error = self.config_error("relay " + backend, rl_store, self.RELAY_EXTRA)
            if error:
                self.note("no relay %s rows: spamtrapd -t refuses the relay or ratelimit section (%s)"
                          % (backend, error))
                continue
            for name, store, extra in (("spamtrapd blocklist " + backend, bl_store, None),
                                       ("spamtrapd relay+rl " + backend, rl_store, self.RELAY_EXTRA)):
                d = self.start_spamtrapd(name, store, trap_file, extra=extra)
                d.wait_ready()
                targets.append((name, d.ports["policy"], filled["blocked_senders"],
                                [d, redis] if backend == "redis" else [d]))
        if targets:
            print("bench: relay + ratelimit beside the blocklist alone, %d SASL accounts, at %s connections"
                  % (self.args.accounts, ",".join(map(str, self.args.levels))), file=sys.stderr)
            self.measure("relay", targets)
            self.relay_commands([t for t in targets if "redis" in t[0]], redis)

    def relay_commands(self, targets, redis):
        """The Redis relay rows' commands per request (INFO commandstats), one more load each at
        the largest level after the measured ones (warm): which commands a request costs Redis,
        and their usec per call (Redis's own timing: wall time, so a busy machine inflates it)."""
        for name, port, blocked, _ in targets:
            before = redis_commandstats(redis.ports["redis"])
            r = self.load("relay", port, self.args.levels[-1], blocked)
            after = redis_commandstats(redis.ports["redis"])
            per = {}
            for cmd, (calls, usec) in after.items():
                calls0, usec0 = before.get(cmd, (0, 0.0))
                if calls > calls0 and cmd not in ("info",):
                    per[cmd] = {"per_request": (calls - calls0) / max(r["all"], 1),
                                "usec_per_call": (usec - usec0) / (calls - calls0)}
            self.results.setdefault("relay_commands", {})[name] = per

    # Step 7: the load of the DNS rows. 64 IPv4 clients (policy_load -C; no IPv6), every sender in
    # senders.example (blocklisted ones in spam.example), 2% trap recipients: 130 DNSBL names and 2
    # SPF records, all cached after the warm-up, whatever worker a connection lands on.
    DNS_LOAD = ["-C", "64", "-6", "0"]
    DNS_TTL = 3600
    DNS_ZONES = ("bl1.example.net", "bl2.example.net")

    def dns_extra(self, port):
        return {"dns": {"forwarders": ["127.0.0.1@%d" % port]},
                "dnsbl": {"mode": "enforce", "threshold": 3, "action": "reject",
                          # every 4th client of the pool listed on the first site only: score 2, below 3,
                          # so that both rows answer the same (DUNNO) and the scoring of a listing runs
                          "sites": ["%s=127.0.0.2*2" % self.DNS_ZONES[0], "%s=127.0.0.[2..11]*2" % self.DNS_ZONES[1]]},
                "spf": {"mode": "enforce", "reject_fail": False, "header": True}}

    def start_rbldnsd(self):
        """One rbldnsd (UDP, loopback) serving the two DNSBL zones and, as a generic zone each, the
        SPF records of the load's sender domains; every query logged (dns_queries counts them)."""
        rdir = os.path.join(self.tmp, "rbldnsd")
        os.mkdir(rdir)
        self.give(rdir)
        listed = ["10.%d.%d.%d" % (a >> 16, (a >> 8) & 255, (a & 255) | 1)
                  for a in (((i * 2654435761) & 0xFFFFFF) for i in range(0, 64, 4))]  # bench_client_ipv4
        soa = "$SOA %d ns.example.net hostmaster.example.net 1 3600 600 86400 %d\n" % (self.DNS_TTL, self.DNS_TTL)
        files = {"bl1": soa + "".join("%s :127.0.0.2:listed\n" % ip for ip in listed),
                 "bl2": soa,
                 "senders": soa + "@ TXT \"v=spf1 ip4:10.0.0.0/8 -all\"\n",
                 "spam": soa + "@ TXT \"v=spf1 -all\"\n"}
        for fname, text in files.items():
            with open(os.path.join(rdir, fname), "w") as f:
                f.write(text)
            self.give(os.path.join(rdir, fname))
        port = free_port()
        cmd = ["rbldnsd", "-n", "-b", "127.0.0.1/%d" % port, "-w", rdir, "-l", "+queries.log",
               "-t", "%d" % self.DNS_TTL]
        if self.run_user:
            cmd += ["-u", self.run_user]
        cmd += ["%s:ip4set:bl1" % self.DNS_ZONES[0], "%s:ip4set:bl2" % self.DNS_ZONES[1],
                "senders.example:generic:senders", "spam.example:generic:spam"]
        srv = self.start("rbldnsd", "dns", cmd, {})
        srv.query_log = os.path.join(rdir, "queries.log")
        deadline = time.monotonic() + 10
        while dns_rcode(port, "senders.example", 16) is None:
            if srv.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("rbldnsd did not answer on port %d; see %s" % (port, srv.log_path))
            time.sleep(0.05)
        srv.ports = {"dns": port}
        return srv

    @staticmethod
    def dns_queries(srv):
        try:
            with open(srv.query_log, "rb") as f:
                return sum(1 for _ in f)
        except OSError:
            return 0

    def dns(self):
        """Step 7: dnsbl (two sites) + spf beside the same spamtrapd without DNS checks, answers cached."""
        a = self.args
        if not shutil.which("rbldnsd"):
            self.note("no DNS rows: rbldnsd not installed (scripts/install-deps.sh bench)")
            return
        rb = self.start_rbldnsd()
        extra = self.dns_extra(rb.ports["dns"])
        store = {"sqlite": {"path": os.path.join(self.tmp, "dns-check.db")}}
        error = self.config_error("dns", store, extra)
        if error:
            self.note("no DNS rows: spamtrapd -t refuses the dnsbl, spf or dns section (%s)" % error)
            return
        targets = []
        for name, db, ex in (("spamtrapd no-dns sqlite", "dns-plain.db", None),
                             ("spamtrapd dnsbl+spf sqlite", "dns-checks.db", extra)):
            d = self.start_spamtrapd(name, {"sqlite": {"path": os.path.join(self.tmp, db)}}, None, extra=ex)
            d.wait_ready()
            targets.append((name, d.ports["policy"], 1, [d]))
        # Warm-up: 64 connections reach every policy worker (a resolver and a cache each) and every client.
        before = self.dns_queries(rb)
        for _ in range(2):
            run_json([self.tool("policy_load"), "-p", str(targets[1][1]), "-c", "64", "-d", "1", "-w", "0"]
                     + self.DNS_LOAD, 60)
        warm = self.dns_queries(rb) - before
        print("bench: DNS rows: %d queries reached rbldnsd during the warm-up; at %s connections"
              % (warm, ",".join(map(str, a.levels))), file=sys.stderr)
        before = self.dns_queries(rb)
        self.measure("dns", targets, side=([rb], lambda: self.dns_queries(rb)))
        self.results["dns_server"] = {"warmup_queries": warm, "measured_queries": self.dns_queries(rb) - before,
                                      "ttl": self.DNS_TTL, "zones": list(self.DNS_ZONES)}

    def run(self):
        a = self.args
        print("bench: temporary files in %s" % self.tmp, file=sys.stderr)
        if a.only == "greylist":
            self.greylist()
            return
        if a.only == "dns":
            self.dns()
            return
        if a.only == "redis":
            self.redis_only()
            return
        trap_file = self.trap_bench()
        db = os.path.join(self.tmp, "spamtrapd.db")
        sq = self.store_bench("sqlite", ["-f", db])
        # the relay rows' copies, before anything else writes to the file
        relay_dbs = [self.copy_store(db, n) for n in ("relay-bl.db", "relay-rl.db")] if not a.no_relay else []
        if a.only != "relay":
            self.import_bench()
        for path in (db, db + "-wal", db + "-shm"):
            if os.path.exists(path):
                self.give(path)
        redis = self.ensure_redis()
        rd = None
        if redis:
            rd = self.store_bench("redis", ["-P", str(redis.ports["redis"])])
        else:
            self.note("no Redis rows (%s)" % ("--no-redis" if a.no_redis else "redis-server not installed"))
        if a.only == "relay":
            self.relay(trap_file, relay_dbs, sq, redis, rd)
            return
        policy, milter = [], []
        if a.baseline:
            base_db = self.baseline_store(db)
        st = self.start_spamtrapd("spamtrapd sqlite", {"sqlite": {"path": db}}, trap_file)
        st.wait_ready()
        policy.append(("spamtrapd sqlite", st.ports["policy"], sq["blocked_senders"], [st]))
        milter.append(("spamtrapd sqlite", st.ports["milter"], sq["blocked_senders"], [st]))
        if a.baseline:
            bl = self.start_spamtrapd("baseline sqlite", {"sqlite": {"path": base_db}}, trap_file, a.baseline)
            bl.wait_ready()
            policy.append(("baseline sqlite", bl.ports["policy"], sq["blocked_senders"], [bl]))
            milter.append(("baseline sqlite", bl.ports["milter"], sq["blocked_senders"], [bl]))
        if redis:
            sr = self.start_spamtrapd("spamtrapd redis", {"backend": "redis", "redis": {
                "host": "127.0.0.1", "port": redis.ports["redis"]}}, trap_file)
            sr.wait_ready()
            policy.append(("spamtrapd redis", sr.ports["policy"], rd["blocked_senders"], [sr, redis]))
            milter.append(("spamtrapd redis", sr.ports["milter"], rd["blocked_senders"], [sr, redis]))
            if a.baseline:
                # the same redis-server and entries: both trees' Redis rows of one run, side by side
                br = self.start_spamtrapd("baseline redis", {"backend": "redis", "redis": {
                    "host": "127.0.0.1", "port": redis.ports["redis"]}}, trap_file, a.baseline)
                br.wait_ready()
                policy.append(("baseline redis", br.ports["policy"], rd["blocked_senders"], [br, redis]))
                milter.append(("baseline redis", br.ports["milter"], rd["blocked_senders"], [br, redis]))
            # A daemon's first lookup starts its local view of Redis, whose SCAN of the entries takes seconds
            # of redis-server's CPU, which every Redis row counts: every view built before measuring, so that
            # one daemon's SCAN does not land in the other's runs (as --only redis does).
            for _, port, blocked, _ in [t for t in policy if redis in t[3]]:
                self.load("policy", port, 4, blocked)
            time.sleep(max(3.0, a.entries / 100000))
        ncpu = os.cpu_count() or 1
        # The responder gets as many threads as spamtrapd's policy workers (policy.threads 0: one per CPU).
        port = free_port()
        pref = self.start("policy_ref", "policy", [self.tool("policy_ref"), "-p", str(port), "-t",
                                                    str(max(ncpu, 2))], {"policy": port})
        port = free_port()
        mref = self.start("milter_ref", "milter", [self.tool("milter_ref"), "-p", str(port)], {"milter": port})
        for s in (pref, mref):
            s.wait_ready()
        policy.insert(0, ("policy_ref", pref.ports["policy"], 1, [pref]))
        milter.insert(0, ("milter_ref", mref.ports["milter"], 1, [mref]))
        pg = self.ensure_postgrey()
        if pg:
            policy.append(("postgrey", pg.ports["policy"], 1, [pg]))
        else:
            self.note("no postgrey row (%s)" % ("--no-postgrey" if a.no_postgrey
                                                else "postgrey not installed: scripts/install-deps.sh bench"))
        print("bench: loads of %.1f s (+%.1f s warm-up), best of %d, at %s connections"
              % (a.duration, a.warmup, a.reps, ",".join(map(str, a.levels))), file=sys.stderr)
        self.measure("policy", policy)
        self.measure("milter", milter)
        if not a.no_greylist:
            self.greylist()
        if not a.no_relay:
            self.relay(trap_file, relay_dbs, sq, redis, rd)
        if not a.no_dns:
            self.dns()

    # --- --only redis (issue 18): the Redis policy rows beside SQLite's ---------------

    def redis_only(self):
        """spamtrapd on SQLite and on Redis (and --baseline on the same Redis), the policy load
        alone: the Redis row's CPU per request (with redis-server's) against SQLite's, and p99."""
        a = self.args
        trap_file = self.trap_bench()
        db = os.path.join(self.tmp, "spamtrapd.db")
        sq = self.store_bench("sqlite", ["-f", db])
        for path in (db, db + "-wal", db + "-shm"):
            if os.path.exists(path):
                self.give(path)
        redis = self.ensure_redis()
        if not redis:
            raise RuntimeError("--only redis needs redis-server")
        rd = self.store_bench("redis", ["-P", str(redis.ports["redis"])])
        store = {"backend": "redis", "redis": {"host": "127.0.0.1", "port": redis.ports["redis"]}}
        st = self.start_spamtrapd("spamtrapd sqlite", {"sqlite": {"path": db}}, trap_file)
        sr = self.start_spamtrapd("spamtrapd redis", store, trap_file)
        policy = [("spamtrapd sqlite", st, sq["blocked_senders"], [st]),
                  ("spamtrapd redis", sr, rd["blocked_senders"], [sr, redis])]
        if a.baseline:
            bl = self.start_spamtrapd("baseline redis", store, trap_file, a.baseline)
            policy.append(("baseline redis", bl, rd["blocked_senders"], [bl, redis]))
        for _, srv, _, _ in policy:
            srv.wait_ready()  # all first: ready_seconds is the start-up target's figure, not the warm-ups'
        for _, srv, blocked, _ in policy:
            # The first lookup starts the Redis store's local view; its SCAN of the entries takes a
            # few seconds: warm every server alike before measuring.
            self.load("policy", srv.ports["policy"], 4, blocked)
        time.sleep(max(3.0, a.entries / 100000))
        listing = subprocess.run(["redis-cli", "-p", str(redis.ports["redis"]), "CLIENT", "LIST"],
                                 capture_output=True, text=True, timeout=10).stdout
        self.note("local views connected to Redis: %d" % sum(
            1 for line in listing.splitlines() if any("B" in w[6:] for w in line.split() if w.startswith("flags="))))
        print("bench: loads of %.1f s (+%.1f s warm-up), best of %d, at %s connections"
              % (a.duration, a.warmup, a.reps, ",".join(map(str, a.levels))), file=sys.stderr)
        if a.policy_threads:
            policy += self.threads_rows(db, trap_file, store, sq, rd, redis)
        self.measure("policy", [(name, srv.ports["policy"], blocked, procs) for name, srv, blocked, procs in policy])
        if a.policy_threads:
            self.round_trips(policy, redis)

    def threads_rows(self, db, trap_file, store, sq, rd, redis):
        """--policy-threads N,M: the two rows again with policy.threads N, M, ... (row "... tN"),
        each SQLite one on its own copy of the store, copied before the measured runs write to it."""
        rows = []
        for n in self.args.policy_threads:
            path = self.copy_store(db, "threads%d.db" % n)
            for name, st, blocked, procs in (("sqlite", {"sqlite": {"path": path}}, sq["blocked_senders"], []),
                                            ("redis", store, rd["blocked_senders"], [redis])):
                name = "spamtrapd %s t%d" % (name, n)
                ports = {"policy": free_port(), "milter": free_port()}
                cfg = self.spamtrapd_config(name.replace(" ", "_"), st, trap_file, ports["policy"], ports["milter"])
                with open(cfg) as f:
                    conf = json.load(f)
                conf["policy"]["threads"] = n
                with open(cfg, "w") as f:
                    json.dump(conf, f, indent=1)
                srv = self.start(name, "spamtrapd", [self.spamtrapd, "-f", "-c", cfg], ports)
                rows.append((name, srv, blocked, [srv] + procs))
        for _, srv, _, _ in rows:
            srv.wait_ready()  # all first: ready_seconds must not include another row's warm-up
        for _, srv, blocked, _ in rows:
            self.load("policy", srv.ports["policy"], 4, blocked)
        time.sleep(max(3.0, self.args.entries / 100000))
        return rows

    def round_trips(self, policy, redis):
        """Script calls and HMGETs redis-server counted per request, one short load per Redis row
        at the largest level: how many requests still make a round trip past the local view (a
        lookup is a script or, for one key, an HMGET; a script that finds an entry calls HMGET
        too, and commandstats counts that call as well)."""
        for name, srv, blocked, _ in policy:
            if srv is redis or "redis" not in name:
                continue
            before = redis_calls(redis.ports["redis"])
            r = self.load("policy", srv.ports["policy"], self.args.levels[-1], blocked)
            after = redis_calls(redis.ports["redis"])
            per = [(b - a) / max(r["all"], 1) for a, b in zip(before, after)]
            self.results.setdefault("redis_calls_per_request", {})[name] = {"scripts": per[0], "hmget": per[1]}
            print("  %-18s per request: scripts %.3f, HMGET %.3f (%d conns)"
                  % (name, per[0], per[1], self.args.levels[-1]), file=sys.stderr)

    def finish(self):
        self.stop_all()
        for s in self.servers:
            if s.kind == "spamtrapd":
                errors = sum(1 for line in open(s.log_path, errors="replace") if ": error: " in line)
                if errors:
                    self.note("%s logged %d error lines: see %s" % (s.name, errors, s.log_path))


def redis_calls(port):
    """EVAL + EVALSHA calls, and HMGET calls, redis-server has answered (INFO commandstats)."""
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "commandstats"], capture_output=True, text=True,
                         timeout=10).stdout

    def calls(prefixes):
        return sum(int(line.split("calls=", 1)[1].split(",", 1)[0]) for line in out.splitlines()
                   if line.startswith(prefixes))
    return calls(("cmdstat_eval:", "cmdstat_evalsha:")), calls(("cmdstat_hmget:",))


def redis_commandstats(port):
    """{command: (calls, usec)} from INFO commandstats."""
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "commandstats"], capture_output=True, text=True,
                         timeout=10).stdout
    stats = {}
    for line in out.splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line[len("cmdstat_"):].partition(":")
            fields = dict(f.split("=", 1) for f in rest.split(",") if "=" in f)
            stats[name] = (int(fields.get("calls", 0)), float(fields.get("usec", 0)))
    return stats


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cpus": os.cpu_count(), "memory_gib": round(mem, 1), "kernel": platform.release(),
            "date": time.strftime("%Y-%m-%d %H:%M"), "loadavg_before": [round(x, 2) for x in os.getloadavg()]}


# --- 5: the table ---------------------------------------------------------------------


CELL = 25


def cell(r):
    if not r:
        return "%*s" % (CELL, "-")
    return "%9.0f %6.3f/%-8.3f" % (r["rps"], r["p50_us"] / 1000, r["p99_us"] / 1000)


def ratio(a, b, fmt="%.2f"):
    if not a or not b or not b["rps"]:
        return "-"
    return fmt % (a["rps"] / b["rps"])


def mib(kib):
    return "%.1f MiB" % (kib / 1024) if kib else "-"


def protocol_table(res, proto, limit, title, unit):
    rows = res[proto]
    width = max([23] + [len(n) + 2 for n in rows])  # 23: "  cpu base redis/sqlite"

    def lbl(text):
        return text.ljust(width)

    print("\n%s: %s and p50/p99 latency in ms, at 1, 8 and 64 connections" % (title, unit))
    head = lbl("server") + "".join(" %-*s" % (CELL, "%d conn%s" % (c, "s" if c > 1 else "")) for c in LEVELS)
    print(head + " peak RSS")
    for name, row in rows.items():
        rss = res["servers"].get(name, {}).get("hwm_kib")
        print(lbl(name) + "".join(" " + cell(row.get(str(c))) for c in LEVELS) + " " + mib(rss))
    print("%-18s" % "server CPU us per %s (user+sys, all threads; spamtrapd redis: + redis-server)"
          % ("session" if proto == "milter" else "request"))
    for name, row in rows.items():
        print(lbl("  " + name) + "".join(" %9s%*s" % ("%.1f" % row[str(c)]["cpu_us"] if row.get(str(c))
                                                             else "-", CELL - 9, "") for c in LEVELS))
    for backend in ("sqlite", "redis"):
        baseline_lines(rows, backend, lbl, "request" if proto == "policy" else "session")
    if proto == "relay":
        for backend in ("sqlite", "redis"):
            rl, bl = rows.get("spamtrapd relay+rl " + backend), rows.get("spamtrapd blocklist " + backend)
            if rl and bl:
                print(lbl("  cpu relay/bl " + backend)
                      + "".join(" %9s%*s" % ("%.2f" % (rl[str(c)]["cpu_us"] / bl[str(c)]["cpu_us"])
                                             if rl.get(str(c)) and bl.get(str(c)) and bl[str(c)]["cpu_us"] else "-",
                                             CELL - 9, "") for c in LEVELS)
                      + "  (server CPU per request, relay+ratelimit / blocklist only)")
        for backend in ("redis",):
            for name in ("spamtrapd blocklist " + backend, "spamtrapd relay+rl " + backend):
                row = rows.get(name)
                if row:
                    print(lbl("  " + name.replace("spamtrapd ", "") + " split")
                          + "".join(" %9s%*s" % ("%.1f+%.1f" % tuple(row[str(c)]["cpu_each_us"][:2])
                                                 if row.get(str(c)) and len(row[str(c)].get("cpu_each_us", [])) > 1
                                                 else "-", CELL - 9, "") for c in LEVELS)
                          + "  (spamtrapd + redis-server CPU us per request)")
        for name, per in res.get("relay_commands", {}).items():
            top = sorted(per.items(), key=lambda kv: -kv[1]["per_request"] * kv[1]["usec_per_call"])[:10]
            print("  %s, Redis commands per request (usec per call), a warm load at %d conns: %s"
                  % (name, LEVELS[-1], ", ".join("%s %.3f (%.1f)" % (c, v["per_request"], v["usec_per_call"])
                                                   for c, v in top)))
        print("%-18s" % "replies DUNNO (none refused: every request ran both checks and was charged)")
        for name, row in rows.items():
            print(lbl("  " + name) + "".join(" %9s%*s" % ("%.1f%%" % dunno_pct(row[str(c)])
                                                                 if row.get(str(c)) else "-", CELL - 9, "")
                                                    for c in LEVELS))
    if proto == "dns":
        dn, nd = rows.get("spamtrapd dnsbl+spf sqlite"), rows.get("spamtrapd no-dns sqlite")
        if dn and nd:
            print(lbl("  cpu dns/no-dns")
                  + "".join(" %9s%*s" % ("%.2f" % (dn[str(c)]["cpu_us"] / nd[str(c)]["cpu_us"])
                                         if dn.get(str(c)) and nd.get(str(c)) and nd[str(c)]["cpu_us"] else "-",
                                         CELL - 9, "") for c in LEVELS)
                  + "  (spamtrapd CPU per request, dnsbl+spf / no DNS checks)")
            print(lbl("  p99 dns/no-dns")
                  + "".join(" %9s%*s" % ("%.2f" % (dn[str(c)]["p99_us"] / nd[str(c)]["p99_us"])
                                         if dn.get(str(c)) and nd.get(str(c)) and nd[str(c)]["p99_us"] else "-",
                                         CELL - 9, "") for c in LEVELS))
            print(lbl("  rbldnsd")
                  + "".join(" %9s%*s" % ("%dq %.1fus" % (dn[str(c)].get("side_count", 0), dn[str(c)].get(
                      "side_cpu_us", 0.0)) if dn.get(str(c)) else "-", CELL - 9, "") for c in LEVELS)
                  + "  (queries it got and its CPU per request, during the kept run: not in the rows)")
        ds = res.get("dns_server")
        if ds:
            print("  rbldnsd queries: %d during the warm-up, %d during all the measured runs (TTL %d s)"
                  % (ds["warmup_queries"], ds["measured_queries"], ds["ttl"]))
        print("%-18s" % "replies DUNNO or PREPEND Received-SPF (every client scores below the threshold, "
              "SPF never refuses: none refused)")
        for name, row in rows.items():
            print(lbl("  " + name) + "".join(" %9s%*s" % ("%.1f%%" % dunno_pct(row[str(c)], ("DUNNO", "PREPEND"))
                                                                 if row.get(str(c)) else "-", CELL - 9, "")
                                                    for c in LEVELS))
    if proto == "greylist":
        print("%-18s" % "replies deferred (each request a new triplet: all should be)")
        for name, row in rows.items():
            print(lbl("  " + name) + "".join(" %9s%*s" % ("%.1f%%" % deferred_pct(row[str(c)])
                                                                 if row.get(str(c)) else "-", CELL - 9, "")
                                                    for c in LEVELS))
    if limit:
        cpu_ratio_lines(rows, limit, lbl, "session" if proto == "milter" else "request")
    for name in [n for n in rows if n.startswith("spamtrapd")]:
        for ref, fmt in ((limit, "%.2f"), ("postgrey", "%.0fx")):
            if ref and ref in rows:
                print(lbl("  %s/%s" % (name[len("spamtrapd "):], ref))
                      + "".join(" %9s%*s" % (ratio(rows[name].get(str(c)), rows[ref].get(str(c)), fmt),
                                             CELL - 9, "") for c in LEVELS))


def baseline_lines(rows, backend, lbl, unit):
    """This tree's row of one store over --baseline's on the same store: throughput, server CPU
    per request (or session) and p99, the before/after of one run."""
    new, base = rows.get("spamtrapd " + backend), rows.get("baseline " + backend)
    if not new or not base:
        return

    def line(label, key, what):
        print(lbl("  %s %s/base" % (label, backend))
              + "".join(" %9s%*s" % ("%.2f" % (new[str(c)][key] / base[str(c)][key])
                                     if new.get(str(c)) and base.get(str(c)) and base[str(c)][key] else "-",
                                     CELL - 9, "") for c in LEVELS)
              + "  (%s, this tree / --baseline)" % what)

    line("rps", "rps", "throughput")
    line("cpu", "cpu_us", "server CPU per %s" % unit)
    line("p99", "p99_us", "p99 latency")


def cpu_ratio_lines(rows, limit, lbl, unit):
    """Issue 18: server CPU per request (or session) of each spamtrapd row over the limit's, and
    Redis over SQLite: the ratios its targets are stated in."""
    pairs = [(n, limit) for n in rows if n.startswith(("spamtrapd", "baseline")) and limit in rows]
    for tree in ("spamtrapd", "baseline"):
        if tree + " redis" in rows and tree + " sqlite" in rows:
            pairs.append((tree + " redis", tree + " sqlite"))

    def short(name):
        return name.split(" ", 1)[1] if name.startswith("spamtrapd") else "base " + name.split(" ", 1)[1]

    for name, ref in pairs:
        print(lbl("  cpu %s/%s" % (short(name), "ref" if ref == limit else ref.split(" ", 1)[1]))
              + "".join(" %9s%*s" % ("%.2f" % cpu_ratio(rows[name].get(str(c)), rows[ref].get(str(c)))
                                     if cpu_ratio(rows[name].get(str(c)), rows[ref].get(str(c))) is not None
                                     else "-", CELL - 9, "") for c in LEVELS)
              + "  (server CPU per %s, over %s's)" % (unit, ref))


def dunno_pct(r, actions=("DUNNO",)):
    """Share of a load's ordinary (non-trap) replies that were DUNNO (or one of actions)."""
    replies = r.get("other_replies", {})
    total = sum(replies.values())
    return 100.0 * sum(replies.get(a, 0) for a in actions) / total if total else 0.0


def deferred_pct(r):
    """Share of a policy load's replies that deferred (DEFER_IF_PERMIT, DEFER or a 4xx code)."""
    replies = dict(r.get("other_replies", {}))
    for k, v in r.get("trap_replies", {}).items():
        replies[k] = replies.get(k, 0) + v
    total = sum(replies.values())
    deferred = sum(v for k, v in replies.items() if k.startswith("DEFER") or k[:1] == "4")
    return 100.0 * deferred / total if total else 0.0


def store_lines(res):
    imp = res.get("import")
    if imp:
        print("\nStore sqlite import %s entries with spamtrapctl import: %.2f s (%.0f/s), peak RSS %s"
              % ("{:,}".format(imp["entries"]), imp["seconds"], imp["entries"] / imp["seconds"],
                 mib(imp["hwm_kib"])))
    for backend, lines in res["store"].items():
        done = lines[-1]
        loads = [l for l in lines if l["phase"] == "load"]
        looks = [l for l in lines if l["phase"] == "lookup"]
        print("\nStore %-6s load %s entries through store_record: %.2f s (%.0f/s)"
              % (backend, "{:,}".format(done["entries"]), done["load_seconds"], loads[-1]["per_s"]))
        for l in looks:
            print("   lookup at %9s entries: miss p50 %6.1f us p99 %6.1f us, hit p50 %6.1f us p99 %6.1f us"
                  % ("{:,}".format(l["entries"]), l["miss_p50_us"], l["miss_p99_us"], l["hit_p50_us"],
                     l["hit_p99_us"]))


def targets(res):
    """The targets of issue 6, each with the measured value and whether it is met."""
    p, m = res["policy"], res["milter"]
    sq = p.get("spamtrapd sqlite", {})
    out = []

    def add(what, ok, value):
        out.append(("met " if ok else "MISS", what, value))

    ref64, sq64, pg64 = p.get("policy_ref", {}).get("64"), sq.get("64"), p.get("postgrey", {}).get("64")
    if ref64 and sq64:
        add("policy >= 90% of bare responder at 64 conns", sq64["rps"] >= 0.9 * ref64["rps"],
            "%.0f%%" % (100 * sq64["rps"] / ref64["rps"]))
        add("policy p99 < 1 ms at 64 conns", sq64["p99_us"] < 1000, "%.2f ms" % (sq64["p99_us"] / 1000))
    if sq64 and pg64:
        add("policy >= 50x postgrey at 64 conns", sq64["rps"] >= 50 * pg64["rps"],
            "%.0fx" % (sq64["rps"] / pg64["rps"]))
    imp = res.get("import")
    if imp:
        add("sqlite: load %s entries with spamtrapctl import in a few seconds (< 5 s)"
            % "{:,}".format(imp["entries"]), imp["seconds"] < 5, "%.2f s" % imp["seconds"])
    ms, mr = m.get("spamtrapd sqlite", {}), m.get("milter_ref", {})
    for c in LEVELS:
        if ms.get(str(c)) and mr.get(str(c)):
            add("milter >= no-op libmilter filter at %d conns" % c,
                ms[str(c)]["rps"] >= mr[str(c)]["rps"], "%.2fx" % (ms[str(c)]["rps"] / mr[str(c)]["rps"]))
    for name, srv in res["servers"].items():
        if name.startswith("spamtrapd") and srv["hwm_kib"]:
            add("%s peak RSS < 100 MiB" % name, srv["hwm_kib"] < 100 * 1024, mib(srv["hwm_kib"]))
    st = res["servers"].get("spamtrapd sqlite")
    if st and st["ready_seconds"] is not None:
        add("spamtrapd ready < 1 s with the %s-entry store and %s traps"
            % ("{:,}".format(res["args"]["entries"]), "{:,}".format(res["args"]["traps"])),
            st["ready_seconds"] < 1,
            "%.2f s" % st["ready_seconds"])
    g = res.get("greylist", {})
    gs64, gp64 = g.get("spamtrapd grey sqlite", {}).get("64"), g.get("postgrey", {}).get("64")
    if gs64 and gp64:
        add("greylist >= 20x postgrey at 64 conns (SQLite), p99 < 5 ms",
            gs64["rps"] >= 20 * gp64["rps"] and gs64["p99_us"] < 5000,
            "%.1fx, p99 %.2f ms" % (gs64["rps"] / gp64["rps"], gs64["p99_us"] / 1000))
    gr64 = g.get("spamtrapd grey redis", {}).get("64")
    if gr64:
        out.append(("info", "greylist on Redis at 64 conns (reported)", "%.0f/s%s, p99 %.2f ms"
                    % (gr64["rps"], ", %.1fx postgrey" % (gr64["rps"] / gp64["rps"]) if gp64 else "",
                       gr64["p99_us"] / 1000)))
    rel = res.get("relay", {})
    for backend in ("sqlite", "redis"):
        rl, bl = rel.get("spamtrapd relay+rl " + backend, {}), rel.get("spamtrapd blocklist " + backend, {})
        level = str(max(int(c) for c in rl)) if rl else None
        if level and bl.get(level) and bl[level]["cpu_us"]:
            r = rl[level]["cpu_us"] / bl[level]["cpu_us"]
            add("relay+ratelimit CPU/request <= 1.5x blocklist-only (%s, %s conns)" % (backend, level), r <= 1.5,
                "%.2fx (%.1f vs %.1f us)" % (r, rl[level]["cpu_us"], bl[level]["cpu_us"]))
    dns = res.get("dns", {})
    dn, nd = dns.get("spamtrapd dnsbl+spf sqlite", {}), dns.get("spamtrapd no-dns sqlite", {})
    for level in sorted(dn, key=int):
        if nd.get(level) and nd[level]["cpu_us"]:
            r = dn[level]["cpu_us"] / nd[level]["cpu_us"]
            add("dnsbl+spf cached CPU/request <= 2x no-DNS row (%s conns)" % level, r <= 2,
                "%.2fx (%.1f vs %.1f us), p99 %.2f vs %.2f ms" % (r, dn[level]["cpu_us"], nd[level]["cpu_us"],
                                                             dn[level]["p99_us"] / 1000, nd[level]["p99_us"] / 1000))
    ds = res.get("dns_server")
    if ds:
        add("dnsbl+spf answers cached: no query reaches the DNS server while measured", ds["measured_queries"] == 0,
            "%d queries" % ds["measured_queries"])
    tl = [t for t in res["traps"] if t["phase"] == "config_load"]
    if tl:
        add("config_load of %s traps < 1 s" % "{:,}".format(tl[0]["traps"]), tl[0]["seconds"] < 1,
            "%.3f s" % tl[0]["seconds"])
    for backend, lines in res["store"].items():
        done = lines[-1]
        out.append(("info", "%s: load %s entries through store_record (per trap hit)"
                    % (backend, "{:,}".format(done["entries"])), "%.2f s" % done["load_seconds"]))
        looks = [l for l in lines if l["phase"] == "lookup"]
        if len(looks) > 1:
            growth = looks[-1]["miss_p50_us"] / looks[0]["miss_p50_us"]
            add("%s: lookup flat from %s to %s entries (p50 within 1.5x)"
                % (backend, "{:,}".format(looks[0]["entries"]), "{:,}".format(looks[-1]["entries"])),
                growth <= 1.5, "%.2fx" % growth)
    return out


# --- the targets: one block at the end of the table ------------------------------------
# Every target line of the run, in order: each issue's section calls target() from a function
# of its own (issue18_targets below), which collect_targets calls.
TARGETS = []


def target(name, met, figure):
    """One line of the final block: met True or False, None for a figure reported without a target."""
    TARGETS.append({"name": name, "status": "info" if met is None else ("met" if met else "missed"),
                    "figure": figure})


def cpu_ratio(a, b):
    """a's server CPU per request over b's (rows of one level), None without both."""
    return a["cpu_us"] / b["cpu_us"] if a and b and b.get("cpu_us") else None


def issue18_targets(res):
    """Issue 18: the targets per server CPU (64 connections), which the load generator does not move."""
    p, m = res["policy"], res["milter"]
    ref, sq, rd = (p.get(n, {}).get("64") for n in ("policy_ref", "spamtrapd sqlite", "spamtrapd redis"))
    r = cpu_ratio(sq, ref)
    if r is not None:
        target("18: SQLite policy CPU/request <= 1.5x bare responder (64 conns)", r <= 1.5,
               "%.2fx (%.1f vs %.1f us)" % (r, sq["cpu_us"], ref["cpu_us"]))
    r = cpu_ratio(p.get("baseline sqlite", {}).get("64"), ref)
    if r is not None:
        target("18: baseline SQLite policy CPU/request / bare responder (64 conns)", None,
               "%.2fx (%.1f vs %.1f us)" % (r, p["baseline sqlite"]["64"]["cpu_us"], ref["cpu_us"]))
    r = cpu_ratio(rd, sq)
    if r is not None:
        target("18: Redis policy CPU/request (+ redis-server) <= 2x SQLite's, p99 < 2 ms (64 conns)",
               r <= 2 and rd["p99_us"] < 2000,
               "%.2fx (%.1f vs %.1f us), p99 %.2f ms" % (r, rd["cpu_us"], sq["cpu_us"], rd["p99_us"] / 1000))
    brd, bsq = p.get("baseline redis", {}).get("64"), p.get("baseline sqlite", {}).get("64")
    r = cpu_ratio(brd, bsq)
    if r is not None:
        target("18: baseline Redis policy CPU/request (+ redis-server) / baseline SQLite's (64 conns)", None,
               "%.2fx (%.1f vs %.1f us), p99 %.2f ms" % (r, brd["cpu_us"], bsq["cpu_us"], brd["p99_us"] / 1000))
    mref = m.get("milter_ref", {}).get("64")
    for backend in ("sqlite", "redis"):
        for tree in ("spamtrapd", "baseline"):
            ms = m.get(tree + " " + backend, {}).get("64")
            if ms and mref and mref["rps"]:
                r = ms["rps"] / mref["rps"]
                target("18: milter sessions/s >= 1.3x no-op libmilter filter (%s, 64 conns)" % backend
                       if tree == "spamtrapd" else
                       "18: baseline milter sessions/s / no-op libmilter filter (%s, 64 conns)" % backend,
                       r >= 1.3 if tree == "spamtrapd" else None, "%.2fx (%.0f vs %.0f/s)" % (r, ms["rps"], mref["rps"]))
    entries = "{:,}".format(res["args"]["entries"])
    for name in ("spamtrapd sqlite", "spamtrapd redis"):
        srv = res["servers"].get(name)
        if not srv or name[len("spamtrapd "):] not in res["store"]:
            continue
        if srv.get("hwm_kib"):
            target("18: %s with %s entries: peak RSS < 100 MiB" % (name, entries), srv["hwm_kib"] < 100 * 1024,
                   mib(srv["hwm_kib"]))
        if srv.get("ready_seconds") is not None:
            target("18: %s with %s entries: start-up < 1 s" % (name, entries), srv["ready_seconds"] < 1,
                   "%.2f s" % srv["ready_seconds"])


def collect_targets(res):
    """Every target line of the run, also kept in the results (res["targets"])."""
    del TARGETS[:]
    for status, what, value in targets(res):
        target(what, None if status == "info" else status.startswith("met"), value)
    issue18_targets(res)
    res["targets"] = list(TARGETS)
    return res["targets"]


def print_targets(res):
    print("\nTargets (issue 6; greylist: 13; relay: 14; dns: 15; per server CPU: 18): met / missed")
    for t in res.get("targets") or collect_targets(res):
        print("  [%-6s] %-80s %s" % (t["status"], t["name"], t["figure"]))


def print_table(res):
    mc = res["machine"]
    args = res["args"]
    print("\nspamtrapd benchmark, %s: %s, %d CPUs, %.1f GiB, Linux %s, load average before %s"
          % (mc["date"], mc["cpu"], mc["cpus"], mc["memory_gib"], mc["kernel"],
             " ".join("%.2f" % x for x in mc.get("loadavg_before", []))))
    print("each cell: best of %d runs of %.1f s after %.1f s warm-up; load generator on the same machine"
          % (args["reps"], args["duration"], args["warmup"]))
    for proto, limit, title, unit in (("policy", "policy_ref", "Policy protocol", "requests/s"),
                                      ("milter", "milter_ref", "Milter protocol", "SMTP sessions/s"),
                                      ("greylist", None, "Greylisting, every triplet new (policy protocol)",
                                       "requests/s"),
                                      ("relay", None, "Relay + one ratelimit rule beside the blocklist alone, "
                                       "SASL load of %s accounts (policy protocol)" % "{:,}".format(args.get(
                                           "accounts", 0)), "requests/s"),
                                      ("dns", None, "DNS checks: dnsbl (two sites) + spf, answers cached, beside "
                                       "no DNS checks (policy protocol, SQLite)", "requests/s")):
        if res.get(proto):
            protocol_table(res, proto, limit, title, unit)
    store_lines(res)
    for t in res["traps"]:
        if t["phase"] == "config_load":
            print("\nTraps: config_load with %s trap addresses: %.3f s (peak RSS %s)"
                  % ("{:,}".format(t["traps"]), t["seconds"], mib(t["hwm_kib"])))
        elif t["phase"] == "core":
            print("   decision core per request (%s recipient): %.2f us"
                  % (t["recipients"], t["ns_per_request"] / 1000))
    for name, srv in res["servers"].items():
        if name.startswith("spamtrapd") and srv["ready_seconds"] is not None:
            print("%s ready (both ports open) %.2f s after start" % (name, srv["ready_seconds"]))
    for n in res["notes"]:
        print("note: " + n)
    print_targets(res)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build-bench", help="CMake build directory (Release)")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds measured per load run")
    ap.add_argument("--warmup", type=float, default=0.5, help="seconds of warm-up per load run")
    ap.add_argument("--reps", type=int, default=2, help="runs per server and level; the best is kept")
    ap.add_argument("--levels", default="1,8,64", help="connection counts")
    ap.add_argument("--entries", type=int, default=1000000, help="blocklist entries to load")
    ap.add_argument("--lookups", type=int, default=20000, help="timed lookups per checkpoint")
    ap.add_argument("--traps", type=int, default=100000, help="trap addresses in the trap file")
    ap.add_argument("--no-redis", action="store_true")
    ap.add_argument("--baseline", help="a spamtrapd binary built from another tree (e.g. main before a change): "
                    "run beside this build on a copy of the same store, and print the ratios")
    ap.add_argument("--no-postgrey", action="store_true")
    ap.add_argument("--no-greylist", action="store_true", help="leave out the greylisting rows")
    ap.add_argument("--no-relay", action="store_true", help="leave out the relay + ratelimit rows")
    ap.add_argument("--no-dns", action="store_true", help="leave out the DNS check rows")
    ap.add_argument("--accounts", type=int, default=10000, help="SASL accounts of the relay rows' load")
    ap.add_argument("--only", choices=("all", "greylist", "relay", "dns", "redis"), default="all",
                    help="greylist: only the greylisting rows (spamtrapd with the greylist check, postgrey); "
                    "relay: only the relay + ratelimit rows and the blocklist-only rows beside them; "
                    "dns: only the dnsbl+spf rows and the rows without DNS checks beside them; "
                    "redis: only the policy rows of spamtrapd on SQLite and on Redis (and --baseline on Redis)")
    ap.add_argument("--policy-threads", type=lambda v: [int(x) for x in v.split(",")], default=[],
                    help="with --only redis: the SQLite and Redis rows again with policy.threads at each of "
                    "these counts (rows 'spamtrapd sqlite tN', 'spamtrapd redis tN'), and the Redis rows' "
                    "script and HMGET calls per request")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out",
                                                  "results.json"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, databases)")
    args = ap.parse_args()
    args.levels = [int(x) for x in args.levels.split(",")]
    global LEVELS
    LEVELS = tuple(args.levels)
    bench = Bench(args)
    rc = 0
    try:
        bench.run()
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
        print("bench: %s" % e, file=sys.stderr)
        rc = 1
    finally:
        bench.finish()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    collect_targets(bench.results)
    with open(args.out, "w") as f:
        json.dump(bench.results, f, indent=1)
    print_table(bench.results)
    print("\nraw results: %s" % args.out)
    if args.keep or rc:
        print("logs and databases kept in %s" % bench.tmp)
    else:
        shutil.rmtree(bench.tmp, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
