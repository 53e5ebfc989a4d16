#!/usr/bin/env python3
"""End to end: SPF keeps a forged sender off the blocklist (issue 15), through
a real Postfix 3.7, on both front ends.

tests/lib/dns_server.py serves good.spftest.example.net, whose SPF record
authorises 192.0.2.10 only; spamtrapd forwards its queries there
(dns.forwarders) and runs with blocklist.sender_requires "spf-pass".
Postfix's XCLIENT ADDR= poses as the client. A spammer who knows a trap
writes a real user's address in MAIL FROM:

- from a client the domain does not authorise, the trap hit blocklists
  that client only: the real user's mail from its own server is still
  delivered;
- the same sender from its SPF-authorised address is the real sender: the
  hit blocklists the address, refused afterwards from anywhere;
- a delivered message carries one Received-SPF header (milter: added at
  end of message; policy: PREPEND).

Each class has its own Postfix (postfix_harness) and spamtrapd on SQLite:
SpfMilterTest (smtpd_milters) and SpfPolicyTest (check_policy_service TRAP
first in smtpd_recipient_restrictions, before permit_mynetworks: the tests
connect from 127.0.0.1).

Run alone: see docs/testing.md. Needs root (exit 77 otherwise).
"""

import shutil
import socket
import tempfile
import time
import unittest

import dns_server
import postfix_harness as ph
import spamtrapd_harness as sh

SINK = "sink.test"
ZONE = "spftest.example.net"
GOOD = "good." + ZONE
# GOOD's record authorises 203.0.113.16/28, one server a test (a trap hit blocklists the client too);
# not 192.0.2.1, the address that tells an open record (core/dnsplan.h).
SPAMMER_SERVER, USER_SERVER = "203.0.113.20", "203.0.113.21"
TRAP = "trap@" + SINK
ALICE = "alice@" + SINK
MAILBOXES = [ALICE, TRAP]
RECORDS = {GOOD: [["TXT", "v=spf1 ip4:203.0.113.16/28 -all"]]}


def config(forwarder):
    return {
        "traps": {"addresses": [TRAP]},
        "blocklist": {"keys": ["sender", "client_address"], "sender_requires": "spf-pass"},
        "spf": {"mode": "enforce", "receiver": "mx.spftest.example.net", "reject_fail": True},
        "dns": {"forwarders": [forwarder], "timeout": "3s"},
    }


def wait_milter_port(daemon, timeout=sh.START_TIMEOUT):
    port = daemon.milter_port()
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if not daemon.running() or time.monotonic() > deadline:
                raise sh.HarnessError("milter not listening:\n" + daemon.log_tail())
            time.sleep(0.05)


