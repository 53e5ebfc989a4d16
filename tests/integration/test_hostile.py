"""Hostile input against the running daemon (issue 7, hardening).

Every scenario runs while well-behaved clients go on in a thread beside it
(Companion): a policy client that asks for a blocklisted sender (the
reject), an ordinary one (DUNNO) and a fresh trap hit (the trap's action,
then the reject for that sender), and a milter client with a blocklisted
sender (the reject) and an ordinary one (continue). Their answers are
checked; a wrong answer, or a connection the daemon closes twice in a row,
fails the scenario. Postfix reopens a policy connection it finds closed
once per request, and so does the companion.

Each scenario also checks that:
- memory stays bounded: VmRSS of the daemon (/proc/PID/status) grows by at
  most RSS_GROWTH_MB over the scenario (the test build runs under ASan,
  which inflates RSS: growth is bounded, not the size);
- each rejected input is logged exactly once: the lines about bad input
  (BAD_INPUT) after the scenario's mark, plus what the daemon's flood
  summaries say they left out, equal the inputs sent.

What is already covered by test_policy.py (each malformed-request kind with
one request, the fast endless request, the TLS ClientHello, three malformed
requests in a row) is not repeated here; this file adds size, volume,
slowness and concurrency to it, and the strange addresses.

ctest runs the file as two entries: integration.test_hostile, the floods
and everything timed against the daemon's ticks (alone: RUN_SERIAL), and
integration.test_hostile.parallel, the classes with SERIAL = False, which
only send a few odd requests each and may share the machine. Outside
ctest (SPAMTRAPD_HOSTILE_PART unset) every class runs.
"""

import contextlib
import os
import re
import resource
import select
import shutil
import socket
import sqlite3
import struct
import sys
import tempfile
import threading
import time
import unittest

import dns_server
import spamtrapd_harness as sh
from milter_client import MilterClient, MilterProtocolError

SCALE = getattr(sh, "TIMEOUT_SCALE", 1.0)
TRAP = "trap@example.com"
REJECT_TEXT = "550 5.7.1 Sender is blocklisted here (spamtrapd hostile test)"
TRAP_REPLY = "550 5.1.1 User unknown"  # traps.action discard, on_mixed deliver-others
KNOWN_BAD = "known@bad.test"  # blocklisted before every scenario
IDLE_TIMEOUT = 3  # seconds: the slow-client scenarios wait for it
RSS_GROWTH_MB = 32
# ASan keeps freed memory in its quarantine (256 MiB by default) and so in VmRSS: a scenario's
# growth would measure how much the daemon churns (SQLite's RETURNING builds a temporary table per
# blocklist write), not what it keeps. A small quarantine keeps the figure about live memory.
if "ASAN_OPTIONS" in os.environ and "quarantine_size_mb" not in os.environ["ASAN_OPTIONS"]:
    os.environ["ASAN_OPTIONS"] += ":quarantine_size_mb=4"
# Under a wrapper (valgrind: make valgrind) the daemon's RSS is the tool's too, with its shadow memory.
RSS_FACTOR = 4 if os.environ.get("SPAMTRAPD_WRAPPER") else 1
# valgrind keeps descriptors of its own above the client's open files limit and refuses to let the
# client raise it: the limit tests cannot show anything under it.
POSTFIX_RETRY_DELAY = 1.0
NOFILE_REAL = not os.environ.get("SPAMTRAPD_WRAPPER")
NOFILE_SKIP = "the open files limit is virtualised by the SPAMTRAPD_WRAPPER (valgrind)"

# Lines about bad input, at info and above (an idle connection closed is a debug line).
BAD_INPUT = re.compile(
    r"^\S+ \S+: (?:info|notice|warning|err): (?:"
    r"policy: \S+: malformed request from |"
    r"policy: \S+: request from \S+ on \S+: .*(?:answered DUNNO|not used)|"
    r"policy: closing connection from |"
    r"policy: connection from \S+ on \S+ (?:closed|lost) in the middle of a request|"
    r"milter: connection closed before option negotiation)", re.M)
SUMMARY = re.compile(r"(?:policy|milter): (\d+) more (?:lines about bad input|connections that were no MTA)")


