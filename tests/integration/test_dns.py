"""Integration tests of the DNS path (issue 15): the resolver (src/dns/)
under both front ends, with dns.forwarders pointing at a scriptable
authoritative server (tests/lib/dns_server.py) and the dnsbl check on.

What is proved, on ordering and never on timings:
- a request waiting for a held DNS answer does not stall its worker: with
  every policy worker holding one such request, a new connection is still
  answered before them (a worker that blocked on DNS could not);
- pipelined requests behind a waiting one are answered after it, in order;
- a client that closes while its request waits leaves nothing behind (the
  queries are cancelled; the daemon serves on and exits clean under ASan);
- policy.idle_timeout never closes a connection whose request waits;
- SERVFAIL, REFUSED and a server that never answers are never a refusal;
- with the DNS checks off, no query is ever sent;
- the milter waits for the same answers and refuses a listed client;
- a reload that changes dns.forwarders takes effect on both front ends;
- SPF (the spf check) gets its TXT, MX and A answers through the adapter.
"""

import os
import shutil
import socket
import tempfile
import threading
import unittest

import dns_server
import spamtrapd_harness as sh
from milter_client import MilterClient

ZONE = "bl.dnstest.example.net"
REJECT = "554 5.7.1 Service unavailable; client [%s] blocked using " + ZONE
TRAP = "trap@example.com"


def rname(client):
    """The DNSBL name of an IPv4 client."""
    return ".".join(reversed(client.split("."))) + "." + ZONE


LISTED = ["192.0.2.%d" % i for i in range(10, 20)]
HELD = ["192.0.2.%d" % i for i in range(70, 90)]  # listed, answered only when released
SERVFAIL, REFUSED, DROPPED = "192.0.2.31", "192.0.2.32", "192.0.2.33"

RECORDS = {rname(c): [["A", "127.0.0.2"], ["TXT", "listed"]] for c in LISTED + HELD}
BEHAVIOURS = {rname(c): {"hold": True} for c in HELD}
BEHAVIOURS.update({rname(SERVFAIL): {"rcode": "SERVFAIL"}, rname(REFUSED): {"rcode": "REFUSED"},
                   rname(DROPPED): {"drop": True}})


# SPF (the spf check, spf.reject_fail): a record in two character-strings, with mx.
SPF_DOMAIN = "spf.dnstest.example.net"
RECORDS.update({
    SPF_DOMAIN: [["TXT", "v=spf1 ip4:192.0.2.0/24 ", "mx -all"], ["MX", 10, "mx." + SPF_DOMAIN]],
    "mx." + SPF_DOMAIN: [["A", "198.51.100.5"]],
    "soft.dnstest.example.net": [["TXT", "v=spf1 ~all"]],
    # ptr: the client's name, and that name's address back. Not in 192.0.2.0/24: libunbound
    # answers the reverse zones of private and documentation networks itself (RFC 6303).
    "ptr.dnstest.example.net": [["TXT", "v=spf1 ptr -all"]],
    "60.3.0.192.in-addr.arpa": [["PTR", "host.ptr.dnstest.example.net"]],
    "host.ptr.dnstest.example.net": [["A", "192.0.3.60"]],
    # AAAA, a CNAME to the record, an include
    "v6.dnstest.example.net": [["TXT", "v=spf1 a:host.v6.dnstest.example.net -all"]],
    "host.v6.dnstest.example.net": [["AAAA", "2001:db8::5"]],
    "alias.dnstest.example.net": [["CNAME", SPF_DOMAIN]],
    "inc.dnstest.example.net": [["TXT", "v=spf1 include:" + SPF_DOMAIN + " -all"]],
})
BEHAVIOURS["broken.dnstest.example.net"] = {"rcode": "SERVFAIL"}


