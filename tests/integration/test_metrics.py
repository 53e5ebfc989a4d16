"""The metrics endpoint (issue 17, SPEC.md "Checks" -> metrics) against the real daemon.

- A trap hit and a blocked sender on the policy ports show in a scrape as
  the counters docs/metrics.md names (decisions, trap hits, blocklist
  records, policy requests), by exact difference.
- `promtool check metrics` (Debian's prometheus package) finds no error
  and no lint warning in a live scrape.
- A real Prometheus, started here on a free loopback port with its own
  config and storage in a temp folder and stopped by PID, scrapes the
  daemon; its HTTP API (/api/v1/query) returns the daemon's counter values.
- Hostile input on the metrics port (an oversized head, a slow client,
  garbage, every slot held by idle clients, 1,000 connections at once)
  while policy requests go on beside it: every policy answer stays right,
  and the endpoint serves again after.
- metrics.allow: a client outside it gets no answer.
"""

import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.parse
import urllib.request

import redis_harness as rh
import spamtrapd_harness as sh
from milter_client import MilterClient

TRAP = "trap@example.com"
TRAP_REPLY = "550 5.1.1"
BLOCKED = "550 5.7.1"
HEAD_MAX = 8192
DEADLINE = 5  # seconds: the listener's per-connection deadline (METRICS_SERVER_DEADLINE_MS)
MAX_CONNS = 64

SERIES = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$")


def parse(body):
    """{"name{labels}": value} of an exposition text (our own renderer: no timestamps)."""
    out = {}
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SERIES.match(line)
        if not m:
            raise AssertionError(f"not a sample line: {line!r}")
        out[m.group(1)] = float(m.group(2))
    return out


def http(address, request, timeout=10.0):
    """Send request bytes, read to the server's close: (status code or None, headers, body)."""
    s = sh.connect(address, timeout=timeout)
    try:
        s.sendall(request)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    if not data:
        return None, {}, ""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    return status, headers, body.decode("utf-8")


def decision(check, action, mode="enforce"):
    return f'spamtrapd_decisions_total{{check="{check}",action="{action}",mode="{mode}"}}'


