#!/usr/bin/env python3
"""End to end: the dnsbl check (issue 15) through a real Postfix, on both front ends.

Debian's rbldnsd (rbldnsd_harness) serves a test DNSBL (bl.example.net)
and DNSWL (wl.example.net) on a loopback port; spamtrapd forwards its DNS
queries there (dns.forwarders). The tests pose as other clients with
XCLIENT ADDR=. Two classes, each with its own Postfix and spamtrapd:

- DnsblMilterTest: smtpd_milters.
- DnsblPolicyTest: check_policy_service on the trap listener in
  smtpd_recipient_restrictions (before permit_mynetworks: the tests
  connect from 127.0.0.1).

What is asserted is what docs/dnsbl.md documents: a listed client is
refused at RCPT TO with the configured reply (%{client}, %{site}); a
DNSWL-listed client is not greylisted while a clean one is; a listed
client's trap recipient is still caught (the trap answers first).

Run alone: see docs/testing.md. Needs root (exit 77 otherwise).
"""

import shutil
import tempfile
import unittest

import postfix_harness as ph
import rbldnsd_harness as rb
import spamtrapd_harness as sh

SINK = "sink.test"
ALICE, BOB = "alice@" + SINK, "bob@" + SINK
TRAP = "trap@" + SINK
MAILBOXES = [ALICE, BOB, TRAP]
LISTED, LISTED_V6, ALLOWED, CLEAN = "192.0.2.7", "2001:db8::7", "192.0.2.8", "192.0.2.50"
REPLY_TEXT = "e2e: client [%{client}] blocked using %{site}"
ZONES = {
    "bl.example.net": rb.Zone(v4={LISTED: "127.0.0.2"}, v6={LISTED_V6: "127.0.0.4"}),
    "wl.example.net": rb.Zone(v4={ALLOWED: "127.0.10.2"}),
}


def config(rbl):
    return {
        "traps": {"addresses": [TRAP], "action": "discard", "on_mixed": "deliver-others"},
        "dns": {"forwarders": [rbl.forwarder]},
        "dnsbl": {"mode": "enforce", "threshold": 2, "allowlist_threshold": -1,
                  "sites": ["bl.example.net=127.0.0.[2..11]*2", "wl.example.net=127.0.[0..255].[1..3]*-3"],
                  "reply": "554 5.7.1 " + REPLY_TEXT},
        "greylist": {"mode": "enforce", "delay": "1h"},
    }


class DnsblScenarios:
    """The rows both front ends pass; the subclass starts its Postfix and spamtrapd."""

    pf = daemon = rbl = tmp = None

    @classmethod
    def start(cls, params, roles, milter):
        ph.require_postfix()
        cls.tmp = tempfile.mkdtemp(prefix="spamtrapd-e2e-dnsbl-")
        cls.rbl = rb.Rbldnsd(cls.tmp, ZONES)
        try:
            cls.rbl.start()
            cls.daemon = sh.Spamtrapd(config(cls.rbl), roles=roles, milter=milter)
            cls.pf = ph.PostfixInstance(mailboxes=MAILBOXES, params=params(cls.daemon))
            cls.daemon.start()
            cls.pf.start()
        except BaseException:
            cls.tearDownClass()
            raise

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
                if cls.rbl:
                    cls.rbl.stop()
                if cls.tmp:
                    shutil.rmtree(cls.tmp, True)

    def send(self, sender, rcpts, client):
        return self.pf.smtp(sender, rcpts, client=client)

    def assert_refused(self, r, rcpt, client):
        reply = r.rcpt[rcpt]
        self.assertEqual(reply.code, 554, r)
        self.assertTrue(reply.text.startswith("5.7.1 "), r)
        self.assertTrue(reply.text.endswith("e2e: client [%s] blocked using bl.example.net" % client), r)

    def test_listed_client_refused_with_the_configured_reply(self):
        r = self.send("someone@sender-a.test", [ALICE], LISTED)
        self.assert_refused(r, ALICE, LISTED)
        self.assertFalse(r.accepted, r)

    def test_listed_ipv6_client_refused(self):
        r = self.send("someone@sender-b.test", [ALICE], LISTED_V6)
        self.assert_refused(r, ALICE, LISTED_V6)

    def test_dnswl_listed_client_skips_greylisting(self):
        r = self.send("someone@sender-c.test", [ALICE], ALLOWED)
        self.assertEqual(r.rcpt[ALICE].code, 250, r)
        self.pf.wait_delivered(ALICE, message_id=r.message_id)
        clean = self.send("someone@sender-c.test", [ALICE], CLEAN)
        self.assertEqual(clean.rcpt[ALICE].code, 450, clean)  # greylisting is on

    def test_listed_clients_trap_hit_is_still_caught(self):
        mark = self.daemon.log_mark()
        r = self.send("spammer@sender-d.test", [BOB, TRAP], LISTED)  # BOB first: after the hit, the blocklist answers
        self.assert_refused(r, BOB, LISTED)
        self.daemon.wait_for_log(r": trap.*sender=<spammer@sender-d\.test>", since=mark)
        self.pf.wait_queue_empty()
        self.assertEqual(self.pf.delivered_ids(TRAP), [], r)


class DnsblMilterTest(DnsblScenarios, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.start(lambda d: {"smtpd_milters": "inet:127.0.0.1:%d" % d.milter_port(),
                             "milter_default_action": "tempfail"}, roles=(), milter=True)


class DnsblPolicyTest(DnsblScenarios, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.start(lambda d: {"smtpd_recipient_restrictions": "check_policy_service inet:127.0.0.1:%d, "
                             "permit_mynetworks, reject_unauth_destination" % d.policy_port("trap")},
                  roles=("trap", "sender"), milter=False)


if __name__ == "__main__":
    ph.require_postfix()
    unittest.main(verbosity=2)
