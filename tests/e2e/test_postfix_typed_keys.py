#!/usr/bin/env python3
"""End to end: typed blocklist keys through a real Postfix (issue 11, item 1).

The attack: a spammer at 192.0.2.66 sends MAIL FROM:<"sasl:alice"@sink.test>
to a trap. Postfix hands spamtrapd the internal form sasl:alice@sink.test,
which spamtrapd 0.1.0 recorded as the key of the SASL user alice@sink.test,
who was then refused everywhere. Now the hit records that sender (quoted,
"sasl:alice"@sink.test) and the client, and the real user, logged in as
alice@sink.test (XCLIENT LOGIN=, which Postfix treats as SASL
authentication: the policy request carries sasl_username, the milter
{auth_authen}), goes on sending; the spammer's sender stays refused.

One spamtrapd serves both front ends (SQLite store, blocklist.keys with
sasl_username and helo_name as well); one Postfix has the policy
restrictions on its main listener and the milter on a second one, so each
front end is tried through Postfix. Each test uses its own accounts,
clients and mailboxes.

Run alone: see docs/testing.md. Needs root (exit 77 otherwise).
"""

import functools
import sys
import time
import unittest

import postfix_harness as ph
import spamtrapd_harness as sh

SINK = "sink.test"
TRAP = "trap@" + SINK
REJECT_TEXT = "e2e: sender blocklisted after mail to a spamtrap"
USERS = {name: "%s@%s" % (name, SINK) for name in ("alice", "bob", "carol", "dave", "erin", "frank")}

CONFIG = {
    "traps": {"addresses": [TRAP], "action": "discard", "on_mixed": "deliver-others"},
    "blocklist": {"keys": ["sender", "client_address", "sasl_username", "helo_name"], "ttl": "1h",
                  "reject": "550 5.7.1 " + REJECT_TEXT},
}


def dump_logs_on_failure(test):
    """On failure print what Postfix and spamtrapd logged during the test."""

    @functools.wraps(test)
    def wrapper(self):
        pf_mark, d_mark = self.pf.log_mark(), self.daemon.log_mark()
        try:
            test(self)
        except BaseException:
            time.sleep(0.2)  # postlogd writes the maillog asynchronously
            sys.stderr.write("\n=== %s: Postfix maillog during the test ===\n%s" % (
                self.id(), self.pf.maillog(since=pf_mark)))
            sys.stderr.write("=== spamtrapd log during the test ===\n%s\n" % self.daemon.log_since(d_mark))
            raise

    return wrapper


class TypedKeysTest(unittest.TestCase):
    pf = None
    daemon = None

    @classmethod
    def setUpClass(cls):
        cls.daemon = sh.Spamtrapd(CONFIG, milter=True)
        trap_port, sender_port = cls.daemon.policy_port("trap"), cls.daemon.policy_port("sender")
        cls.pf = ph.PostfixInstance(
            mailboxes=[TRAP] + list(USERS.values()),
            params={
                "smtpd_sender_restrictions": "check_policy_service inet:127.0.0.1:%d" % sender_port,
                "smtpd_recipient_restrictions": "check_policy_service inet:127.0.0.1:%d, "
                                                "permit_mynetworks, reject_unauth_destination" % trap_port,
            },
            services={"milter": {
                "smtpd_milters": "inet:127.0.0.1:%d" % cls.daemon.milter_port(),
                "milter_default_action": "tempfail",
                "smtpd_sender_restrictions": "",
                "smtpd_recipient_restrictions": "permit_mynetworks, reject_unauth_destination",
            }})
        try:
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
            if cls.daemon:
                cls.daemon.cleanup()

    def keys(self):
        return {line.split("\t")[0] for line in self.daemon.ctl("list").stdout.splitlines()}

    def refused(self, result):
        """Refused with blocklist.reject: at RCPT by the policy service, at MAIL by the milter."""
        replies = [result.mail] + list(result.rcpt.values())
        return any(r.code == 550 and REJECT_TEXT in r.text for r in replies)

    def assert_attack_fails(self, service, account, spammer_client, user_client, mailbox):
        spoofed = '"sasl:%s"@%s' % (account, SINK)  # the internal form is sasl:ACCOUNT@sink.test
        login = "%s@%s" % (account, SINK)
        spam_helo = "sasl:%s@%s" % (account, SINK)  # a HELO spelled like the key too
        hit = self.pf.smtp(spoofed, [TRAP], client=spammer_client, service=service, helo=spam_helo)
        self.assertEqual(hit.mail.code, 250, hit)
        keys = self.keys()
        self.assertIn('"sasl:%s"@%s' % (account, SINK), keys)
        self.assertIn(spammer_client, keys)
        # (Postfix hands a policy server the HELO with '@' made '?', a milter as it came.)
        self.assertTrue({"helo:" + spam_helo, "helo:" + spam_helo.replace("@", "?")} & keys, keys)
        self.assertNotIn("sasl:" + login, keys)

        # The real user, authenticated as ACCOUNT@sink.test from elsewhere, is not refused...
        user = self.pf.smtp(login, [mailbox], client=user_client, service=service, xclient={"LOGIN": login})
        self.assertEqual(user.xclient.code, 220, user)
        self.assertFalse(self.refused(user), user)
        self.assertTrue(user.accepted, user)
        self.pf.wait_delivered(mailbox, message_id=user.message_id)
        # The spammer's sender is still refused, from a clean client too.
        again = self.pf.smtp(spoofed, [mailbox], client=user_client, service=service)
        self.assertTrue(self.refused(again), again)
        self.pf.wait_queue_empty()
        self.assertEqual(self.pf.delivered(TRAP), [])

    @dump_logs_on_failure
    def test_policy_sender_spelled_as_sasl_key(self):
        self.assert_attack_fails("default", "alice", "192.0.2.66", "198.51.100.66", USERS["bob"])

    @dump_logs_on_failure
    def test_milter_sender_spelled_as_sasl_key(self):
        self.assert_attack_fails("milter", "carol", "192.0.2.67", "198.51.100.67", USERS["dave"])

    @dump_logs_on_failure
    def test_sasl_names_compare_case_insensitively(self):
        """An account blocklisted by hand as Erin@Sink.Test is refused when it logs in as erin@sink.test."""
        self.daemon.ctl("add", "sasl:Erin@Sink.Test")
        self.assertIn("sasl:erin@sink.test", self.keys())
        for service in ("default", "milter"):
            r = self.pf.smtp("erin@sink.test", [USERS["frank"]], client="198.51.100.68", service=service,
                             xclient={"LOGIN": "erin@sink.test"})
            self.assertTrue(self.refused(r), r)
        self.daemon.ctl("remove", "sasl:ERIN@sink.test")
        r = self.pf.smtp("erin@sink.test", [USERS["frank"]], client="198.51.100.68",
                         xclient={"LOGIN": "erin@sink.test"})
        self.assertTrue(r.accepted, r)


if __name__ == "__main__":
    ph.require_postfix()
    unittest.main(verbosity=2)