class MetricsCase(unittest.TestCase, sh.PolicyChecks):
    MILTER = False

    @classmethod
    def setUpClass(cls):
        cls.port = sh.free_port()
        cls.address = f"127.0.0.1:{cls.port}"
        cls.d = sh.Spamtrapd({"traps": {"addresses": [TRAP]}, "metrics": {"listen": cls.address}},
                             milter=cls.MILTER)
        try:
            cls.d.start()
            cls.wait_listening()
        except BaseException:
            cls.d.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    @classmethod
    def wait_listening(cls):
        deadline = time.monotonic() + sh.scaled(20)
        while True:
            try:
                sh.connect(cls.address, timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise

    def scrape(self):
        status, headers, body = http(self.address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(status, 200, body)
        self.assertEqual(headers["content-type"], "text/plain; version=0.0.4; charset=utf-8")
        self.assertEqual(headers["connection"], "close")
        self.assertEqual(int(headers["content-length"]), len(body.encode("utf-8")))
        return body

    def scrape_until_served(self):
        """Scrape until a slot is free (the listener sees closed connections in its own time)."""
        deadline = time.monotonic() + sh.scaled(DEADLINE * 4)
        while True:
            status, _, body = http(self.address, b"GET /metrics HTTP/1.0\r\n\r\n")
            if status == 200:
                return body
            self.assertEqual(status, 503)
            self.assertLess(time.monotonic(), deadline, "the metrics listener never served again")
            time.sleep(0.1)

    def values(self):
        return parse(self.scrape())


class Counting(MetricsCase):
    MILTER = True

    def test_trap_hit_and_blocked_sender(self):
        before = self.values()
        self.assertTrue(self.trap_hit(self.d, "count@spam.test", "192.0.2.71").startswith(TRAP_REPLY))
        self.assertTrue(self.sender_check(self.d, "count@spam.test", "198.51.100.9").startswith(BLOCKED))
        self.assertEqual(self.sender_check(self.d, "fine@ok.test", "198.51.100.10"), "DUNNO")
        after = self.values()
        want = {
            decision("traps", "reject"): 1,
            'spamtrapd_trap_hits_total{mode="enforce"}': 1,
            'spamtrapd_blocklist_additions_total{key_type="sender",reason="trap"}': 1,
            'spamtrapd_blocklist_additions_total{key_type="client_address",reason="trap"}': 1,
            decision("blocklist", "reject"): 1,
            decision("blocklist", "reject", "shadow"): 0,
            'spamtrapd_policy_requests_total{role="trap"}': 1,
            'spamtrapd_policy_requests_total{role="sender"}': 2,
            'spamtrapd_store_errors_total{operation="lookup"}': 0,
            'spamtrapd_milter_sessions_total': 0,
        }
        for series, delta in want.items():
            with self.subTest(series=series):
                self.assertIn(series, after)
                self.assertEqual(after[series] - before[series], delta)
        self.assertEqual(after[f'spamtrapd_build_info{{version="{sh.project_version()}"}}'], 1)

    def test_milter_session(self):
        """The milter front end is counted in the same families, where the engine logs."""
        self.assertTrue(self.trap_hit(self.d, "milt@spam.test", "192.0.2.76").startswith(TRAP_REPLY))
        before = self.values()
        conn = MilterClient.open(self.d.config["milter"]["listen"])
        try:
            conn.negotiate()
            conn.connect("mx.sender.test", "198.51.100.76")
            conn.helo("mx.sender.test")
            r = conn.mail("<milt@spam.test>", macros={"i": "QM1"})
            self.assertTrue(r.smtp.startswith(BLOCKED), r)
            conn.quit()
        finally:
            conn.close()
        after = self.values()
        self.assertEqual(after["spamtrapd_milter_sessions_total"] - before["spamtrapd_milter_sessions_total"], 1)
        self.assertEqual(after[decision("blocklist", "reject")] - before[decision("blocklist", "reject")], 1)
        self.assertEqual(after['spamtrapd_policy_requests_total{role="sender"}'],
                         before['spamtrapd_policy_requests_total{role="sender"}'])

    def test_spamtrapctl_stats(self):
        """spamtrapctl stats: the store's figures for a person, beside the daemon's counters."""
        self.assertTrue(self.trap_hit(self.d, "ctl@spam.test", "192.0.2.77").startswith(TRAP_REPLY))
        self.assertTrue(self.trap_hit(self.d, "ctl@spam.test", "192.0.2.77").startswith(TRAP_REPLY))
        out = self.d.ctl("stats").stdout
        entries = int(re.search(r"^entries in force: (\d+)$", out, re.M).group(1))
        self.assertEqual(entries, len(self.d.ctl("list").stdout.splitlines()))
        self.assertRegex(out, r"(?m)^  24 hours +\d+ +\d+$")
        traps = out.split("traps with the most hits")[1].split("most-hit keys")[0]
        self.assertRegex(traps, r"(?m)^ +\d+  trap@example\.com$")
        keys = out.split("most-hit keys")[1]
        self.assertRegex(keys, r"(?m)^ +2  ctl@spam\.test$")
        self.assertRegex(keys, r"(?m)^ +2  192\.0\.2\.77$")
        # metrics.listen is set: the daemon's counters follow, those that are not 0, with their
        # increase over the last minute and hour (GET /rates): the two hits just made are in both.
        daemon = out.split("daemon counters: total since it started")[1]
        line = re.search(r'(?m)^ +(\d+) +(\d+) +\S+ +(\d+) +\S+  spamtrapd_decisions_total\{check="traps",'
                         r'action="reject",mode="enforce"\}$', daemon)
        self.assertIsNotNone(line, daemon)
        total, minute, hour = (int(x) for x in line.groups())
        self.assertGreaterEqual(minute, 2)
        self.assertGreaterEqual(hour, minute)
        self.assertGreaterEqual(total, hour)
        self.assertNotRegex(daemon, r"(?m)^ +0  ")

    def test_rates_endpoint(self):
        """GET /rates: a trap hit shows in the total and in both windows, by exact difference; /metrics
        has no per-window series."""
        def rates():
            status, headers, body = http(self.address, b"GET /rates HTTP/1.0\r\n\r\n")
            self.assertEqual(status, 200, body)
            self.assertEqual(headers["content-type"], "text/plain; charset=utf-8")
            self.assertRegex(body, r"(?m)^# window minute \d+\.\d hour \d+\.\d$")
            out = {}
            for line in body.splitlines():
                if not line.startswith("#"):
                    name, total, minute, hour = line.rsplit(" ", 3)
                    out[name] = (int(total), int(minute), int(hour))
            return out
        key = 'spamtrapd_trap_hits_total{mode="enforce"}'
        before = rates().get(key, (0, 0, 0))
        self.assertTrue(self.trap_hit(self.d, "rates@spam.test", "192.0.2.78").startswith(TRAP_REPLY))
        after = rates()[key]
        self.assertEqual(after[0], before[0] + 1)
        # A window may move on between the two reads, never by more than the hits older than it.
        self.assertGreaterEqual(after[1], 1)
        self.assertGreaterEqual(after[2], after[1])
        self.assertNotIn("minute", self.scrape())

    def test_no_address_is_a_label(self):
        self.trap_hit(self.d, "leak@spam.test", "192.0.2.72")
        body = self.scrape()
        for secret in ("leak@spam.test", "spam.test", "192.0.2.72", TRAP):
            self.assertNotIn(secret, body)

    def test_reload_counted(self):
        before = self.values()
        self.d.reload()
        key = 'spamtrapd_reloads_total{result="success"}'
        deadline = time.monotonic() + sh.scaled(10)
        while self.values()[key] != before[key] + 1:
            self.assertLess(time.monotonic(), deadline, "the reload was not counted")
            time.sleep(0.1)

    def test_reload_keeps_the_listener(self):
        """A reload that moves metrics.listen says it takes a restart, and the listener stays."""
        mark = self.d.log_mark()
        self.d.reload({"metrics": {"listen": f"127.0.0.1:{sh.free_port()}"}})
        self.d.wait_for_log(r"listener changes .*metrics\.listen.* take effect after a restart", since=mark)
        self.scrape()
        self.d.reload({"metrics": {"listen": self.address}})

    def test_other_requests(self):
        cases = [
            (b"GET / HTTP/1.1\r\n\r\n", 404),
            (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
            (b"GET /metrics HTTP/2.0\r\n\r\n", 505),
            (b"GET /metrics\r\n\r\n", 400),
            (b"GET /rates HTTP/1.1\r\n\r\n", 200),
            (b"GET /rates/x HTTP/1.1\r\n\r\n", 404),
        ]
        for request, code in cases:
            with self.subTest(request=request):
                status, headers, _ = http(self.address, request)
                self.assertEqual(status, code)
                self.assertEqual(headers["connection"], "close")


@unittest.skipUnless(shutil.which("promtool"), "promtool missing: scripts/install-deps.sh test (Debian prometheus)")
class Promtool(MetricsCase):
    def test_promtool_check_metrics(self):
        self.trap_hit(self.d, "lint@spam.test", "192.0.2.73")
        body = self.scrape()
        r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, text=True,
                           timeout=sh.scaled(60))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(r.stdout + r.stderr, "", "promtool has lint warnings")


@unittest.skipUnless(shutil.which("prometheus"), "prometheus missing: scripts/install-deps.sh test")
class RealPrometheus(MetricsCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="spamtrapd-prometheus.")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.web = f"127.0.0.1:{sh.free_port()}"
        config = os.path.join(self.tmp, "prometheus.yml")
        with open(config, "w", encoding="utf-8") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                    "scrape_configs:\n  - job_name: spamtrapd\n"
                    f"    static_configs:\n      - targets: ['{self.address}']\n")
        self.log = open(os.path.join(self.tmp, "prometheus.log"), "wb")
        self.addCleanup(self.log.close)
        self.prom = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={self.tmp}/data",
             f"--web.listen-address={self.web}", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        self.addCleanup(self.stop_prometheus)

    def stop_prometheus(self):
        if self.prom.poll() is None:
            os.kill(self.prom.pid, signal.SIGTERM)
            try:
                self.prom.wait(timeout=sh.scaled(30))
            except subprocess.TimeoutExpired:
                os.kill(self.prom.pid, signal.SIGKILL)
                self.prom.wait()

    def query(self, expr):
        """The value of an instant query with one series, or None (not scraped yet, or not up)."""
        url = f"http://{self.web}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                answer = json.load(r)
        except OSError:
            return None
        result = answer.get("data", {}).get("result", [])
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def wait_query(self, expr, want):
        deadline = time.monotonic() + sh.scaled(90)
        got = None
        while got != want:
            self.assertIsNone(self.prom.poll(), "prometheus exited")
            self.assertLess(time.monotonic(), deadline, f"{expr}: Prometheus says {got}, want {want}")
            time.sleep(0.2)
            got = self.query(expr)

    def test_prometheus_scrapes(self):
        self.assertTrue(self.trap_hit(self.d, "prom@spam.test", "192.0.2.74").startswith(TRAP_REPLY))
        self.assertTrue(self.sender_check(self.d, "prom@spam.test", "198.51.100.74").startswith(BLOCKED))
        now = self.values()
        for series in (decision("traps", "reject"), decision("blocklist", "reject"),
                       'spamtrapd_trap_hits_total{mode="enforce"}',
                       'spamtrapd_blocklist_additions_total{key_type="sender",reason="trap"}'):
            with self.subTest(series=series):
                self.assertGreaterEqual(now[series], 1)
                self.wait_query(series, now[series])
        self.wait_query('up{job="spamtrapd"}', 1)


class Traffic(threading.Thread):
    """Policy requests beside the hostile input: a blocked sender refused, an ordinary one let through."""

    def __init__(self, case):
        super().__init__(daemon=True)
        self.case = case
        self.stop = threading.Event()
        self.answers = 0
        self.wrong = []

    def run(self):
        d = self.case.d
        try:
            with sh.PolicyClient(d.policy_address("sender")) as c:
                while not self.stop.is_set():
                    for sender, want in (("hostile@spam.test", BLOCKED), ("fine@ok.test", "DUNNO")):
                        got = c.check(sender=sender, client_address="198.51.100.20")
                        if not got.startswith(want):
                            self.wrong.append((sender, got))
                        self.answers += 1
        except Exception as e:  # pylint: disable=broad-except
            self.wrong.append(("exception", repr(e)))


class Hostile(MetricsCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        with sh.PolicyClient(cls.d.policy_address("trap")) as c:
            assert c.check(sender="hostile@spam.test", recipient=TRAP, client_address="192.0.2.75").startswith(
                TRAP_REPLY)

    def setUp(self):
        self.traffic = Traffic(self)
        self.traffic.start()
        self.addCleanup(self.stop_traffic)

    def stop_traffic(self):
        self.traffic.stop.set()
        self.traffic.join(timeout=sh.scaled(30))

    def tearDown(self):
        answers = self.traffic.answers
        deadline = time.monotonic() + sh.scaled(10)
        while self.traffic.answers < answers + 10:  # mail still served after the scenario
            self.assertLess(time.monotonic(), deadline, "policy requests stalled")
            time.sleep(0.05)
        self.stop_traffic()
        self.assertEqual(self.traffic.wrong, [])
        self.scrape_until_served()

    def test_oversized_head(self):
        status, _, _ = http(self.address, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (HEAD_MAX * 2) + b"\r\n\r\n")
        self.assertEqual(status, 431)
        status, _, _ = http(self.address, b"GET /" + b"a" * (HEAD_MAX * 2))
        self.assertEqual(status, 431)

    def test_garbage(self):
        for junk in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(500), b"\x00" * 100,
                     b"GET /metrics HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", os.urandom(4000)):
            with self.subTest(junk=junk[:20]):
                status, _, _ = http(self.address, junk)
                self.assertIn(status, (400, 404, 405, 505, None))

    def test_slow_client_is_closed_and_does_not_block_scrapes(self):
        slow = sh.connect(self.address, timeout=sh.scaled(DEADLINE * 4))
        self.addCleanup(slow.close)
        slow.sendall(b"GET /met")
        start = time.monotonic()
        self.scrape()  # served while the slow one waits
        self.assertEqual(slow.recv(100), b"", "a client that never ends its head must be closed")
        self.assertGreaterEqual(time.monotonic() - start, DEADLINE - 1)

    def test_trickling_client_is_closed(self):
        """The deadline runs from accept: a client that keeps sending a header byte at a time, never
        ending its head, is closed all the same."""
        slow = sh.connect(self.address, timeout=sh.scaled(DEADLINE * 4))
        self.addCleanup(slow.close)
        slow.sendall(b"GET /metrics HTTP/1.1\r\nX: ")
        give_up = time.monotonic() + sh.scaled(DEADLINE * 4)
        closed = False
        while not closed and time.monotonic() < give_up:
            try:
                slow.sendall(b"a")
                slow.settimeout(0.2)
                closed = slow.recv(100) == b""
            except socket.timeout:
                pass
            except (BrokenPipeError, ConnectionResetError):
                closed = True
        self.assertTrue(closed, "a trickling client must be closed at the deadline")

    def test_idle_clients_do_not_starve_scrapes(self):
        """Any local user may hold every slot with idle connections, and open new ones as they time out;
        the oldest of those that are still reading their head makes room for a newcomer."""
        idle = []
        try:
            for _ in range(MAX_CONNS):
                s = sh.connect(self.address, timeout=sh.scaled(DEADLINE * 4))
                s.sendall(b"GET /met")
                idle.append(s)
            self.scrape()
            try:
                self.assertEqual(idle[0].recv(100), b"", "the oldest idle client makes room")
            except ConnectionResetError:
                pass
        finally:
            for s in idle:
                s.close()

    def test_thousand_connections(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 1200:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(hard, 1200), 4096), max(hard, 1200)))
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        socks = []
        try:
            for _ in range(1000):
                socks.append(sh.connect(self.address, timeout=sh.scaled(20)))
            # Each new one took the slot of the oldest still idle: those are closed with no answer.
            for s in socks[:-MAX_CONNS * 2]:
                s.settimeout(sh.scaled(20))
                try:
                    self.assertEqual(s.recv(200), b"")
                except ConnectionResetError:
                    pass
            self.scrape()  # a scrape takes a slot the same way
        finally:
            for s in socks:
                s.close()