def config(server, dns=None, dnsbl=None, spf=None):
    out = {
        "traps": {"addresses": [TRAP]},
        "policy": {"threads": 1},
        "dns": sh.merge({"forwarders": [server.forwarder], "timeout": "30s"}, dns or {}),
    }
    if spf is None:
        out["dnsbl"] = sh.merge({"mode": "enforce", "sites": [ZONE + "=127.0.0.[2..11]"], "timeout": "30s"},
                                dnsbl or {})
    else:
        out["spf"] = sh.merge({"mode": "enforce", "reject_fail": True, "timeout": "30s"}, spf)
    return out


class DnsCase(unittest.TestCase):
    @classmethod
    def start(cls, dns=None, dnsbl=None, milter=False, spf=None, policy=None):
        cls.dir = tempfile.mkdtemp(prefix="spamtrapd-dns.")
        cls.server = dns_server.DnsServer(cls.dir, RECORDS, BEHAVIOURS).start()
        cls.d = sh.Spamtrapd(sh.merge(config(cls.server, dns, dnsbl, spf), {"policy": policy or {}}),
                             roles=("trap",), milter=milter)
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()
        cls.d.cleanup()
        cls.server.stop()
        if os.environ.get("SPAMTRAPD_KEEP") != "1":
            shutil.rmtree(cls.dir, ignore_errors=True)

    def client(self):
        c = sh.PolicyClient(self.d.policy_address("trap"))
        self.addCleanup(c.close)
        return c

    def ask(self, client_address, c=None):
        return (c or self.client()).check(client_address=client_address, recipient="user@example.org")

    def assert_no_reply_yet(self, c):
        """Nothing has arrived on c (an ordering check: what was answered before it, was)."""
        c.sock.setblocking(False)
        try:
            data = c.sock.recv(65536)
        except BlockingIOError:
            data = None
        finally:
            c.sock.setblocking(True)
            c.sock.settimeout(10.0 * sh.TIMEOUT_SCALE)
        self.assertIsNone(data, "a reply arrived before its DNS answer was released")


class TestPolicyParking(DnsCase):
    """One daemon, policy.threads 1 (two workers, the least there are), timeouts far away."""

    @classmethod
    def setUpClass(cls):
        cls.start()

    def test_listed_and_not_listed(self):
        self.assertEqual(self.ask(LISTED[0]), REJECT % LISTED[0])
        self.assertEqual(self.ask("192.0.2.99"), "DUNNO")  # NXDOMAIN
        self.assertGreaterEqual(self.server.count(rname(LISTED[0]), "A"), 1)

    def test_waiting_request_does_not_stall_its_worker(self):
        # One waiting request per worker: a worker that blocked on DNS would now serve nobody.
        waiting = []
        for client in HELD[0:2]:
            c = self.client()
            c.send_raw(sh.PolicyClient.encode(client_address=client, recipient="user@example.org"))
            self.server.wait_for_query(rname(client))
            waiting.append(c)
        # Answered while both wait: another listed client, a client that is not listed.
        self.assertEqual(self.ask(LISTED[1]), REJECT % LISTED[1])
        self.assertEqual(self.ask("192.0.2.98"), "DUNNO")
        for c in waiting:
            self.assert_no_reply_yet(c)
        for client in HELD[0:2]:
            self.server.release(rname(client))
        for c, client in zip(waiting, HELD[0:2]):
            self.assertEqual(c.read_action(), REJECT % client)

    def test_pipelined_requests_wait_their_turn(self):
        c = self.client()
        c.send_raw(sh.PolicyClient.encode(client_address=HELD[2], recipient="user@example.org") +
                   sh.PolicyClient.encode(client_address="192.0.2.97", recipient="user@example.org") +
                   sh.PolicyClient.encode(client_address=LISTED[2], recipient="user@example.org"))
        self.server.wait_for_query(rname(HELD[2]))
        self.assertEqual(self.ask(LISTED[3]), REJECT % LISTED[3])
        self.assert_no_reply_yet(c)
        self.assertEqual(self.server.count(rname("192.0.2.97")), 0)  # not read yet
        self.server.release(rname(HELD[2]))
        self.assertEqual([c.read_action() for _ in range(3)],
                         [REJECT % HELD[2], "DUNNO", REJECT % LISTED[2]])

    def test_pipelined_cache_hits_answered_at_once(self):
        # The first asks the server; the next two, read once it is answered, are hits of the
        # worker's answer cache: they must not wait for the deadline (30 s) nor expire.
        c = self.client()
        c.send_raw(b"".join(sh.PolicyClient.encode(client_address=LISTED[6], recipient="user@example.org")
                            for _ in range(3)))
        self.assertEqual([c.read_action() for _ in range(3)], [REJECT % LISTED[6]] * 3)
        self.assertEqual(self.server.count(rname(LISTED[6])), 1)

    def test_client_gone_while_waiting(self):
        mark = self.d.log_mark()
        c = sh.PolicyClient(self.d.policy_address("trap"))
        c.send_raw(sh.PolicyClient.encode(client_address=HELD[3], recipient="user@example.org"))
        self.server.wait_for_query(rname(HELD[3]))
        c.sock.shutdown(socket.SHUT_RDWR)
        c.close()
        self.d.wait_for_log(r"closed while its request waited for DNS", since=mark)
        self.server.release(rname(HELD[3]))
        # The worker is fine and serves on; the daemon's exit (tearDownClass) is checked by ASan.
        self.assertEqual(self.ask(LISTED[4]), REJECT % LISTED[4])
        self.assertEqual(self.ask(HELD[3]), REJECT % HELD[3])  # the answer reached the cache