class Scenarios:
    def listed(self, key):
        return self.daemon.ctl("lookup", key, check=False).returncode == 0

    def test_forged_sender_blocklists_only_the_client(self):
        victim = "victim-%s@%s" % (self.tag, GOOD)
        forger = "198.51.100.%d" % (60 + len(self.tag))
        self.pf.smtp(victim, [TRAP], client=forger)
        self.daemon.wait_for_log(r"trap=%s blocklisted=%s sender=unverified" % (TRAP, forger.replace(".", r"\.")))
        self.assertTrue(self.listed(forger))
        self.assertFalse(self.listed(victim))
        # the real user, from its own server: delivered
        r = self.pf.smtp(victim, [ALICE], client=USER_SERVER)
        self.assertTrue(r.accepted, r)
        msg = [m for m in self.pf.wait_delivered(ALICE, message_id=r.message_id)
               if m.get("Message-ID") == r.message_id][0]
        # with its Received-SPF header, once (milter: at end of message; policy: PREPEND)
        self.assertEqual(msg.get_all("Received-SPF"), [
            "pass (mx.spftest.example.net: domain of the sender designates %s as permitted sender) "
            "client-ip=%s; envelope-from=\"%s\"; helo=client.example.test; receiver=mx.spftest.example.net; "
            "identity=mailfrom" % (USER_SERVER, USER_SERVER, victim)])
        # the forger is refused from now on, whatever sender it writes
        r = self.pf.smtp("someone@%s" % SINK, [ALICE], client=forger)
        self.assertFalse(r.accepted, r)

    def test_authorised_sender_is_blocklisted_as_an_address(self):
        spammer = "spammer-%s@%s" % (self.tag, GOOD)
        self.pf.smtp(spammer, [TRAP], client=SPAMMER_SERVER)
        self.daemon.wait_for_log(r"trap=%s blocklisted=%s" % (TRAP, spammer.replace(".", r"\.")))
        self.assertTrue(self.listed(spammer))
        # refused from another client too: the address itself is listed
        r = self.pf.smtp(spammer, [ALICE], client="198.51.100.%d" % (20 + len(self.tag)))
        self.assertFalse(r.accepted, r)


    def test_quoted_local_part_fails_all_the_same(self):
        # <"da\"ve"@good> is an address the other checks find invalid (a"b@d once unquoted);
        # its domain's -all still refuses it from a server the domain does not name
        forger = "198.51.100.%d" % (40 + len(self.tag))
        r = self.pf.smtp('<"da\\"ve-%s"@%s>' % (self.tag, GOOD), [ALICE], client=forger)
        self.assertFalse(r.accepted, r)
        self.assertEqual(r.rcpt[ALICE].code, 550, r)
        self.assertIn("5.7.23", r.rcpt[ALICE].text)


class SpfCase(unittest.TestCase):
    pf = None
    daemon = None
    dns = None
    workdir = None

    @classmethod
    def start_dns(cls):
        cls.workdir = tempfile.mkdtemp(prefix="spamtrapd-e2e-spf-")
        cls.dns = dns_server.DnsServer(cls.workdir, RECORDS)
        cls.dns.start()

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.pf:
                cls.pf.cleanup()
        finally:
            try:
                if cls.daemon:
                    try:
                        cls.daemon.stop()  # raises on a non-zero exit (an ASan report, a crash)
                    finally:
                        cls.daemon.cleanup()
            finally:
                if cls.dns:
                    cls.dns.stop()
                if cls.workdir:
                    shutil.rmtree(cls.workdir, ignore_errors=True)


class SpfMilterTest(Scenarios, SpfCase):
    tag = "m"
    front = "milter"

    @classmethod
    def setUpClass(cls):
        ph.require_postfix()
        cls.start_dns()
        try:
            cls.daemon = sh.Spamtrapd(config(cls.dns.forwarder), roles=(), milter=True)
            cls.pf = ph.PostfixInstance(
                mailboxes=MAILBOXES,
                params={"smtpd_milters": "inet:127.0.0.1:%d" % cls.daemon.milter_port(),
                        "milter_default_action": "tempfail"})
            cls.daemon.start()
            wait_milter_port(cls.daemon)
            cls.pf.start()
        except BaseException:
            cls.tearDownClass()
            raise


class SpfPolicyTest(Scenarios, SpfCase):
    tag = "p"
    front = "policy"

    @classmethod
    def setUpClass(cls):
        ph.require_postfix()
        cls.start_dns()
        try:
            cls.daemon = sh.Spamtrapd(config(cls.dns.forwarder))
            trap = "check_policy_service inet:127.0.0.1:%d" % cls.daemon.policy_port("trap")
            sender = "check_policy_service inet:127.0.0.1:%d" % cls.daemon.policy_port("sender")
            cls.pf = ph.PostfixInstance(
                mailboxes=MAILBOXES,
                params={"smtpd_sender_restrictions": sender,
                        "smtpd_recipient_restrictions": trap + ", permit_mynetworks, reject_unauth_destination"})
            cls.daemon.start()
            cls.pf.start()
        except BaseException:
            cls.tearDownClass()
            raise


if __name__ == "__main__":
    unittest.main(verbosity=2)