class Allow(MetricsCase):
    @classmethod
    def setUpClass(cls):
        cls.port = sh.free_port()
        cls.address = f"127.0.0.1:{cls.port}"
        cls.d = sh.Spamtrapd({"traps": {"addresses": [TRAP]},
                              "metrics": {"listen": cls.address, "allow": ["192.0.2.0/24"]}})
        try:
            cls.d.start()
            cls.wait_listening()
        except BaseException:
            cls.d.cleanup()
            raise

    def test_outside_allow_gets_nothing(self):
        status, _, body = http(self.address, b"GET /metrics HTTP/1.1\r\n\r\n")
        self.assertIsNone(status)
        self.assertEqual(body, "")


def ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@unittest.skipUnless(ipv6_loopback(), "no IPv6 loopback here")
class Ipv6(MetricsCase):
    @classmethod
    def setUpClass(cls):
        cls.port = sh.free_port("::1", socket.AF_INET6)
        cls.address = f"[::1]:{cls.port}"
        cls.d = sh.Spamtrapd({"traps": {"addresses": [TRAP]}, "metrics": {"listen": cls.address}})
        try:
            cls.d.start()
            cls.wait_listening()
        except BaseException:
            cls.d.cleanup()
            raise

    def test_served_on_ipv6_loopback(self):
        self.assertIn("spamtrapd_build_info", self.scrape())


