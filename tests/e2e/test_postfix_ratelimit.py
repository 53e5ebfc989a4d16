#!/usr/bin/env python3
"""End to end: rate limits (issue 14) through a real Postfix 3.7, on both front ends.

Each class has its own Postfix (postfix_harness) and spamtrapd on SQLite,
with the rules below. Postfix's XCLIENT LOGIN= makes a session SASL
authenticated as that name (policy sasl_username, milter {auth_authen}),
so a test poses as an account without a SASL server.

- RateMilterTest: smtpd_milters.
- RatePolicyTest: check_policy_service TRAP first in
  smtpd_recipient_restrictions (before permit_mynetworks: the tests connect
  from 127.0.0.1 and pose as other clients with XCLIENT).

What is asserted is what spamtrapd.json(5) RATELIMIT documents: with
"unit": "message", an account's messages are counted once each however
many recipients they have, the message after the limit is deferred with the rule's text and
not delivered, another account is unaffected, a per-recipient rule
refuses only the recipient over its limit and the others of the message
are delivered. Rates are per hour: nothing refills during a test, no
timing is asserted.

Run alone: see docs/testing.md. Needs root (exit 77 otherwise).
"""

import socket
import time
import unittest

import postfix_harness as ph
import spamtrapd_harness as sh

SINK = "sink.test"
ALICE, BOB, CAROL, DAVE = ("%s@%s" % (n, SINK) for n in ("alice", "bob", "carol", "dave"))
TRAP = "trap@" + SINK
MAILBOXES = [ALICE, BOB, CAROL, DAVE, TRAP]
DEFER_TEXT = "Rate limit exceeded, try again later"
CONFIG = {
    "traps": {"addresses": [TRAP]},
    "ratelimit": {"mode": "enforce", "rules": [
        {"name": "account", "key": "sasl_username", "rate": "2/1h", "unit": "message"},
        {"name": "rcpt", "key": "recipient", "rate": "1/1h", "unit": "recipient", "action": "reject",
         "reply": "550 5.7.1 Too much mail for this mailbox"},
    ]},
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
    """The rows both front ends pass; the class says how its front end frames a refusal."""

    def send(self, login, rcpts, client, sender=None):
        xclient = {"LOGIN": login} if login else None
        return self.pf.smtp(sender or "%s@submit.test" % (login or "anon"), rcpts, client=client, xclient=xclient)

    def assert_delivered(self, r, to):
        self.assertTrue(r.accepted, r)
        for mailbox in to:
            self.pf.wait_delivered(mailbox, message_id=r.message_id)

    def test_account_counts_messages_and_is_deferred_after_its_limit(self):
        user = "erin" + self.tag
        # two messages of two recipients each (distinct recipients: the per-recipient rule stays out)
        r1 = self.send(user, ["alice+%s1@%s" % (self.tag, SINK), "bob+%s1@%s" % (self.tag, SINK)], "192.0.2.11")
        r2 = self.send(user, ["alice+%s2@%s" % (self.tag, SINK), "bob+%s2@%s" % (self.tag, SINK)], "198.51.100.12")
        self.assert_delivered(r1, [ALICE, BOB])
        self.assert_delivered(r2, [ALICE, BOB])
        rcpt = "carol+%s3@%s" % (self.tag, SINK)
        r3 = self.send(user.upper(), [rcpt], "203.0.113.13")
        self.assertEqual(r3.rcpt[rcpt].code, 450, r3)
        self.assertEqual(self.refusal_text(r3.rcpt[rcpt], rcpt, "4.7.1"), DEFER_TEXT, r3)
        self.assertFalse(r3.accepted, r3)
        # another account is not affected
        rcpt = "dave+%s4@%s" % (self.tag, SINK)
        self.assert_delivered(self.send("frank" + self.tag, [rcpt], "203.0.113.14"), [DAVE])

    def test_recipient_over_its_limit_is_refused_alone(self):
        first = "alice+%sr@%s" % (self.tag, SINK)
        self.assert_delivered(self.send(None, [first], "192.0.2.21"), [ALICE])
        other = "bob+%sr@%s" % (self.tag, SINK)
        r = self.send(None, [first, other], "192.0.2.22")
        self.assertEqual(r.rcpt[first].code, 550, r)
        self.assertEqual(self.refusal_text(r.rcpt[first], first, "5.7.1"), "Too much mail for this mailbox", r)
        self.assertEqual(r.rcpt[other].code, 250, r)
        self.assert_delivered(r, [BOB])


class RateCase(unittest.TestCase):
    pf = None
    daemon = None

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.pf:
                cls.pf.cleanup()
        finally:
            if cls.daemon:
                try:
                    cls.daemon.stop()  # raises on a non-zero exit (an ASan report, a crash)
                finally:
                    cls.daemon.cleanup()


class RateMilterTest(Scenarios, RateCase):
    tag = "m"

    @classmethod
    def setUpClass(cls):
        ph.require_postfix()
        cls.daemon = sh.Spamtrapd(CONFIG, roles=(), milter=True)
        cls.pf = ph.PostfixInstance(
            mailboxes=MAILBOXES,
            params={"smtpd_milters": "inet:127.0.0.1:%d" % cls.daemon.milter_port(),
                    "milter_default_action": "tempfail", "recipient_delimiter": "+"})
        try:
            cls.daemon.start()
            wait_milter_port(cls.daemon)
            cls.pf.start()
        except BaseException:
            cls.tearDownClass()
            raise

    def refusal_text(self, reply, rcpt, xcode):
        # smfi_setreply's text reaches the client as written.
        self.assertTrue(reply.text.startswith(xcode + " "), reply)
        return reply.text[len(xcode) + 1:]


class RatePolicyTest(Scenarios, RateCase):
    tag = "p"

    @classmethod
    def setUpClass(cls):
        ph.require_postfix()
        cls.daemon = sh.Spamtrapd(CONFIG)
        trap = "check_policy_service inet:127.0.0.1:%d" % cls.daemon.policy_port("trap")
        cls.pf = ph.PostfixInstance(
            mailboxes=MAILBOXES,
            params={"smtpd_recipient_restrictions": trap + ", permit_mynetworks, reject_unauth_destination",
                    "recipient_delimiter": "+"})
        try:
            cls.daemon.start()
            cls.pf.start()
        except BaseException:
            cls.tearDownClass()
            raise

    def refusal_text(self, reply, rcpt, xcode):
        # Postfix frames a policy answer as a recipient restriction's.
        prefix = "%s <%s>: Recipient address rejected: " % (xcode, rcpt)
        self.assertTrue(reply.text.startswith(prefix), reply)
        return reply.text[len(prefix):]


if __name__ == "__main__":
    unittest.main(verbosity=2)