def rss_kb(pid):
    """VmRSS and VmHWM of pid in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0])
    return out


def raise_own_open_files(want):
    """This process holds the client ends of the floods: a soft limit of at least want, or SkipTest."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        raise unittest.SkipTest(f"the open files hard limit {hard} is below the {want} this test needs")
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def closed_sockets(socks, want, wait=10.0):
    """How many of socks the peer has closed (end of file or reset), looking at all of them at once;
    waits until want are, or for wait seconds (then a little longer: one too many would show)."""
    poller = select.poll()
    by_fd = {s.fileno(): s for s in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    closed = set()
    deadline = time.monotonic() + wait * SCALE
    while time.monotonic() < deadline:
        if len(closed) >= want:
            deadline = min(deadline, time.monotonic() + 0.3)
        ready = poller.poll(50)
        for fd, _ in ready:
            try:
                data = by_fd[fd].recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                closed.add(fd)
                poller.unregister(fd)
    return len(closed)


def open_files(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def soft_nofile_of(pid):
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no Max open files line")


class Companion(threading.Thread):
    """Well-behaved clients that run beside a scenario and check every answer."""

    def __init__(self, d, milter=True):
        super().__init__(daemon=True)
        self.d = d
        self.milter = milter and d.config["milter"]["listen"] is not None
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.rounds = 0
        self.errors = []
        self.reconnects = 0
        self.slowest = 0.0
        self.conns = {}

    # -- policy, as Postfix does it: one persistent connection per port, reopened once when found closed
    def ask(self, role, **attrs):
        for attempt in (1, 2):
            c = self.conns.get(role)
            try:
                if c is None:
                    c = self.conns[role] = sh.PolicyClient(self.d.policy_address(role), timeout=10 * SCALE)
                t0 = time.monotonic()
                action = c.check(**attrs)
                self.slowest = max(self.slowest, time.monotonic() - t0)
                return action
            except (sh.ConnectionClosed, OSError) as e:
                if c is not None:
                    c.close()
                self.conns[role] = None
                if attempt == 2:
                    raise AssertionError(f"{role} port: closed twice in a row: {e!r}") from e
                with self.lock:
                    self.reconnects += 1
                # Postfix waits smtpd_policy_service_retry_delay (1s) before its one retry (attr_clnt.c)
                time.sleep(POSTFIX_RETRY_DELAY)

    def expect(self, what, got, want):
        if got != want:
            with self.lock:
                self.errors.append(f"round {self.rounds}: {what}: {got!r}, want {want!r}")

    def policy_round(self, i):
        self.expect("blocklisted sender", self.ask("sender", sender=KNOWN_BAD, client_address="203.0.113.200"),
                    REJECT_TEXT)
        self.expect("ordinary request", self.ask("sender", sender=f"fine{i}@good.test",
                                                 client_address="198.51.100.200"), "DUNNO")
        fresh = f"companion{i}.{os.getpid()}@spam.test"
        self.expect("trap hit", self.ask("trap", sender=fresh, recipient=TRAP, client_address="192.0.2.200"),
                    TRAP_REPLY)
        self.expect("the trap hit's sender", self.ask("sender", sender=fresh, client_address="203.0.113.201"),
                    REJECT_TEXT)

    def milter_round(self, i):
        with MilterClient.open(self.d.config["milter"]["listen"], timeout=10 * SCALE) as m:
            m.negotiate()
            m.connect("client.example", "198.51.100.201")
            m.helo("client.example")
            r = m.mail(f"<{KNOWN_BAD}>")
            self.expect("milter: blocklisted sender", r.smtp, REJECT_TEXT)
            r = m.mail(f"<fine{i}@good.test>")
            self.expect("milter: ordinary sender", r.verdict, "continue")
            r = m.rcpt("<user@example.com>")
            self.expect("milter: ordinary recipient", r.verdict, "continue")
            m.abort()
            m.quit()

    def run(self):
        i = 0
        while not self.stop_event.is_set():
            try:
                self.policy_round(i)
                if self.milter and i % 4 == 0:
                    self.milter_round(i)
            except (AssertionError, OSError, MilterProtocolError) as e:
                with self.lock:
                    self.errors.append(f"round {i}: {e!r}")
            i += 1
            with self.lock:
                self.rounds = i
            self.stop_event.wait(0.02)
        for c in self.conns.values():
            if c is not None:
                c.close()

    def stop(self):
        self.stop_event.set()
        self.join(30)

    def wait_rounds(self, n, timeout=20.0):
        """Wait until n more rounds are done (the companion made progress)."""
        with self.lock:
            target = self.rounds + n
        deadline = time.monotonic() + timeout * SCALE
        while time.monotonic() < deadline:
            with self.lock:
                if self.rounds >= target or not self.is_alive():
                    break
            time.sleep(0.02)
        with self.lock:
            return self.rounds >= target

    def take_errors(self):
        with self.lock:
            errors, self.errors = self.errors, []
            return errors


class HostileCase(unittest.TestCase):
    """One daemon for the class, the companion running from start to end."""

    CONFIG = {}
    MILTER = True
    SERIAL = True  # floods and timings: run alone (see the module's docstring)

    @classmethod
    def setUpClass(cls):
        config = sh.merge({"traps": {"addresses": [TRAP]}, "blocklist": {"reject": REJECT_TEXT},
                           "policy": {"idle_timeout": f"{IDLE_TIMEOUT}s"}}, cls.CONFIG)
        cls.d = sh.Spamtrapd(config, milter=cls.MILTER)
        try:
            cls.start_daemon()
            with sh.PolicyClient(cls.d.policy_address("trap")) as t:
                assert t.check(sender=KNOWN_BAD, recipient=TRAP, client_address="192.0.2.199") == TRAP_REPLY
            cls.companion = Companion(cls.d, milter=cls.MILTER)
            cls.companion.start()
        except BaseException:
            cls.d.cleanup()
            raise

    @classmethod
    def start_daemon(cls):
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.companion.stop()
        finally:
            cls.d.cleanup()

    @property
    def pid(self):
        return self.d.proc.pid

    @contextlib.contextmanager
    def scenario(self, rss_growth_mb=RSS_GROWTH_MB):
        """The checks around every scenario: the companion's answers, memory, and the daemon alive.
        Yields the log mark for the scenario's own log checks."""
        self.companion.take_errors()
        self.assertTrue(self.companion.wait_rounds(1), "the companion is stuck before the scenario")
        before = rss_kb(self.pid)
        mark = self.d.log_mark()
        yield mark
        self.assertTrue(self.d.running(), "spamtrapd died:\n" + self.d.log_tail())
        self.assertTrue(self.companion.wait_rounds(3), "the companion made no progress after the scenario")
        after = rss_kb(self.pid)
        errors = self.companion.take_errors()
        self.assertEqual(errors, [], "the well-behaved client got wrong answers")
        growth_mb = (after["VmRSS"] - before["VmRSS"]) / 1024
        print(f"  [{self.id().rsplit('.', 1)[-1]}: VmRSS {before['VmRSS'] // 1024} -> {after['VmRSS'] // 1024} MiB, "
              f"VmHWM {after['VmHWM'] // 1024} MiB, companion slowest answer {self.companion.slowest * 1000:.0f} ms]",
              file=sys.stderr)
        self.assertLess(growth_mb, rss_growth_mb * RSS_FACTOR, f"VmRSS grew by {growth_mb:.1f} MiB")

    def bad_input_count(self, mark, pattern=None):
        """Lines about bad input since mark (those matching pattern, if given), plus what the flood
        summaries say they left out (a scenario sends one kind of bad input)."""
        lines = self.d.log_since(mark).splitlines()
        bad = [line for line in lines if BAD_INPUT.search(line) and (pattern is None or re.search(pattern, line))]
        return len(bad) + sum(int(m.group(1)) for line in lines for m in [SUMMARY.search(line)] if m)

    def assert_logged_once_each(self, mark, n, pattern=None, timeout=5.0):
        """Exactly n lines about bad input since mark (counting the ones a flood summary left out)."""
        deadline = time.monotonic() + timeout * SCALE
        while True:
            got = self.bad_input_count(mark, pattern)
            if got >= n or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        time.sleep(0.3)  # a line too many would come now
        got = self.bad_input_count(mark, pattern)
        self.assertEqual(got, n, "lines about bad input:\n" + "\n".join(
            line for line in self.d.log_since(mark).splitlines() if BAD_INPUT.search(line) or SUMMARY.search(line)))

    # -- raw clients
    def raw(self, role="sender", timeout=10.0):
        s = sh.connect(self.d.policy_address(role), timeout=timeout * SCALE)
        self.addCleanup(s.close)
        return s

    def client(self, role="sender"):
        c = sh.PolicyClient(self.d.policy_address(role), timeout=10 * SCALE)
        self.addCleanup(c.close)
        return c

    @staticmethod
    def send_ignoring_reset(sock, data):
        try:
            sock.sendall(data)
        except OSError:
            pass  # the daemon closed the connection while we were sending: what some scenarios expect

    @staticmethod
    def shutdown_ignoring_reset(sock):
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # already reset by the daemon

    @staticmethod
    def closed_by_peer(sock, timeout=10.0):
        """True when the daemon closes sock within timeout (replies before that are read and dropped)."""
        deadline = time.monotonic() + timeout * SCALE
        sock.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                if not sock.recv(65536):
                    return True
            except socket.timeout:
                continue
            except OSError:
                return True
        return False


class TestHostileRequests(HostileCase):
    """Oversized, overlong, binary and endless requests on the policy ports."""

    def test_oversized_lines(self):
        """Lines far over policy.max_line (4096): each request gets DUNNO and one line, the connection
        stays; 40 requests of 900 KB each (36 MB in all) leave memory where it was, because the parser
        never buffers a line."""
        with self.scenario() as mark:
            c = self.client()
            big = b"x" * (900 * 1024)
            for i in range(40):
                c.send_raw(b"request=smtpd_access_policy\nqueue_id=BIG%d\nsender=" % i + big + b"\n\n")
                self.assertEqual(c.read_action(), "DUNNO", i)
                if i % 2 == 1:  # a good request in between: the malformed count starts again
                    self.assertEqual(c.check(sender=KNOWN_BAD, client_address="203.0.113.10"), REJECT_TEXT)
            self.assert_logged_once_each(mark, 40, r"malformed request .*: line too long in line 3")
            self.assertEqual(c.check(), "DUNNO")

    def test_endless_line(self):
        """Three connections each send a 3 MiB line that never ends: each is closed at 1 MiB after the
        syntax error, with one line; the bytes after that are refused by a closed socket."""
        with self.scenario() as mark:
            socks = [self.raw() for _ in range(3)]
            threads = [threading.Thread(target=self.send_ignoring_reset, args=(s, b"sender=" + b"y" * (3 << 20)))
                       for s in socks]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30 * SCALE)
            for s in socks:
                self.assertTrue(self.closed_by_peer(s))
            self.assert_logged_once_each(mark, 3, r"no end of the request within 1 MiB")

    def test_ten_thousand_attributes(self):
        """policy.max_attributes is 64: 10,000 attributes are one malformed request, answered DUNNO with
        one line, whether the names are unknown or all the same known one."""
        with self.scenario() as mark:
            c = self.client()
            many = "".join(f"x_attr{i}=value{i}\n" for i in range(10000))
            c.send_raw(f"request=smtpd_access_policy\nqueue_id=MANY1\n{many}sender={KNOWN_BAD}\n\n".encode())
            self.assertEqual(c.read_action(), "DUNNO")
            same = f"sender={KNOWN_BAD}\n" * 10000
            c.send_raw(f"request=smtpd_access_policy\nqueue_id=MANY2\n{same}\n".encode())
            self.assertEqual(c.read_action(), "DUNNO")
            self.assertEqual(c.check(sender=KNOWN_BAD, client_address="203.0.113.11"), REJECT_TEXT)
            self.assert_logged_once_each(mark, 2, r"malformed request .*too many attributes in line 65")

    def test_nul_bytes(self):
        """A NUL byte in a value, in a name, as the very first byte, or after a complete request:
        one line and a closed connection each. A request answered before the NUL stays answered."""
        with self.scenario() as mark:
            inputs = [b"request=smtpd_access_policy\nsender=a\x00b@bad.test\n\n",
                      b"request=smtpd_access_policy\nsen\x00der=a@bad.test\n\n",
                      b"\x00" * 64,
                      sh.PolicyClient.encode(sender=KNOWN_BAD, client_address="203.0.113.12") + b"\x00\n\n"]
            socks = [self.raw() for _ in inputs]
            for s, data in zip(socks, inputs):
                self.send_ignoring_reset(s, data)
            for s in socks:
                self.assertTrue(self.closed_by_peer(s))
            self.assert_logged_once_each(mark, 4, r"NUL byte in line \d+ of a request")

    def test_invalid_utf8(self):
        """Bytes that are no UTF-8 are only bytes to the protocol: an unknown attribute name of them is
        skipped. A sender of them makes no key (core/key.h: every key is valid UTF-8, so that it
        prints and can be typed back), so a trap hit blocklists the client, which is then rejected
        with any sender, and the sender alone from elsewhere is not. Nothing here is bad input: no
        such line."""
        with self.scenario() as mark:
            sender = b"\xff\xfe\xc3(spam@bad-utf8.test"
            trap, snd = self.raw("trap"), self.raw("sender")
            for sock, data, want in (
                    (trap, b"request=smtpd_access_policy\nprotocol_state=RCPT\n\xff\xfe=\x80\x81\nsender=" + sender +
                     b"\nrecipient=" + TRAP.encode() + b"\nclient_address=192.0.2.13\n\n", TRAP_REPLY),
                    (snd, b"request=smtpd_access_policy\nprotocol_state=RCPT\nsender=" + sender +
                     b"\nrecipient=user@example.com\nclient_address=192.0.2.13\n\n", REJECT_TEXT),
                    (snd, b"request=smtpd_access_policy\nprotocol_state=RCPT\nsender=" + sender +
                     b"\nrecipient=user@example.com\nclient_address=203.0.113.13\n\n", "DUNNO"),
                    (snd, b"request=smtpd_access_policy\nprotocol_state=RCPT\nsender=\xc0\xafok@good.test\n"
                     b"helo_name=\xed\xa0\x80\nrecipient=user@example.com\nclient_address=198.51.100.13\n\n", "DUNNO")):
                sock.sendall(data)
                reply = b""
                while not reply.endswith(b"\n\n"):
                    chunk = sock.recv(4096)
                    self.assertTrue(chunk, "closed")
                    reply += chunk
                self.assertEqual(reply.decode(), f"action={want}\n\n")
            time.sleep(0.3)
            self.assertEqual(self.bad_input_count(mark), 0, self.d.log_since(mark))
            # journald keeps a line that is not UTF-8 as a blob journalctl hides: the decision
            # lines must mask the bytes, not copy them.
            with open(self.d.log_path, "rb") as f:
                f.seek(mark)
                raw = f.read()
            raw.decode("utf-8")  # raises on any invalid sequence
            self.assertIn(b"???(spam@bad-utf8.test", raw)

    def test_disconnects_mid_request(self):
        """Half a line, a whole line, the empty line missing, a reset: one line each."""
        with self.scenario() as mark:
            halves = [b"request=smtpd_access_policy\nsender=ha", b"request=smtpd_access_policy\n",
                      sh.PolicyClient.encode(sender="x@y.test")[:-1], b"request=smtpd_access_policy\nsender=rst"]
            socks = [self.raw() for _ in halves]
            for s, data in zip(socks, halves):
                s.sendall(data)
            time.sleep(0.2)
            for s in socks[:-1]:
                s.close()
            socks[-1].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            socks[-1].close()  # RST instead of FIN
            # the reset is "lost in the middle of a request: Connection reset by peer"
            self.assert_logged_once_each(mark, 4, r"(closed|lost) in the middle of a request")
            self.assertEqual(self.bad_input_count(mark), 4)

    def test_flood_of_bad_requests_is_summarised(self):
        """200 connections, each sending three malformed requests (600 in all, faster than the daemon
        logs them one by one): every connection is closed after its third, and the log holds at most
        a burst of lines a second plus summaries that count the rest: 600 in all, not one lost or
        doubled. Then 20,000 empty requests on one connection: it is closed after three."""
        with self.scenario() as mark:
            socks = [self.raw() for _ in range(200)]
            for s in socks:
                self.send_ignoring_reset(s, b"no equals\n\n" * 3)
            for s in socks:
                self.assertTrue(self.closed_by_peer(s))
            self.assert_logged_once_each(mark, 600, timeout=8.0)
            lines = [line for line in self.d.log_since(mark).splitlines() if BAD_INPUT.search(line)]
            self.assertLess(len(lines), 300, "the flood was not limited")
            self.assertTrue(SUMMARY.search(self.d.log_since(mark)), "no summary line")
        time.sleep(1.2)  # the next second: a fresh burst
        with self.scenario() as mark:
            s = self.raw()
            self.send_ignoring_reset(s, b"\n" * 20000)
            self.assertTrue(self.closed_by_peer(s))
            self.assert_logged_once_each(mark, 3, r"no request attribute")
            self.assertIn("closing the connection after 3 in a row", self.d.log_since(mark))


class TestGreylistFlood(HostileCase):
    """A million unique triplets, scaled down: a flood of new triplets costs bounded disk and
    memory (greylist.max_triplets, issue 13). Past the cap new triplets pass ungreylisted and
    are not written; known ones keep working; the companion is served throughout."""

    CAP = 1000
    CONFIG = {"greylist": {"mode": "enforce", "max_triplets": CAP}}
    MILTER = False

    def test_unique_triplets_past_the_cap(self):
        conns, per_conn = 4, 1500
        with self.scenario() as mark:
            answers = []
            for k in range(conns):
                c = self.client("trap")
                batch = b"".join(c.encode(sender=f"flood{k}x{i}@spam{k}.test", recipient=f"u{i}@example.com",
                                          client_address=f"203.0.{k}.{1 + i % 250}")
                                 for i in range(per_conn))
                c.send_raw(batch)
                answers += [c.read_action() for _ in range(per_conn)]
            deferred = sum(a.startswith("DEFER_IF_PERMIT") for a in answers)
            self.assertEqual(len(answers), conns * per_conn)
            self.assertTrue(self.CAP * 0.9 <= deferred <= self.CAP, f"{deferred} deferred")
            self.assertEqual(answers.count("DUNNO"), len(answers) - deferred)
            self.d.wait_for_log(r"continue: greylist full max_triplets=1000", since=mark)
        db = self.d.config["store"]["sqlite"]["path"]
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            rows = con.execute("SELECT count(*) FROM greylist_triplets").fetchone()[0]
        size = sum(os.path.getsize(db + ext) for ext in ("", "-wal") if os.path.exists(db + ext))
        print(f"  [greylist flood: {len(answers)} unique triplets, cap {self.CAP}: {rows} rows, "
              f"{size // 1024} KiB on disk]", file=sys.stderr)
        self.assertLessEqual(rows, self.CAP)
        self.assertLess(size, 32 << 20, "the database and its log")
        # a known triplet still works past the cap: the first one waits on
        self.assertTrue(self.client("trap").check(sender="flood0x0@spam0.test", recipient="u0@example.com",
                                                  client_address="203.0.0.1").startswith("DEFER_IF_PERMIT"))


class TestAccountFlood(HostileCase):
    """A flood of distinct SASL accounts, each from a network of its own, with relay and a
    per-account ratelimit rule on (issue 14), scaled down: relay.max_entries and
    ratelimit.max_buckets keep both tables bounded; an account that tripped before the flood
    stays stopped (the flood does not flush its state); a legitimate account's limit works
    during and after it; the companion is served throughout."""

    CAP = 500
    RATE = 12
    CONFIG = {"relay": {"mode": "enforce", "max_networks": 10, "max_entries": CAP},
              "ratelimit": {"mode": "enforce", "max_buckets": CAP,
                            "rules": [{"name": "account", "key": "sasl_username", "rate": f"{RATE}/1h"}]}}
    MILTER = False
    RELAY_DEFER = "451 4.7.1 Too many client networks for this account, try again later"
    RATE_DEFER = "450 4.7.1 Rate limit exceeded, try again later"

    def ask(self, account, client, n=0):
        return self.client("trap").check(sender=f"{account}@example.com", recipient=f"r{n}@example.org",
                                         client_address=client, sasl_username=account,
                                         instance=sh.new_instance())

    def send_up_to_limit(self, account):
        """RATE messages from one network pass; the next one is rate limited."""
        for n in range(self.RATE):
            self.assertEqual(self.ask(account, "198.18.200.7", n), "DUNNO", f"{account} message {n}")
        self.assertEqual(self.ask(account, "198.18.200.7", self.RATE), self.RATE_DEFER)

    def test_distinct_accounts_past_the_caps(self):
        # before the flood: one account trips relay, another its rate limit
        for i in range(1, 11):
            self.assertEqual(self.ask("mallory", f"198.19.{i}.7", i), "DUNNO", i)
        self.assertEqual(self.ask("mallory", "198.19.11.7"), self.RELAY_DEFER)
        self.send_up_to_limit("carol")
        conns, per_conn = 4, 800
        # Every request reads and writes two tables: SQLite's page cache (8 MiB a connection, four
        # connections) fills, as it would without the caps (35 MiB measured with them off).
        with self.scenario(rss_growth_mb=64) as mark:
            answers = []
            for k in range(conns):
                c = self.client("trap")
                batch = b"".join(c.encode(sender=f"bot{k}x{i}@example.com", recipient=f"u{i}@example.org",
                                          client_address=f"{20 + k}.{i // 200}.{i % 200}.9",
                                          sasl_username=f"bot{k}x{i}", instance=sh.new_instance())
                                 for i in range(per_conn))
                c.send_raw(batch)
                answers += [c.read_action() for _ in range(per_conn)]
                if k == conns // 2:  # a new account in the middle of the flood, tables full
                    self.send_up_to_limit("dave")
            self.assertEqual(answers, ["DUNNO"] * (conns * per_conn))
            self.d.wait_for_log(r"warning: relay: table full \(relay\.max_entries\), new networks are not "
                                r"counted: set=relay:sasl:bot", since=mark)
        db = self.d.config["store"]["sqlite"]["path"]
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            members = con.execute("SELECT count(*) FROM distinct_members").fetchone()[0]
            buckets = con.execute("SELECT count(*) FROM counters").fetchone()[0]
        print(f"  [account flood: {len(answers)} accounts, cap {self.CAP}: {members} relay rows, "
              f"{buckets} buckets]", file=sys.stderr)
        self.assertLessEqual(members, self.CAP)
        self.assertLessEqual(buckets, self.CAP)
        # the state from before the flood is still there, and new accounts are limited
        self.assertEqual(self.ask("mallory", "198.19.12.7"), self.RELAY_DEFER)
        self.assertEqual(self.ask("carol", "198.18.200.7"), self.RATE_DEFER)
        self.assertEqual(self.ask("dave", "198.18.200.7"), self.RATE_DEFER)
        self.send_up_to_limit("erin")


class TestSlowClients(HostileCase):
    """Clients that trickle: policy.idle_timeout (3 s here) bounds a whole request, not just a pause,
    so one byte a second cannot hold a connection, and the epoll workers never wait on it."""

    def test_one_byte_per_second_and_never_ending(self):
        with self.scenario() as mark:
            drips = [self.raw() for _ in range(3)]
            endless = self.raw("trap")
            stop = threading.Event()

            def drip(s, chunks, interval):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                try:
                    for chunk in chunks:
                        s.send(chunk)
                        if stop.wait(interval):
                            return
                except OSError:
                    pass  # closed by the daemon

            # one byte a second of a real request; and whole attribute lines five a second, forever
            request = sh.PolicyClient.encode(sender="slow@bad.test")
            one_by_one = [request[i:i + 1] for i in range(len(request))]
            lines = [b"request=smtpd_access_policy\n"] + [b"x%d=1\n" % i for i in range(10000)]
            threads = [threading.Thread(target=drip, args=(s, one_by_one, 1.0)) for s in drips]
            threads.append(threading.Thread(target=drip, args=(endless, lines, 0.2)))
            t0 = time.monotonic()
            for t in threads:
                t.start()
            try:
                self.assertTrue(self.closed_by_peer(drips[0], timeout=IDLE_TIMEOUT + 5))
                first = time.monotonic() - t0
                for s in drips[1:] + [endless]:
                    self.assertTrue(self.closed_by_peer(s, timeout=IDLE_TIMEOUT + 5))
                last = time.monotonic() - t0
            finally:
                stop.set()
                for t in threads:
                    t.join(10)
            # closed by the deadline: not before idle_timeout (they all started together), and within a
            # one-second sweep of it
            self.assertGreaterEqual(first, IDLE_TIMEOUT - 0.5)
            self.assertLess(last, (IDLE_TIMEOUT + 3) * SCALE)
            self.assert_logged_once_each(mark, 4, r"request not complete \d+s after its first byte")


class TestMilterGarbage(HostileCase):
    """Garbage on the milter port: libmilter drops each such connection; the daemon logs one line for
    each and the milter keeps serving (the companion's milter rounds)."""

    SERIAL = False  # a few connections, nothing timed

    GARBAGE = [b"GET / HTTP/1.0\r\n\r\n",
               bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc]) + os.urandom(500),
               b"\xff\xff\xff\xff" + b"x" * 100,  # a length of 4 GiB
               b"\x00\x00\x00\x00Z",  # a length of 0
               b"\x00\x00\x00\x05Zabcd",  # an unknown command
               b"\x00\x00\x00\x01O",  # option negotiation without its data
               b"\x00\x00\x00\x0dO\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00",  # protocol version 1
               b""]  # connect and close at once (a port probe)

    def test_garbage_before_negotiation(self):
        port = self.d.milter_port()
        with self.scenario() as mark:
            for data in self.GARBAGE:
                with socket.create_connection(("127.0.0.1", port), timeout=10 * SCALE) as s:
                    self.send_ignoring_reset(s, data)
                    self.shutdown_ignoring_reset(s)
                    self.assertTrue(self.closed_by_peer(s))
            self.assert_logged_once_each(mark, len(self.GARBAGE),
                                         r"milter: connection closed before option negotiation")

    def test_garbage_after_negotiation(self):
        """A peer that negotiates and then sends garbage is dropped too; libmilter gives no sign of why
        (xxfi_close as for a QUIT), so nothing is logged: the point is that the milter goes on."""
        with self.scenario() as mark:
            for data in (b"\x00\x00\x00\x05Zabcd", b"\x7f\xff\xff\xff", b"\x00\x00\x00\x02M"):
                m = MilterClient.open(self.d.config["milter"]["listen"])
                try:
                    m.negotiate()
                    m.connect("garbage.example", "192.0.2.14")
                    self.send_ignoring_reset(m.sock, data)
                    self.shutdown_ignoring_reset(m.sock)
                    self.assertTrue(self.closed_by_peer(m.sock))
                finally:
                    m.close()
            self.assertEqual(self.bad_input_count(mark), 0)