class UnixSocket(MetricsCase):
    @classmethod
    def setUpClass(cls):
        cls.d = sh.Spamtrapd({"traps": {"addresses": [TRAP]}})
        cls.address = "unix:" + os.path.join(cls.d.dir, "metrics.sock")
        cls.d.config["metrics"] = {"listen": cls.address, "allow": ["192.0.2.0/24"]}
        sh.write_config(cls.d.config_path, cls.d.config)
        try:
            cls.d.start()
            cls.wait_listening()
        except BaseException:
            cls.d.cleanup()
            raise

    def test_served_whatever_allow_says(self):
        self.assertIn("spamtrapd_build_info", self.scrape())


def entries(values):
    """spamtrapd_blocklist_entries by key type."""
    return {m.group(1): int(v) for k, v in values.items()
            for m in [re.fullmatch(r'spamtrapd_blocklist_entries\{key_type="([a-z_]+)"\}', k)] if m}


class EntriesGaugeChecks(sh.PolicyChecks):
    """spamtrapd_blocklist_entries follows trap hits, spamtrapctl add and remove, and expiry, within
    metrics.entries_refresh (1 s here; the waits are generous: the bound is refresh + one count)."""
    REFRESH = "1s"

    def store_config(self):
        raise NotImplementedError

    def daemon(self):
        address = f"127.0.0.1:{sh.free_port()}"
        d = sh.Spamtrapd({"traps": {"addresses": [TRAP]}, "store": self.store_config(),
                          "metrics": {"listen": address, "entries_refresh": self.REFRESH}})
        self.addCleanup(d.cleanup)
        d.start()
        d.metrics = address
        return d

    def values(self, d):
        status, _, body = http(d.metrics, b"GET /metrics HTTP/1.0\r\n\r\n")
        self.assertEqual(status, 200)
        return parse(body)

    def wait_entries(self, d, want):
        deadline = time.monotonic() + sh.scaled(20)
        while True:
            values = self.values(d)
            got = entries(values)
            # Before the first count the gauges read 0 with a timestamp of 0: not yet an answer.
            if values["spamtrapd_blocklist_entries_timestamp_seconds"] > 0 and \
                    all(got.get(k, 0) == v for k, v in want.items()):
                return got
            self.assertLess(time.monotonic(), deadline, f"spamtrapd_blocklist_entries stayed {got}, want {want}")
            time.sleep(0.2)

    def test_gauge_follows_the_store(self):
        d = self.daemon()
        zero = {"client_address": 0, "sender": 0, "sender_domain": 0, "sasl_username": 0, "helo_name": 0}
        self.wait_entries(d, zero)
        self.assertGreater(self.values(d)["spamtrapd_blocklist_entries_timestamp_seconds"], 0)
        self.assertTrue(self.trap_hit(d, "gauge@spam.test", "192.0.2.81").startswith(TRAP_REPLY))
        self.assertTrue(self.trap_hit(d, "gauge2@spam.test", "192.0.2.82").startswith(TRAP_REPLY))
        self.wait_entries(d, dict(zero, client_address=2, sender=2))
        d.ctl("add", "sasl:mallory")
        d.ctl("add", "@evil.test")
        d.ctl("add", "helo:bad.example")
        d.ctl("add", "short@spam.test", "--ttl", "2s")
        self.wait_entries(d, {"client_address": 2, "sender": 3, "sender_domain": 1, "sasl_username": 1,
                              "helo_name": 1})
        d.ctl("remove", "sasl:mallory")
        d.ctl("remove", "192.0.2.81")
        # short@spam.test expires by itself: no purge, no remove.
        self.wait_entries(d, {"client_address": 1, "sender": 2, "sender_domain": 1, "sasl_username": 0,
                              "helo_name": 1})


