"""A small scriptable authoritative DNS server for the tests (issue 15).

Runs as its own process under Debian's interpreter (it needs python3-dnslib,
docs/testing.md), on a free loopback port, UDP and TCP, started and stopped
by PID. Zones come from a dict; per-name behaviours make the failures a
resolver must survive:

    records    {"name": [["A", "127.0.0.2"], ["TXT", "v=spf1 -all"],
                         ["MX", 10, "mx.example.net"], ["AAAA", "2001:db8::1"],
                         ["PTR", "host.example.net"], ["CNAME", "other.example.net"]]}
    behaviours {"name": {"rcode": "SERVFAIL" | "REFUSED"}   answer that rcode
                        {"drop": true}                      never answer
                        {"drop_missing": true}              never answer types it has no record of
                        {"delay_ms": 2000}                  answer that late
                        {"hold": true}                      answer once released
               }

A name (case-insensitive, no trailing dot) that has records answers them
(an existing name without the type asked: no data); any other name is
NXDOMAIN. A CNAME is answered with what its target has of the type asked,
as an authoritative server does for targets in its own zone. Every query received is appended to a log (one JSON object a line:
name, type, transport), which queries() reads, so a test can wait until a
query has arrived instead of sleeping. A held query is answered when the
test calls release(name) (a file the server polls): a test controls the
order of events without any timing assumption.

    import dns_server

    with dns_server.DnsServer(workdir, records, behaviours) as d:
        ... "dns": {"forwarders": [d.forwarder]} ...
        d.wait_for_query("slow.dnstest.example.net")
        d.release("slow.dnstest.example.net")
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

DEBIAN_PYTHON = "/usr/bin/python3"
START_TIMEOUT = 10.0
ZONE_SOA = "dnstest.example.net"


def _norm(name):
    return name.rstrip(".").lower()


class DnsServer:
    """The server process, seen from a test."""

    def __init__(self, workdir, records=None, behaviours=None):
        self.workdir = os.path.join(workdir, "dns-server")
        os.makedirs(self.workdir, exist_ok=True)
        self.records = {_norm(k): v for k, v in (records or {}).items()}
        self.behaviours = {_norm(k): v for k, v in (behaviours or {}).items()}
        self.proc = None
        self.port = None

    @property
    def forwarder(self):
        return "127.0.0.1@%d" % self.port

    def _path(self, name):
        return os.path.join(self.workdir, name)

    def start(self):
        conf = self._path("zones.json")
        with open(conf, "w") as f:
            json.dump({"records": self.records, "behaviours": self.behaviours}, f)
        for name in ("port", "queries.log"):
            if os.path.exists(self._path(name)):
                os.unlink(self._path(name))
        with open(self._path("stderr"), "w") as err:
            self.proc = subprocess.Popen(
                [DEBIAN_PYTHON, os.path.abspath(__file__), "serve", conf, self._path("port"),
                 self._path("queries.log"), self.workdir],
                stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("dns_server exited: %s" % open(self._path("stderr")).read())
            try:
                with open(self._path("port")) as f:
                    text = f.read()
                if text.endswith("\n"):
                    self.port = int(text)
                    return self
            except FileNotFoundError:
                pass
            time.sleep(0.02)
        raise AssertionError("dns_server did not start")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def queries(self):
        """[(name, type)] in the order received."""
        try:
            with open(self._path("queries.log")) as f:
                return [(q["name"], q["type"]) for q in map(json.loads, f.read().splitlines())]
        except FileNotFoundError:
            return []

    def count(self, name, qtype=None):
        name = _norm(name)
        return sum(1 for n, t in self.queries() if n == name and (qtype is None or t == qtype))

    def wait_for_query(self, name, qtype=None, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count(name, qtype):
                return
            time.sleep(0.02)
        raise AssertionError("no query for %s arrived; got %r" % (name, self.queries()))

    def release(self, name):
        with open(self._path("release." + _norm(name)), "w"):
            pass


# ---- the server process (Debian's python3, with dnslib) ----

def _serve(conf_path, port_path, log_path, workdir):
    from dnslib import AAAA, CNAME, MX, PTR, QTYPE, RCODE, RR, SOA, TXT, A, DNSLabel, DNSRecord

    conf = json.load(open(conf_path))
    records, behaviours = conf["records"], conf["behaviours"]
    log_lock = threading.Lock()

    def rdata(kind, args):
        if kind == "A":
            return A(args[0])
        if kind == "AAAA":
            return AAAA(args[0])
        if kind == "MX":
            return MX(args[1], args[0])
        if kind == "PTR":
            return PTR(args[0])
        if kind == "CNAME":
            return CNAME(args[0])
        if kind == "TXT":
            # several arguments: several character-strings in one record; each at most 255 bytes
            parts = [p.encode() for p in args]
            chunks = [p[i:i + 255] for p in parts for i in range(0, max(len(p), 1), 255)]
            return TXT(chunks)
        raise ValueError(kind)

    def qname_text(qname):
        # The labels as they are (a space is a byte of a label), not dnslib's escaped text.
        return _norm(".".join(label.decode("latin-1") for label in qname.label))

    def label_of(name):
        return DNSLabel([part.encode("latin-1") for part in name.split(".")])

    def answer(req):
        q = req.q
        name = qname_text(q.qname)
        qtype = QTYPE[q.qtype]
        reply = req.reply()
        b = behaviours.get(name, {})
        if "rcode" in b:
            reply.header.rcode = getattr(RCODE, b["rcode"])
            return reply
        owner = name
        for _ in range(8):  # a CNAME chain within the zones, as far as it goes
            if owner not in records:
                if owner == name:
                    reply.header.rcode = RCODE.NXDOMAIN
                break
            recs = records[owner]
            cname = [r for r in recs if r[0] == "CNAME"]
            if cname and qtype != "CNAME":
                reply.add_answer(RR(label_of(owner), QTYPE.CNAME, rdata=CNAME(cname[0][1]), ttl=60))
                owner = _norm(cname[0][1])
                continue
            for rec in recs:
                if rec[0] == qtype:
                    reply.add_answer(RR(label_of(owner), getattr(QTYPE, rec[0]), rdata=rdata(rec[0], rec[1:]),
                                        ttl=60))
            break
        if not reply.rr:
            reply.add_auth(RR(ZONE_SOA + ".", QTYPE.SOA, ttl=60,
                              rdata=SOA("ns." + ZONE_SOA, "hostmaster." + ZONE_SOA, (1, 60, 60, 60, 60))))
        return reply

    def log_query(req, transport):
        with log_lock, open(log_path, "a") as f:
            f.write(json.dumps({"name": qname_text(req.q.qname), "type": QTYPE[req.q.qtype],
                                "transport": transport}) + "\n")

    def respond(data, send, transport):
        try:
            req = DNSRecord.parse(data)
        except Exception:
            return
        log_query(req, transport)
        name = qname_text(req.q.qname)
        b = behaviours.get(name, {})
        if b.get("drop"):
            return
        if b.get("drop_missing") and not any(r[0] == QTYPE[req.q.qtype] for r in records.get(name, [])):
            return
        if b.get("hold"):
            release = os.path.join(workdir, "release." + name)
            while not os.path.exists(release):
                time.sleep(0.01)
        if b.get("delay_ms"):
            time.sleep(b["delay_ms"] / 1000.0)
        send(answer(req).pack())

    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    for _ in range(50):
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        try:
            tcp.bind(("127.0.0.1", port))
            break
        except OSError:
            udp.close()
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp.listen(16)

    def udp_loop():
        while True:
            data, peer = udp.recvfrom(65535)
            threading.Thread(target=respond, daemon=True,
                             args=(data, lambda out, p=peer: udp.sendto(out, p), "udp")).start()

    def tcp_conn(conn):
        with conn:
            buf = b""
            while True:
                chunk = conn.recv(65535)
                if not chunk:
                    return
                buf += chunk
                while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
                    n = int.from_bytes(buf[:2], "big")
                    msg, buf = buf[2:2 + n], buf[2 + n:]
                    respond(msg, lambda out: conn.sendall(len(out).to_bytes(2, "big") + out), "tcp")

    def tcp_loop():
        while True:
            conn, _ = tcp.accept()
            threading.Thread(target=tcp_conn, args=(conn,), daemon=True).start()

    threading.Thread(target=udp_loop, daemon=True).start()
    threading.Thread(target=tcp_loop, daemon=True).start()
    with open(port_path + ".tmp", "w") as f:
        f.write("%d\n" % port)
    os.rename(port_path + ".tmp", port_path)
    signal.sigwait([signal.SIGTERM, signal.SIGINT])


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "serve":
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM, signal.SIGINT])
        _serve(*sys.argv[2:])
    else:
        sys.exit("usage: dns_server.py serve ZONES.json PORTFILE QUERYLOG WORKDIR")