class TestAddresses(HostileCase):
    """Strange addresses: the verdicts, and one key for one mailbox however it is spelled."""

    # test_null_sender: a bounce to a trap records the client (the default, ignore, records nothing).
    CONFIG = {"traps": {"null_sender": "client"}}
    SERIAL = False  # single requests, nothing timed

    def trap_hit(self, sender, client, recipient=TRAP, **kw):
        return self.client("trap").check(sender=sender, recipient=recipient, client_address=client, **kw)

    def sender_check(self, sender, client, **kw):
        return self.client("sender").check(sender=sender, client_address=client, **kw)

    def keys(self):
        return [line.split("\t")[0] for line in self.d.ctl("list").stdout.splitlines()]

    def milter_session(self, client="198.51.100.30"):
        m = MilterClient.open(self.d.config["milter"]["listen"], timeout=10 * SCALE)
        self.addCleanup(m.close)
        m.negotiate()
        m.connect("client.example", client)
        m.helo("client.example")
        return m

    def test_null_sender(self):
        """<> hitting a trap blocklists the client (null_sender client), never the null sender: bounces from
        elsewhere pass."""
        with self.scenario() as mark:
            for spelling in ("", "<>"):
                self.assertEqual(self.trap_hit(spelling, "192.0.2.31"), TRAP_REPLY)
                self.assertEqual(self.sender_check(spelling, "203.0.113.31"), "DUNNO")
            self.assertEqual(self.sender_check("", "192.0.2.31"), REJECT_TEXT)
            m = self.milter_session("203.0.113.32")
            self.assertEqual(m.mail("<>").verdict, "continue")
            self.assertFalse({"", "<>"} & set(self.keys()))
            self.assertEqual(self.bad_input_count(mark), 0)

    def test_source_route(self):
        """<@route:a@b> is a@b (RFC 5321 4.1.2: the route is ignored), on both front ends."""
        with self.scenario():
            self.assertEqual(self.trap_hit("<@relay1.test,@relay2.test:routed@bad.test>", "192.0.2.33"), TRAP_REPLY)
            self.assertIn("routed@bad.test", self.keys())
            self.assertEqual(self.sender_check("routed@bad.test", "203.0.113.33"), REJECT_TEXT)
            self.assertEqual(self.sender_check("@other.test:routed@bad.test", "203.0.113.33"), REJECT_TEXT)
            self.assertEqual(self.milter_session().mail("<@relay.test:routed@bad.test>").smtp, REJECT_TEXT)

    def test_quoted_local_part(self):
        """Postfix hands a policy server the internal form (x y@d) and a milter what the client wrote
        (<"x y"@d>): one mailbox, one key. A trap hit over the milter from <"x y"@d> is rejected on
        the policy port, and <"spam"@d> is the same sender as <spam@d>."""
        with self.scenario():
            m = self.milter_session("192.0.2.34")
            self.assertEqual(m.mail('<"x y"@quoted.test>').verdict, "continue")
            self.assertEqual(m.rcpt(f"<{TRAP}>").verdict, "continue")
            end = m.eom()
            self.assertEqual(end.action, "discard")
            self.assertIn("x y@quoted.test", self.keys())
            self.assertEqual(self.sender_check("x y@quoted.test", "203.0.113.34"), REJECT_TEXT)
            self.assertEqual(self.milter_session().mail('<"x y"@Quoted.Test>').smtp, REJECT_TEXT)
            # the other way round: a policy trap hit, then the quoted spelling on the milter
            self.assertEqual(self.trap_hit("spam@quoted.test", "192.0.2.35"), TRAP_REPLY)
            self.assertEqual(self.milter_session().mail('<"spam"@quoted.test>').smtp, REJECT_TEXT)
            self.assertEqual(self.milter_session().mail('<"sp\\am"@quoted.test>').smtp, REJECT_TEXT)
            self.assertNotIn('"x y"@quoted.test', self.keys())

    def test_smtputf8(self):
        """SMTPUTF8 addresses are keys as they come, ASCII letters lowercased, on both front ends."""
        with self.scenario():
            self.assertEqual(self.trap_hit("jörg@bücher.test", "192.0.2.36"), TRAP_REPLY)
            self.assertIn("jörg@bücher.test", self.keys())
            self.assertEqual(self.sender_check("JöRG@BüCHER.TEST", "203.0.113.36"), REJECT_TEXT)
            self.assertEqual(self.milter_session().mail("<jörg@bücher.test>", "SMTPUTF8").smtp, REJECT_TEXT)
            self.assertEqual(self.sender_check("jörg@bücher.test.example", "203.0.113.36"), "DUNNO")

    def test_thousand_character_addresses(self):
        """A 1,000-character sender or recipient is over the 511 bytes kept: not used, one line each,
        DUNNO for the sender; a trap hit with one still blocklists the client, never a cut address."""
        long_sender = "a" * 985 + "@long.test"
        long_rcpt = "t" * 985 + "@example.com"
        with self.scenario() as mark:
            self.assertEqual(self.sender_check(long_sender, "203.0.113.37", queue_id="LONG1"), "DUNNO")
            self.assertEqual(self.trap_hit(long_sender, "192.0.2.37", queue_id="LONG2"), TRAP_REPLY)
            self.assertEqual(self.client("trap").check(sender="x@y.test", recipient=long_rcpt,
                                                       client_address="192.0.2.38", queue_id="LONG3"), "DUNNO")
            self.assertEqual(self.sender_check("x@y.test", "192.0.2.37"), REJECT_TEXT)
            self.assertEqual(self.sender_check("x@y.test", "192.0.2.38"), "DUNNO")
            self.assertFalse([k for k in self.keys() if k.startswith("aaaa") or k.startswith("tttt")])
            self.assert_logged_once_each(mark, 3, r"LONG\d: request from .* (sender|recipient) longer than 511 "
                                                  r"bytes, not used")
            # over the milter: judged as it came (invalid), never cut into another address
            m = self.milter_session("192.0.2.39")
            self.assertEqual(m.mail(f"<{long_sender}>").verdict, "continue")
            self.assertEqual(m.rcpt(f"<{TRAP}>").verdict, "continue")
            self.assertEqual(m.eom().action, "discard")
            self.assertEqual(self.sender_check("x@y.test", "192.0.2.39"), REJECT_TEXT)
            self.assertFalse([k for k in self.keys() if k.startswith("aaaa")])

    def test_ipv6_clients_and_address_literals(self):
        """An IPv4-mapped IPv6 client is its IPv4 key; an IPv6 client its /64 (on the milter too);
        address literals as sender domains are keys like others; a trap domain is no literal."""
        with self.scenario():
            self.assertEqual(self.trap_hit("v6@bad.test", "::ffff:192.0.2.40"), TRAP_REPLY)
            self.assertEqual(self.sender_check("innocent@x.test", "192.0.2.40"), REJECT_TEXT)
            self.assertIn("192.0.2.40", self.keys())
            m = self.milter_session("2001:db8:40:1::7")
            self.assertEqual(m.mail("<v6b@bad.test>").verdict, "continue")
            self.assertEqual(m.rcpt(f"<{TRAP}>").verdict, "continue")
            self.assertEqual(m.eom().action, "discard")
            self.assertEqual(self.sender_check("innocent@x.test", "2001:db8:40:1::99"), REJECT_TEXT)
            self.assertEqual(self.sender_check("innocent@x.test", "2001:db8:40:2::99"), "DUNNO")
            for literal in ("lit@[192.0.2.41]", "lit@[IPv6:2001:db8::41]"):
                self.assertEqual(self.trap_hit(literal, "192.0.2.42"), TRAP_REPLY, literal)
                self.assertEqual(self.sender_check(literal, "203.0.113.42"), REJECT_TEXT, literal)
            self.assertEqual(self.trap_hit("lit@[192.0.2.43]", "192.0.2.44", recipient="trap@[192.0.2.45]"),
                             "DUNNO")