class EntriesGaugeSqlite(EntriesGaugeChecks, unittest.TestCase):
    def store_config(self):
        return {"backend": "sqlite"}

    def test_reload_without_the_listener_keeps_counting(self):
        """A reload that drops metrics.listen leaves the listener serving until a restart: its gauge
        goes on following the store (the count stopped for good, and a reload that put the key
        back did not start it again)."""
        d = self.daemon()
        self.wait_entries(d, {"sender_domain": 0, "helo_name": 0})
        self.assertTrue(d.reload({"metrics": {"listen": None}}))
        d.ctl("add", "@evil.test")
        self.wait_entries(d, {"sender_domain": 1, "helo_name": 0})
        self.assertTrue(d.reload({"metrics": {"listen": d.metrics}}))
        d.ctl("add", "helo:bad.example")
        self.wait_entries(d, {"sender_domain": 1, "helo_name": 1})

    def test_reload_to_a_shorter_refresh(self):
        """metrics.entries_refresh shortened by a reload: the gauge keeps the new bound at once,
        not after the count the old interval (a day here) had planned."""
        self.REFRESH = "1d"
        d = self.daemon()
        self.wait_entries(d, {"sender_domain": 0})
        self.assertTrue(d.reload({"metrics": {"entries_refresh": "1s"}}))
        d.ctl("add", "@evil.test")
        self.wait_entries(d, {"sender_domain": 1})