class TestIdleSweep(DnsCase):
    """policy.idle_timeout shorter than the wait for DNS: the sweep spares a waiting request."""

    @classmethod
    def setUpClass(cls):
        cls.start(policy={"idle_timeout": "1s"})

    def test_waiting_request_outlives_idle_timeout(self):
        c = sh.PolicyClient(self.d.policy_address("trap"))
        self.addCleanup(c.close)
        c.send_raw(sh.PolicyClient.encode(client_address=HELD[4], recipient="user@example.org"))
        self.server.wait_for_query(rname(HELD[4]))
        # Idle connections opened after it: the sweep that closes them has passed the older waiting one.
        idle = [sh.PolicyClient(self.d.policy_address("trap")) for _ in range(6)]
        for i in idle:
            self.addCleanup(i.close)
            self.assertTrue(i.is_closed(timeout=30), "an idle connection outlived policy.idle_timeout")
        self.server.release(rname(HELD[4]))
        self.assertEqual(c.read_action(), REJECT % HELD[4])


class TestFailuresNeverRefuse(DnsCase):
    """A short deadline: SERVFAIL, REFUSED and silence are never a listing."""

    @classmethod
    def setUpClass(cls):
        cls.start(dns={"timeout": "2s"}, dnsbl={"timeout": "2s"})

    def test_servfail_refused_and_silence(self):
        for client in (SERVFAIL, REFUSED):
            self.assertEqual(self.ask(client), "DUNNO", client)
        mark = self.d.log_mark()
        self.assertEqual(self.ask(DROPPED), "DUNNO")
        self.d.wait_for_log(r"DNS answers still missing at the deadline", since=mark)
        # The worker still answers what the server does answer.
        self.assertEqual(self.ask(LISTED[5]), REJECT % LISTED[5])

    def test_tempfail_on_error_is_a_4xx(self):
        d = sh.Spamtrapd(config(self.server, {"timeout": "2s"}, {"timeout": "2s", "on_error": "tempfail"}),
                         roles=("trap",))
        self.addCleanup(d.cleanup)
        d.start()
        with sh.PolicyClient(d.policy_address("trap")) as c:
            action = c.check(client_address=SERVFAIL, recipient="user@example.org")
        self.assertTrue(action.startswith("451 "), action)
        d.stop()


class TestDnsOff(DnsCase):
    @classmethod
    def setUpClass(cls):
        cls.start(dnsbl={"mode": "off"})

    def test_no_query_when_no_check_wants_dns(self):
        self.assertEqual(self.ask(LISTED[6]), "DUNNO")
        self.assertEqual(self.ask("192.0.2.96"), "DUNNO")
        self.assertEqual(self.server.queries(), [])