@unittest.skipUnless(NOFILE_REAL, NOFILE_SKIP)
class TestConnectionFlood(HostileCase):
    """2,000 idle connections against policy.max_connections 1000, with the daemon started under a soft
    open files limit of 1024 (systemd's default): it raises that to the hard limit, and at the
    connection limit it closes the least recently active connection for each new one, logged once
    for the burst. The companion (the Postfix of this test) is served all along."""

    CONFIG = {"policy": {"idle_timeout": "330s"}}
    MILTER = False
    FLOOD = 2000

    @classmethod
    def setUpClass(cls):
        raise_own_open_files(cls.FLOOD + 500)
        super().setUpClass()

    @classmethod
    def start_daemon(cls):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # what the daemon inherits
        try:
            cls.d.start()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    def test_two_thousand_idle_connections(self):
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        self.assertEqual(soft_nofile_of(self.pid), hard, "the soft open files limit was not raised")
        self.assertRegex(self.d.log(), r"open files limit raised from 1024 to \d+")
        with self.scenario(rss_growth_mb=64) as mark:
            t_flood = time.monotonic()
            idle = []
            for i in range(self.FLOOD):
                try:
                    idle.append(sh.connect(self.d.policy_address("sender" if i % 2 else "trap"), timeout=10))
                except OSError as e:
                    self.fail(f"connection {i}: {e}")
            time.sleep(0.5)
            # a new Postfix connection now, in the middle of the flood: served at once
            t0 = time.monotonic()
            with sh.PolicyClient(self.d.policy_address("sender"), timeout=5 * SCALE) as c:
                self.assertEqual(c.check(sender=KNOWN_BAD, client_address="203.0.113.50"), REJECT_TEXT)
            self.assertLess(time.monotonic() - t0, 5 * SCALE)
            self.assertLessEqual(open_files(self.pid), 1000 + 64 + 64)
            lines = self.d.count_log(r"closing the least recently active ones", since=mark)
            self.assertGreaterEqual(lines, 1)
            self.assertLessEqual(lines, 1 + (time.monotonic() - t_flood) // 10, "one line for the burst")
            evicted = closed_sockets(idle, self.FLOOD - 1000)
            print(f"  [{evicted} of the {self.FLOOD} idle connections were closed to make room; daemon has "
                  f"{open_files(self.pid)} descriptors open]", file=sys.stderr)
            self.assertGreaterEqual(evicted, self.FLOOD - 1000, "the oldest were closed to make room")
            for s in idle:
                s.close()
        print(f"  [companion reopened its connections {self.companion.reconnects} times]", file=sys.stderr)


@unittest.skipUnless(NOFILE_REAL, NOFILE_SKIP)
class TestLowOpenFilesLimit(HostileCase):
    """A hard open files limit (700) below what policy.max_connections (1000) needs: the daemon says so
    at start and caps its connections under the limit, so a flood of idle connections makes room by
    closing the least recently active ones instead of running out of descriptors (which would stall
    accept for everyone)."""

    MILTER = False
    CONFIG = {"policy": {"idle_timeout": "330s"}}
    LIMIT = 700

    @classmethod
    def setUpClass(cls):
        raise_own_open_files(cls.LIMIT + 500)
        super().setUpClass()

    @classmethod
    def start_daemon(cls):
        # The daemon runs under a hard limit of LIMIT: a script that sets it and becomes the daemon
        # (exec keeps the PID the harness watches). This process keeps its own limits.
        wrapper = os.path.join(cls.d.dir, "low-nofile")
        with open(wrapper, "w") as f:
            f.write(f"#!/bin/sh\nulimit -S -n {cls.LIMIT} && ulimit -H -n {cls.LIMIT} || exit 1\n"
                    f"exec '{sh.binary()}' \"$@\"\n")
        os.chmod(wrapper, 0o755)
        real = os.environ["SPAMTRAPD"]
        os.environ["SPAMTRAPD"] = wrapper
        try:
            cls.d.start()
        finally:
            os.environ["SPAMTRAPD"] = real

    def test_capped_below_the_limit(self):
        m = re.search(r"open files limit \(700\) leaves room for (\d+) connections, fewer than "
                      r"policy.max_connections \(1000\)", self.d.log())
        self.assertTrue(m, self.d.log_tail())
        cap = int(m.group(1))
        with self.scenario():
            idle = [sh.connect(self.d.policy_address("sender")) for _ in range(self.LIMIT)]
            time.sleep(0.5)
            self.assertLess(open_files(self.pid), self.LIMIT - 32)
            self.assertEqual(self.client().check(sender=KNOWN_BAD, client_address="203.0.113.51"), REJECT_TEXT)
            self.assertGreaterEqual(closed_sockets(idle, self.LIMIT - cap), self.LIMIT - cap)
            for s in idle:
                s.close()


class TestReloadLowersLimit(HostileCase):
    """A reload that lowers policy.max_connections far below the connections open: a new connection
    right after it is served (the idle ones make room at once), not refused until the next sweep."""

    MILTER = False
    CONFIG = {"policy": {"max_connections": 200, "threads": 2, "idle_timeout": "330s"}}

    def ask_as_postfix(self):
        """One request as Postfix asks it: a second connection when the first is closed unanswered
        (Postfix waits smtpd_policy_service_retry_delay, 1s or more, before it: here much less, so
        that the sweep of the next tick cannot be what made room)."""
        for attempt in (1, 2):
            try:
                with sh.PolicyClient(self.d.policy_address("sender"), timeout=5 * SCALE) as c:
                    return c.check(sender=KNOWN_BAD, client_address="203.0.113.52")
            except (sh.ConnectionClosed, OSError):
                if attempt == 2:
                    raise
                time.sleep(0.1 * SCALE)  # the other workers, woken, close their idle connections

    def test_new_connection_served_after_lowering(self):
        with self.scenario():
            for trial in range(3):
                self.assertTrue(self.d.reload({"policy": {"max_connections": 200}}))
                time.sleep(1.2)  # a sweep with the higher limit
                idle = [sh.connect(self.d.policy_address("sender")) for _ in range(150)]
                time.sleep(0.3)
                self.assertTrue(self.d.reload({"policy": {"max_connections": 20}}))
                try:
                    self.assertEqual(self.ask_as_postfix(), REJECT_TEXT, f"trial {trial}")
                except sh.ConnectionClosed as e:
                    self.fail(f"trial {trial}: refused twice right after the reload: {e}")
                for s in idle:
                    s.close()

HZ = "hostiletest.example.net"  # not a name unbound treats as special


class TestDnsChecksHostileDns(HostileCase):
    """The dnsbl and spf checks (issue 15) against a sender who writes both the SMTP fields and the
    DNS answers: SPF records that loop, exceed the lookup limits, are huge or doubled, expand
    attacker-written macros, or never answer; senders whose domain is no domain; a DNSBL that
    answers its "query refused" code, addresses outside 127/8 or twenty records. None of it may
    refuse mail (no 4xx or 5xx) or stall the daemon; the two control cases (a real SPF fail, a real
    listing) are refused, so the checks did run. A real DNS server (tests/lib/dns_server.py) serves
    the zone; the daemon forwards to it."""

    MILTER = False
    SERIAL = False  # single requests; the DNS timeouts (2 s) are far from the answers' times
    SPF_FAIL = "fail." + HZ
    LISTED, REFUSED_CODE, OUTSIDE, MANY = "203.0.113.77", "203.0.113.78", "203.0.113.79", "203.0.113.80"
    CONFIG = {"dnsbl": {"mode": "enforce", "sites": ["bl." + HZ + "=127.0.0.2"], "timeout": "2s"},
              "spf": {"mode": "enforce", "reject_fail": True, "header": False, "timeout": "2s"}}

    @staticmethod
    def reversed_name(ip):
        return ".".join(reversed(ip.split("."))) + ".bl." + HZ

    @classmethod
    def records(cls):
        r = {
            "loop." + HZ: [["TXT", "v=spf1 include:loop." + HZ + " -all"]],
            "many." + HZ: [["TXT", "v=spf1 " + " ".join(f"a:a{i}.{HZ}" for i in range(12)) + " -all"]],
            "void." + HZ: [["TXT", f"v=spf1 a:n1.{HZ} a:n2.{HZ} a:n3.{HZ} -all"]],
            "two." + HZ: [["TXT", "v=spf1 -all"], ["TXT", "v=spf1 +all"]],
            "macro." + HZ: [["TXT", "v=spf1 exists:%{l}.%{i}.%{h}.x." + HZ + " ?all"]],
            "big." + HZ: [["TXT", "v=spf1 " + " ".join(f"ip4:198.51.100.{i}" for i in range(1, 200)) + " ?all"]],
            cls.SPF_FAIL: [["TXT", "v=spf1 ip4:192.0.2.10 -all"]],
            cls.reversed_name(cls.LISTED): [["A", "127.0.0.2"]],
            cls.reversed_name(cls.REFUSED_CODE): [["A", "127.255.255.254"]],
            cls.reversed_name(cls.OUTSIDE): [["A", "8.8.8.8"]],
            cls.reversed_name(cls.MANY): [["A", f"10.0.0.{i}"] for i in range(1, 21)],
        }
        for i in range(12):
            r[f"a{i}.{HZ}"] = [["A", "192.0.2.99"]]
        return r

    @classmethod
    def start_daemon(cls):
        cls.dns_dir = tempfile.mkdtemp(prefix="spamtrapd-hostile-dns-")
        cls.dns = dns_server.DnsServer(cls.dns_dir, cls.records(), {
            "dead." + HZ: {"drop": True}, "servfail." + HZ: {"rcode": "SERVFAIL"}})
        cls.dns.start()
        cls.d.config["dns"] = {"forwarders": [cls.dns.forwarder], "timeout": "2s"}
        sh.write_config(cls.d.config_path, cls.d.config)
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.dns.stop()
            shutil.rmtree(cls.dns_dir, ignore_errors=True)

    def ask(self, client, sender, instance):
        with sh.PolicyClient(self.d.policy_address("trap"), timeout=10 * SCALE) as c:
            return c.check(sender=sender, recipient="user@example.com", client_address=client,
                           helo_name="mx." + HZ, instance=instance)

    def test_attacker_written_spf_and_senders_refuse_nothing(self):
        local_parts = ["a%{l}b", "x\"y", "-rf", "a\\b", "%%", "%{d1r}", "l" * 64, "dot.", ".dot"]
        domains = ["loop", "many", "void", "two", "macro", "big", "servfail"]
        senders = [f"{lp}@{dom}.{HZ}" for lp in local_parts for dom in domains] + ["a%{l}@dead." + HZ]
        senders += ["x@" + "a" * 64 + "." + HZ, "x@" + ("b" * 60 + ".") * 5 + HZ, "x@[192.0.2.1]",
                    "x@." + HZ, "x@" + HZ + ".", "x@", "x@-bad-." + HZ]
        with self.scenario():
            for n, sender in enumerate(senders):
                answer = self.ask("198.51.100.60", sender, f"h{n}")
                self.assertEqual(answer, "DUNNO", f"sender {sender!r}")
            # the controls: the same checks refuse a real SPF fail and a real listing
            self.assertTrue(self.ask("198.51.100.61", "a@" + self.SPF_FAIL, "c1").startswith("550 5.7.23"))
            self.assertTrue(self.ask("198.51.100.61", '"da\\"ve"@' + self.SPF_FAIL, "c2").startswith("550 5.7.23"))
            self.assertEqual(self.ask(self.LISTED, "a@good.test", "c3"),
                             f"554 5.7.1 Service unavailable; client [{self.LISTED}] blocked using bl.{HZ}")

    def test_dnsbl_answers_that_are_no_listing(self):
        with self.scenario():
            for n, client in enumerate((self.REFUSED_CODE, self.OUTSIDE, self.MANY)):
                self.assertEqual(self.ask(client, "a@good.test", f"b{n}"), "DUNNO", client)


def load_tests(loader, tests, pattern):
    """SPAMTRAPD_HOSTILE_PART=serial or parallel: only the classes of that ctest entry."""
    part = os.environ.get("SPAMTRAPD_HOSTILE_PART")
    if part not in ("serial", "parallel"):
        return tests
    chosen = unittest.TestSuite()
    for case in (t for suite in tests for t in suite):
        if getattr(type(case), "SERIAL", True) == (part == "serial"):
            chosen.addTest(case)
    return chosen


if __name__ == "__main__":
    try:
        sh.binary()
    except sh.HarnessError as e:
        print(e, file=sys.stderr)
        sys.exit(1)
    unittest.main(verbosity=2)