class EntriesGaugeRedis(EntriesGaugeChecks, unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="spamtrapd-redis.")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.redis = rh.RedisServer(self.dir).start()
        self.addCleanup(self.redis.kill)

    def store_config(self):
        return {"backend": "redis", "redis": {"host": "127.0.0.1", "port": self.redis.port, "prefix": "site:"}}

    def test_hits_at_another_daemon_count(self):
        """Two daemons on one Redis: each one's gauge counts the entries the other made."""
        a, b = self.daemon(), self.daemon()
        self.assertTrue(self.trap_hit(a, "shared@spam.test", "192.0.2.91").startswith(TRAP_REPLY))
        self.wait_entries(b, {"client_address": 1, "sender": 1})
        self.wait_entries(a, {"client_address": 1, "sender": 1})


class SilentListener(unittest.TestCase):
    """spamtrapctl stats against a metrics.listen that accepts and never answers (a hung daemon,
    or something else on that port)."""

    def test_asked_once(self):
        """It is asked once, for /rates: asking /metrics after a timeout doubled the wait, and the
        first failure was never said."""
        lsn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(lsn.close)
        lsn.bind(("127.0.0.1", 0))
        lsn.listen(8)
        d = sh.Spamtrapd({"traps": {"addresses": [TRAP]},
                          "metrics": {"listen": f"127.0.0.1:{lsn.getsockname()[1]}"}})
        self.addCleanup(d.cleanup)
        out = d.ctl("stats", timeout=60)
        self.assertIn("entries in force: 0", out.stdout)
        self.assertIn("no counters from the daemon", out.stderr)
        held = []
        lsn.setblocking(False)
        while True:
            try:
                held.append(lsn.accept()[0])
            except BlockingIOError:
                break
        for c in held:
            c.close()
        self.assertEqual(len(held), 1)


    def test_trickling_listener_is_given_up(self):
        """A listener that sends a byte every half second is given up at the answer's deadline (5 s
        in all): a timeout per read alone waited as long as the peer went on trickling."""
        lsn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(lsn.close)
        lsn.bind(("127.0.0.1", 0))
        lsn.listen(8)
        stop = threading.Event()
        self.addCleanup(stop.set)

        def trickle():
            try:
                conn, _ = lsn.accept()
            except OSError:
                return
            with conn:
                for byte in b"HTTP/1.1 200 OK\r\n" * 20:  # 170 s of status lines, never a body
                    if stop.wait(0.5):
                        return
                    try:
                        conn.sendall(bytes([byte]))
                    except OSError:
                        return
        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        d = sh.Spamtrapd({"traps": {"addresses": [TRAP]},
                          "metrics": {"listen": f"127.0.0.1:{lsn.getsockname()[1]}"}})
        self.addCleanup(d.cleanup)
        out = d.ctl("stats", timeout=40)
        self.assertIn("entries in force: 0", out.stdout)
        self.assertRegex(out.stderr, r"no counters from the daemon .*timed out")

    def test_listener_not_accepting_is_said_timed_out(self):
        """A listener whose backlog is full (a hung daemon that no longer accepts): the connect gives
        up at the deadline, and stats says it timed out (it said "Operation now in progress", or
        "Resource temporarily unavailable" on a unix socket)."""
        tmp = tempfile.mkdtemp(prefix="spamtrapd-backlog-")
        self.addCleanup(shutil.rmtree, tmp, True)
        for family, address, listen in ((socket.AF_INET, ("127.0.0.1", 0), None),
                                        (socket.AF_UNIX, os.path.join(tmp, "m.sock"), None)):
            lsn = socket.socket(family, socket.SOCK_STREAM)
            self.addCleanup(lsn.close)
            lsn.bind(address)
            if family == socket.AF_UNIX:  # spamtrapctl may run as another user
                os.chmod(tmp, 0o755)
                os.chmod(address, 0o777)
            lsn.listen(0)  # one connection waits to be accepted, the next gets no answer
            if family == socket.AF_INET:
                listen = "127.0.0.1:%d" % lsn.getsockname()[1]
            else:
                listen = "unix:" + address
            for _ in range(2):
                s = socket.socket(family, socket.SOCK_STREAM)
                self.addCleanup(s.close)
                s.setblocking(False)
                try:
                    s.connect(lsn.getsockname())
                except (BlockingIOError, InterruptedError):
                    pass
            d = sh.Spamtrapd({"traps": {"addresses": [TRAP]}, "metrics": {"listen": listen}})
            self.addCleanup(d.cleanup)
            out = d.ctl("stats", timeout=60)
            self.assertIn("entries in force: 0", out.stdout)
            self.assertRegex(out.stderr, r"no counters from the daemon \(metrics.listen %s: connect: .*timed out\)"
                             % re.escape(listen))