class TestMilter(DnsCase):
    @classmethod
    def setUpClass(cls):
        cls.start(dns={"timeout": "2s"}, dnsbl={"timeout": "2s"}, milter=True)

    def rcpt(self, client):
        m = MilterClient.open(self.d.config["milter"]["listen"])
        self.addCleanup(m.close)
        m.negotiate()
        m.connect("mx.sender.example", client)
        m.helo("mx.sender.example")
        self.assertEqual(m.mail("<someone@sender.example>", macros={"i": "Q1"}).verdict, "continue")
        r = m.rcpt("<user@example.org>", macros={"i": "Q1"})
        return "continue" if r.verdict == "continue" else r.smtp

    def test_listed_refused_failures_continue(self):
        self.assertEqual(self.rcpt(LISTED[7]), REJECT % LISTED[7])
        self.assertEqual(self.rcpt("192.0.2.95"), "continue")
        for client in (SERVFAIL, DROPPED):
            self.assertEqual(self.rcpt(client), "continue", client)


class TestMilterConcurrent(DnsCase):
    """Milter sessions share one resolver: those waiting take turns polling it and wake each other."""

    @classmethod
    def setUpClass(cls):
        cls.start(milter=True)

    def session(self, client):
        m = MilterClient.open(self.d.config["milter"]["listen"], timeout=60)
        self.addCleanup(m.close)
        m.negotiate()
        m.connect("mx.sender.example", client)
        m.helo("mx.sender.example")
        self.assertEqual(m.mail("<someone@sender.example>", macros={"i": "Q3"}).verdict, "continue")
        return m

    def test_waiting_sessions_do_not_hold_the_others(self):
        held = HELD[5:8]
        results = {}

        def rcpt(m, client):
            r = m.rcpt("<user@example.org>", macros={"i": "Q3"})
            results[client] = "continue" if r.verdict == "continue" else r.smtp

        threads = []
        for client in held:
            m = self.session(client)
            t = threading.Thread(target=rcpt, args=(m, client))
            t.start()
            threads.append(t)
            self.server.wait_for_query(rname(client))
        # Answered while three sessions wait on the same resolver (one of them polling it).
        m = self.session(LISTED[0])
        rcpt(m, LISTED[0])
        self.assertEqual(results, {LISTED[0]: REJECT % LISTED[0]})
        for client in held:
            self.server.release(rname(client))
        for t in threads:
            t.join(60)
        self.assertEqual(results, {c: REJECT % c for c in held + [LISTED[0]]})


class TestReload(DnsCase):
    """A reload that changes dns.forwarders: both front ends ask the new server from then on."""

    @classmethod
    def setUpClass(cls):
        cls.start(milter=True)
        cls.other = dns_server.DnsServer(os.path.join(cls.dir, "other"), {}, {}).start()

    @classmethod
    def tearDownClass(cls):
        cls.other.stop()
        super().tearDownClass()

    def rcpt(self, client):
        m = MilterClient.open(self.d.config["milter"]["listen"])
        self.addCleanup(m.close)
        m.negotiate()
        m.connect("mx.sender.example", client)
        m.helo("mx.sender.example")
        m.mail("<someone@sender.example>", macros={"i": "Q2"})
        r = m.rcpt("<user@example.org>", macros={"i": "Q2"})
        return "continue" if r.verdict == "continue" else r.smtp

    def test_new_forwarders_take_over(self):
        self.assertEqual(self.ask(LISTED[8]), REJECT % LISTED[8])
        self.assertEqual(self.rcpt(LISTED[8]), REJECT % LISTED[8])
        # Requests waiting across the reload: they finish on the resolver they started on.
        waiting = []
        for client in HELD[10:14]:
            c = self.client()
            c.send_raw(sh.PolicyClient.encode(client_address=client, recipient="user@example.org"))
            self.server.wait_for_query(rname(client))
            waiting.append(c)
        milter_result = {}
        m = MilterClient.open(self.d.config["milter"]["listen"], timeout=60)
        self.addCleanup(m.close)
        m.negotiate()
        m.connect("mx.sender.example", HELD[14])
        m.helo("mx.sender.example")
        m.mail("<someone@sender.example>", macros={"i": "Q4"})
        t = threading.Thread(target=lambda: milter_result.update(
            r=m.rcpt("<user@example.org>", macros={"i": "Q4"}).smtp))
        t.start()
        self.server.wait_for_query(rname(HELD[14]))
        self.assertTrue(self.d.reload({"dns": {"forwarders": [self.other.forwarder]}}))
        # The other server lists nobody: its NXDOMAIN answers, and the first server is not asked.
        for _ in range(4):  # each new connection: whichever worker takes it
            self.assertEqual(self.ask(LISTED[9]), "DUNNO")
        self.assertEqual(self.rcpt(LISTED[9]), "continue")
        self.assertGreaterEqual(self.other.count(rname(LISTED[9]), "A"), 1)
        self.assertEqual(self.server.count(rname(LISTED[9])), 0)
        for client in HELD[10:15]:
            self.server.release(rname(client))
        for c, client in zip(waiting, HELD[10:14]):
            self.assertEqual(c.read_action(), REJECT % client)
        t.join(60)
        self.assertEqual(milter_result, {"r": REJECT % HELD[14]})


