"""Debian's rbldnsd serving test DNSBL / DNSWL zones on a loopback port
(Python 3 stdlib only).

Rbldnsd starts `rbldnsd -n -b 127.0.0.1/PORT` in the foreground (a free
port) with the zones a test gives, each a name and its entries for IPv4
(ip4set) and IPv6 (ip6trie) clients, writes every query it answers to a
log (queries() reads it: a test can prove a name was never asked), waits
until it answers, and stops it by PID.

    import rbldnsd_harness as rb

    zones = {"bl.example.net": rb.Zone(v4={"192.0.2.7": "127.0.0.2"},
                                       v6={"2001:db8::7": "127.0.0.4"},
                                       txt="listed, see https://bl.example.net/"),
             "wl.example.net": rb.Zone(v4={"192.0.2.8": "127.0.10.3"})}
    with rb.Rbldnsd(workdir, zones) as dns:
        cfg["dns"] = {"forwarders": [dns.forwarder]}   # "127.0.0.1@PORT"
        rb.query_a(dns.port, "7.2.0.192.bl.example.net") -> ["127.0.0.2"]

Zone names must not be special to unbound (no .test, .localhost,
.invalid): example.net is fine. A missing rbldnsd is a failure, not a
skip: CI installs it.
"""

import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import time

import spamtrapd_harness as sh

START_TIMEOUT = 10.0


def binary():
    path = shutil.which("rbldnsd") or ("/usr/sbin/rbldnsd" if os.path.exists("/usr/sbin/rbldnsd") else None)
    if not path:
        raise AssertionError("rbldnsd is not installed (Debian: apt-get install rbldnsd)")
    return path


class Zone:
    """One zone's entries: {client address or network: A value} for IPv4 and IPv6, one TXT for all."""

    def __init__(self, v4=None, v6=None, txt="listed by the test zone"):
        self.v4 = dict(v4 or {})
        self.v6 = dict(v6 or {})
        self.txt = txt


def _entries(entries, txt):
    # rbldnsd's data files: "ADDRESS :A:TXT" per line; "$" in TXT stands for the address.
    lines = [f":127.0.0.2:{txt}"]
    lines += [f"{addr} :{a}:{txt}" for addr, a in entries.items()]
    return "\n".join(lines) + "\n"


def _free_udp_port():
    # rbldnsd listens on UDP: a port free for UDP and TCP both (the kernel's TCP pick, checked for UDP).
    for _ in range(50):
        port = sh.free_port()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise AssertionError("no free UDP port")


def _qname(name):
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def _skip_name(msg, off):
    while True:
        n = msg[off]
        if n == 0:
            return off + 1
        if n & 0xC0 == 0xC0:
            return off + 2
        off += 1 + n


def query(port, name, qtype=1, timeout=1.0, host="127.0.0.1"):
    """(rcode, [rdata bytes of the answers of qtype]) of one UDP query; None on timeout."""
    qid = random.randrange(65536)
    packet = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + _qname(name) + struct.pack("!HH", qtype, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(packet, (host, port))
        while True:
            msg, _ = s.recvfrom(4096)
            if len(msg) >= 12 and struct.unpack("!H", msg[:2])[0] == qid:
                break
    except socket.timeout:
        return None
    finally:
        s.close()
    flags, qd, an = struct.unpack("!HHH", msg[2:8])
    off = 12
    for _ in range(qd):
        off = _skip_name(msg, off) + 4
    answers = []
    for _ in range(an):
        off = _skip_name(msg, off)
        rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", msg[off:off + 10])
        off += 10
        if rtype == qtype:
            answers.append(msg[off:off + rdlen])
        off += rdlen
    return flags & 0xF, answers


def query_a(port, name, **kw):
    """The A records of name as text ("127.0.0.2"), [] for NXDOMAIN; None on timeout."""
    r = query(port, name, 1, **kw)
    return None if r is None else [socket.inet_ntoa(rd) for rd in r[1] if len(rd) == 4]


class Rbldnsd:
    """rbldnsd on 127.0.0.1:port serving zones ({name: Zone}), files under workdir/name."""

    def __init__(self, workdir, zones, name="rbldnsd", port=None):
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.name = name
        self.zones = zones
        self.port = port or _free_udp_port()
        self.log_path = os.path.join(self.dir, "rbldnsd.log")
        self.query_log = os.path.join(self.dir, "queries.log")
        self.proc = None
        self._probe = None

    @property
    def forwarder(self):
        """The address as dns.forwarders takes it."""
        return f"127.0.0.1@{self.port}"

    def _write_zones(self):
        specs = []
        for i, (zone, z) in enumerate(sorted(self.zones.items())):
            v4, v6 = f"z{i}.v4", f"z{i}.v6"
            with open(os.path.join(self.dir, v4), "w") as f:
                f.write(_entries(z.v4, z.txt))
            with open(os.path.join(self.dir, v6), "w") as f:
                f.write(_entries(z.v6, z.txt))
            specs += [f"{zone}:ip4set:{v4}", f"{zone}:ip6trie:{v6}"]
        return specs

    def argv(self):
        # -n: foreground, so the PID is rbldnsd's; -l +: every query logged, unbuffered, by a name in -w
        # (its user may not reach the absolute path); -t: short TTLs.
        argv = [binary(), "-n", "-b", f"127.0.0.1/{self.port}", "-w", self.dir, "-l", "+queries.log",
                "-t", "5", "-a"]
        user = sh.run_user()
        if user:
            argv += ["-u", user]  # it refuses to run as root; its folder is given to that user
        return argv + self._write_zones()

    def start(self, timeout=START_TIMEOUT):
        if self.running():
            raise AssertionError(f"{self.name} is already running")
        argv = self.argv()
        for path in [self.dir] + [os.path.join(self.dir, f) for f in os.listdir(self.dir)]:
            sh.give_to_run_user(path)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.dir)
        probe = self._probe = "2.0.0.127." + next(iter(sorted(self.zones)))
        deadline = time.monotonic() + sh.scaled(timeout)
        while query(self.port, probe, timeout=0.2) is None:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode} while starting:\n"
                                     + self.log_tail())
            if time.monotonic() > deadline:
                self.stop(signal.SIGKILL)
                raise AssertionError(f"{self.name} did not answer on port {self.port}:\n" + self.log_tail())
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=sh.scaled(timeout))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def queries(self):
        """The names asked so far, lower case, in order (from rbldnsd's query log), less start()'s probes."""
        try:
            with open(self.query_log) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        names = []
        for line in lines:
            # "TIME CLIENT NAME TYPE CLASS: ANSWER..."
            parts = line.split()
            if len(parts) >= 3 and parts[2].rstrip(".").lower() != self._probe:
                names.append(parts[2].rstrip(".").lower())
        return names

    def log_tail(self, lines=30):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except FileNotFoundError:
            return ""

    def __enter__(self):
        if not self.running():
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