class UnixPathInUse(unittest.TestCase):
    """metrics.listen naming a path something else has: spamtrapd refuses to start and leaves it be."""

    def test_policy_socket_is_not_taken(self):
        """A unix socket another listener serves (a typo for the policy socket, a second daemon): the
        metrics listener took it over, and Postfix's policy requests then got an HTTP 400 (every
        message deferred)."""
        d = sh.Spamtrapd({"traps": {"addresses": [TRAP]}})
        self.addCleanup(d.cleanup)
        path = "unix:" + os.path.join(d.dir, "policy.sock")
        d.config["policy"]["listen"] = [{"address": path, "role": "trap"}]
        d.config["metrics"] = {"listen": path}
        sh.write_config(d.config_path, d.config)
        self.assertNotEqual(d.run_until_exit(timeout=sh.scaled(10)), 0)
        self.assertIn(f"metrics.listen: {path} is also policy.listen[0]", d.log_tail())

    def test_config_check_names_the_clash(self):
        """spamtrapd -t says no to metrics.listen on a policy listener's path (it used to say yes, then
        the start failed at bind)."""
        d = sh.Spamtrapd({"traps": {"addresses": [TRAP]}})
        self.addCleanup(d.cleanup)
        path = "unix:" + os.path.join(d.dir, "policy.sock")
        d.config["policy"]["listen"] = [{"address": "127.0.0.1:%d" % sh.free_port(), "role": "trap"},
                                        {"address": path, "role": "sender"}]
        d.config["metrics"] = {"listen": path}
        sh.write_config(d.config_path, d.config)
        self.assertNotEqual(d.run_until_exit("-t", timeout=sh.scaled(10)), 0)
        self.assertIn(f"metrics.listen: {path} is also policy.listen[1] ({path}): the metrics listener needs "
                      "an address of its own", d.log_tail())
        d.config["metrics"] = {"listen": path + ".metrics"}
        sh.write_config(d.config_path, d.config)
        self.assertEqual(d.run_until_exit("-t", timeout=sh.scaled(10)), 0)

    def test_file_at_the_path_is_kept(self):
        """A metrics.listen path naming a file that is not a socket (a typo) is an error at start, and
        the file stays: spamtrapd removed it on the way out, as root before it drops privileges."""
        d = sh.Spamtrapd({"traps": {"addresses": [TRAP]}})
        self.addCleanup(d.cleanup)
        path = os.path.join(d.dir, "precious.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("keep me\n")
        d.config["metrics"] = {"listen": "unix:" + path}
        sh.write_config(d.config_path, d.config)
        self.assertNotEqual(d.run_until_exit(timeout=sh.scaled(10)), 0)
        with open(path, encoding="utf-8") as f:
            self.assertEqual(f.read(), "keep me\n")


if __name__ == "__main__":
    unittest.main()