class TestSpf(DnsCase):
    """check_host() through the resolver: TXT joined, mx and its A, failures never a refusal."""

    @classmethod
    def setUpClass(cls):
        cls.start(spf={})

    def spf(self, sender, client):
        return self.client().check(sender=sender, client_address=client, recipient="user@example.org",
                                   helo_name="mail.sender.example")

    def test_pass_fail_and_errors(self):
        sender = "someone@" + SPF_DOMAIN
        self.assertRegex(self.spf(sender, "192.0.2.50"), r"^PREPEND Received-SPF: pass ")
        self.assertRegex(self.spf(sender, "198.51.100.5"), r"^PREPEND Received-SPF: pass ")  # its mx
        self.assertRegex(self.spf(sender, "203.0.113.9"), r"^550 5\.7\.23 ")
        self.assertGreaterEqual(self.server.count(SPF_DOMAIN, "TXT"), 1)
        self.assertGreaterEqual(self.server.count("mx." + SPF_DOMAIN, "A"), 1)
        # softfail, a SERVFAIL (temperror) and a domain without SPF are never refused
        self.assertRegex(self.spf("a@soft.dnstest.example.net", "203.0.113.9"), r"^PREPEND Received-SPF: softfail ")
        self.assertRegex(self.spf("a@broken.dnstest.example.net", "203.0.113.9"),
                         r"^(DUNNO|PREPEND Received-SPF: temperror .*)$")
        self.assertRegex(self.spf("a@nothing.dnstest.example.net", "203.0.113.9"),
                         r"^(DUNNO|PREPEND Received-SPF: none .*)$")

    def test_every_record_type(self):
        """PTR and its A, AAAA, a CNAME'd record, an include: in spf.h's form through the adapter."""
        cases = [("a@ptr.dnstest.example.net", "192.0.3.60", "pass"),
                 ("a@ptr.dnstest.example.net", "192.0.3.61", "fail"),
                 ("a@v6.dnstest.example.net", "2001:db8::5", "pass"),
                 ("a@v6.dnstest.example.net", "2001:db8::6", "fail"),
                 ("a@alias.dnstest.example.net", "192.0.2.50", "pass"),
                 ("a@inc.dnstest.example.net", "198.51.100.5", "pass"),
                 ("a@inc.dnstest.example.net", "203.0.113.9", "fail")]
        for sender, client, result in cases:
            action = self.spf(sender, client)
            if result == "fail":
                self.assertRegex(action, r"^550 5\.7\.23 ", (sender, client))
            else:
                self.assertRegex(action, r"^PREPEND Received-SPF: %s " % result, (sender, client))
        self.assertGreaterEqual(self.server.count("60.3.0.192.in-addr.arpa", "PTR"), 1)
        self.assertGreaterEqual(self.server.count("host.v6.dnstest.example.net", "AAAA"), 1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
