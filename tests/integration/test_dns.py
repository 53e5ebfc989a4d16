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
- SERVFAIL, REFUSED and a server that never answers are never a refusal;
- with the DNS checks off, no query is ever sent;
- the milter waits for the same answers and refuses a listed client.
"""

import os
import socket
import tempfile
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
HELD = ["192.0.2.%d" % i for i in range(70, 80)]  # listed, answered only when released
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


def have_check(name):
    """The dnsbl and spf checks (issue 15) are what plans DNS; each lands on its own branch."""
    src = os.environ.get("SPAMTRAPD_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
    return os.path.exists(os.path.join(src, "src", "core", "checks", name + ".c"))


class DnsCase(unittest.TestCase):
    @classmethod
    def start(cls, dns=None, dnsbl=None, milter=False, spf=None):
        check = "spf" if spf is not None else "dnsbl"
        if not have_check(check):
            raise unittest.SkipTest("no %s check in this tree yet: nothing plans DNS" % check)
        cls.dir = tempfile.mkdtemp(prefix="spamtrapd-dns.")
        cls.server = dns_server.DnsServer(cls.dir, RECORDS, BEHAVIOURS).start()
        cls.d = sh.Spamtrapd(config(cls.server, dns, dnsbl, spf), roles=("trap",), milter=milter)
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()
        cls.d.cleanup()
        cls.server.stop()

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


if __name__ == "__main__":
    unittest.main(verbosity=2)
