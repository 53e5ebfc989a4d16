#!/usr/bin/env python3
"""The checks' use of SPF (issue 15) with the daemon's own resolver, over the
policy protocol, against a real DNS server started by the test.

tests/lib/dns_server.py serves the zones below on a loopback port; the
daemon forwards to it (dns.forwarders). One daemon on SQLite with
blocklist.sender_requires "spf-pass", greylist.spf_key and spf.reject_fail,
asked on its trap listener the way Postfix asks:

- a forged sender (a client its domain does not authorise) hitting a trap
  blocklists the client only, never the address; its log line says
  sender=unverified;
- the same sender from its authorised address is blocklisted as an address;
- a domain whose DNS does not answer (temperror): the client only, and no
  recipient of it is refused with a 5xx;
- reject_fail refuses a fail with 5.7.23, never a softfail;
- the greylist keys an SPF-passing domain with a narrow record by domain
  (a retry from its other server passes the same triplet), and an open
  record (+all) by the client's network;
- a record that passes for everyone (+all) verifies no one: its sender is
  not listed by a trap hit;
- a whitelisted sender SPF verifies skips the greylist; forged, it is
  judged like anyone (here refused by reject_fail);
- the Received-SPF PREPEND, once a message.

Zones are under spftest.example.net: not a name unbound treats as special.
"""

import re
import shutil
import tempfile
import unittest

import dns_server
import spamtrapd_harness as sh

ZONE = "spftest.example.net"
GOOD = "good." + ZONE          # v=spf1 ip4:192.0.2.10 ip4:192.0.2.11 -all
SOFT = "soft." + ZONE          # v=spf1 ip4:192.0.2.10 ~all
OPEN = "open." + ZONE          # v=spf1 +all
DEAD = "dead." + ZONE          # never answers
FRIENDS = "friends." + ZONE    # whitelisted; v=spf1 ip4:192.0.2.30 -all
GOOD_SERVER, GOOD_SERVER2 = "192.0.2.10", "192.0.2.11"
TRAP = "trap@example.com"

RECORDS = {
    GOOD: [["TXT", "v=spf1 ip4:192.0.2.10 ip4:192.0.2.11 -all"]],
    SOFT: [["TXT", "v=spf1 ip4:192.0.2.10 ~all"]],
    OPEN: [["TXT", "v=spf1 +all"]],
    FRIENDS: [["TXT", "v=spf1 ip4:192.0.2.30 -all"]],
}
BEHAVIOURS = {DEAD: {"drop": True}}


class SpfChecksTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.workdir = tempfile.mkdtemp(prefix="spamtrapd-spf-")
        cls.dns = dns_server.DnsServer(cls.workdir, RECORDS, BEHAVIOURS)
        cls.dns.start()
        cls.daemon = None
        try:
            cls.daemon = sh.Spamtrapd({
                "traps": {"addresses": [TRAP]},
                "whitelist": {"domains": [FRIENDS]},
                "blocklist": {"sender_requires": "spf-pass"},
                "greylist": {"mode": "enforce", "spf_key": True, "recipients": ["postmaster@", "abuse@"]},
                "spf": {"mode": "enforce", "reject_fail": True, "timeout": "2s",
                        "receiver": "mx.spftest.example.net"},
                "dns": {"forwarders": [cls.dns.forwarder], "timeout": "2s"},
            })
            cls.daemon.start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.daemon:
                try:
                    cls.daemon.stop()
                finally:
                    cls.daemon.cleanup()
        finally:
            cls.dns.stop()
            shutil.rmtree(cls.workdir, ignore_errors=True)

    def ask(self, client, sender, recipient, instance):
        with sh.PolicyClient(self.daemon.policy_address("trap")) as c:
            return c.check(request="smtpd_access_policy", protocol_state="RCPT", protocol_name="ESMTP",
                           client_address=client, client_name="unknown", helo_name="mx." + ZONE,
                           sender=sender, recipient=recipient, instance=instance)

    def listed(self, key):
        return self.daemon.ctl("lookup", key, check=False).returncode == 0

    def test_forged_sender_lists_the_client_only(self):
        sender = "alice@" + GOOD
        mark = self.daemon.log_mark()
        self.assertTrue(self.ask("203.0.113.66", sender, TRAP, "f1").startswith("550 5.1.1"))
        self.assertTrue(self.listed("203.0.113.66"))
        self.assertFalse(self.listed(sender))
        self.assertEqual(self.daemon.count_log(r"blocklisted=203\.0\.113\.66 sender=unverified", since=mark), 1)

    def test_authorised_sender_is_listed_as_an_address(self):
        sender = "bob@" + GOOD
        self.assertTrue(self.ask(GOOD_SERVER, sender, TRAP, "a1").startswith("550 5.1.1"))
        self.assertTrue(self.listed(sender))

    def test_dns_down_lists_the_client_only_and_refuses_nothing(self):
        sender = "carol@" + DEAD
        self.assertTrue(self.ask("203.0.113.77", sender, TRAP, "d1").startswith("550 5.1.1"))
        self.assertTrue(self.listed("203.0.113.77"))
        self.assertFalse(self.listed(sender))
        # an ordinary recipient of that sender: greylisted (4xx), never refused with a 5xx
        action = self.ask("203.0.113.78", sender, "friend@example.org", "d2")
        self.assertFalse(action.startswith("5"), action)

    def test_open_record_verifies_no_one(self):
        sender = "gina@" + OPEN
        self.assertTrue(self.ask("198.51.100.50", sender, TRAP, "o1").startswith("550 5.1.1"))
        self.assertTrue(self.listed("198.51.100.50"))
        self.assertFalse(self.listed(sender))

    def test_whitelisted_sender_verified_or_forged(self):
        sender = "ceo@" + FRIENDS
        # the walk stops at the whitelist: not greylisted, and no header (whitelisted mail gets none)
        self.assertEqual(self.ask("192.0.2.30", sender, "hank@example.org", "w1"), "DUNNO")
        # forged: no exemption, and its domain's -all refuses it (reject_fail)
        action = self.ask("198.51.100.51", sender, "hank@example.org", "w2")
        self.assertTrue(action.startswith("550 5.7.23 "), action)

    def test_reject_fail_not_softfail(self):
        action = self.ask("203.0.113.88", "dave@" + GOOD, "friend@example.org", "r1")
        self.assertTrue(action.startswith("550 5.7.23 SPF validation failed"), action)
        action = self.ask("203.0.113.88", "dave@" + SOFT, "friend@example.org", "r2")
        self.assertFalse(action.startswith("5"), action)

    def test_reject_fail_a_quoted_local_part(self):
        # MAIL FROM:<"da\"ve"@good...> reaches the policy service as da"ve@good...: an address
        # the other checks find invalid, yet its domain's -all refuses it all the same
        action = self.ask("203.0.113.89", 'da"ve@' + GOOD, "friend@example.org", "r3")
        self.assertTrue(action.startswith("550 5.7.23 SPF validation failed"), action)

    def test_spf_key_narrow_and_open(self):
        mark = self.daemon.log_mark()
        action = self.ask(GOOD_SERVER, "news@" + GOOD, "erin@example.org", "g1")
        self.assertTrue(action.startswith("DEFER_IF_PERMIT"), action)
        self.daemon.wait_for_log(re.escape("triplet=spf:%s/news@%s/erin@example.org" % (GOOD, GOOD)), since=mark)
        # its retry from the domain's other server: the same triplet
        mark = self.daemon.log_mark()
        self.ask(GOOD_SERVER2, "news@" + GOOD, "erin@example.org", "g2")
        self.daemon.wait_for_log(re.escape("triplet=spf:%s/news@%s/erin@example.org" % (GOOD, GOOD)), since=mark)
        # +all: the probes pass, the client's network stays the key
        mark = self.daemon.log_mark()
        action = self.ask("198.51.100.9", "x@" + OPEN, "erin@example.org", "g3")
        self.assertTrue(action.startswith("DEFER_IF_PERMIT"), action)
        self.daemon.wait_for_log(re.escape("triplet=198.51.100.0/24/x@%s/erin@example.org" % OPEN), since=mark)

    def test_received_spf_prepended_once_a_message(self):
        sender = "frank@" + GOOD
        # postmaster@ is never greylisted (greylist.recipients): the checks let it through
        first = self.ask(GOOD_SERVER2, sender, "postmaster@example.org", "h1")
        self.assertEqual(first, "PREPEND Received-SPF: pass (mx.spftest.example.net: domain of the sender "
                                "designates 192.0.2.11 as permitted sender) client-ip=192.0.2.11; "
                                "envelope-from=\"frank@good.spftest.example.net\"; "
                                "helo=mx.spftest.example.net; receiver=mx.spftest.example.net; "
                                "identity=mailfrom")
        self.assertEqual(self.ask(GOOD_SERVER2, sender, "abuse@example.org", "h1"), "DUNNO")


if __name__ == "__main__":
    unittest.main(verbosity=2)
