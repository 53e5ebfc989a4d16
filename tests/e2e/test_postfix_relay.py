#!/usr/bin/env python3
"""End to end: a real Postfix 3.7 asks spamtrapd's relay check about
authenticated accounts (issue 14). XCLIENT ADDR= and LOGIN= pose as an
authenticated user on a client address, as a botnet with a stolen
password would be; Postfix hands the login to the policy server as
sasl_username.

    smtpd_sender_restrictions    = check_policy_service inet:127.0.0.1:SENDER
    smtpd_recipient_restrictions = check_policy_service inet:127.0.0.1:TRAP,
                                   permit_mynetworks, reject_unauth_destination

One Postfix and one spamtrapd (SQLite) for the class; every test uses its
own account. PostfixSubmissionWiringTest checks the submission wiring
docs/relay.md gives (its own Postfix and spamtrapd). Tests run in name order: the last one turns block_account on
by SIGHUP. Run alone: see docs/testing.md. Needs root (exit 77 otherwise).
"""

import time
import unittest

import postfix_harness as ph
import spamtrapd_harness as sh
from test_postfix_policy import PostfixCase, dump_logs_on_failure

SINK = "sink.test"
USERS = {name: "%s@%s" % (name, SINK) for name in ("bob", "carol", "dave")}
WINDOW = 60
DEFER_TEXT = "Too many client networks for this account, try again later"
BLOCK_TEXT = "Sender is blocklisted after mail to a spamtrap"
DAEMON_CONFIG = {
    "traps": {"addresses": ["trap@%s" % SINK]},
    "relay": {"mode": "enforce", "max_networks": 10, "window": "%ds" % WINDOW,
              "exempt_networks": ["203.0.113.0/24"]},
}


def net(i):
    return "198.18.%d.7" % i


class PostfixRelayTest(PostfixCase):
    @classmethod
    def setUpClass(cls):
        cls.daemon = sh.Spamtrapd(DAEMON_CONFIG)
        trap_port, sender_port = cls.daemon.policy_port("trap"), cls.daemon.policy_port("sender")
        cls.pf = ph.PostfixInstance(
            mailboxes=list(USERS.values()) + ["trap@%s" % SINK],
            params={
                "smtpd_sender_restrictions": "check_policy_service inet:127.0.0.1:%d" % sender_port,
                "smtpd_recipient_restrictions": "check_policy_service inet:127.0.0.1:%d, "
                                                "permit_mynetworks, reject_unauth_destination" % trap_port,
            })
        try:
            cls.daemon.start()
            cls.pf.start()
        except BaseException:
            cls.tearDownClass()
            raise

    def send_as(self, account, client, rcpt):
        return self.pf.smtp("%s@example.com" % account, [rcpt], client=client, xclient={"LOGIN": account})

    def assert_deferred(self, result, rcpt):
        self.assertEqual(result.mail, (250, "2.1.0 Ok"), result)
        self.assertEqual(result.rcpt[rcpt].code, 451, result)
        self.assertTrue(result.rcpt[rcpt].text.startswith("4.7.1 <%s>: Recipient address rejected: " % rcpt),
                        result)
        self.assertTrue(result.rcpt[rcpt].text.endswith(DEFER_TEXT), result)

    def fill(self, account, first, rcpt):
        """The account's 10 networks, each message accepted."""
        for i in range(first, first + 10):
            r = self.send_as(account, net(i), rcpt)
            self.assertTrue(r.accepted, r)

    @dump_logs_on_failure
    def test_a_eleventh_network_deferred_others_unaffected_exempt_never_counts(self):
        bob = USERS["bob"]
        self.fill("alice", 1, bob)
        # an exempt network passes and does not count: still room for none, but no trip
        r = self.send_as("alice", "203.0.113.9", bob)
        self.assertTrue(r.accepted, r)
        self.assert_deferred(self.send_as("alice", net(11), bob), bob)
        # a known network still passes; another account is not affected
        self.assertTrue(self.send_as("alice", net(3), bob).accepted)
        self.assertTrue(self.send_as("mallory", net(11), bob).accepted)
        self.pf.wait_queue_empty()
        self.assertEqual(len(self.pf.delivered_ids(bob)), 13)

    @dump_logs_on_failure
    def test_b_after_the_window_the_account_sends_again(self):
        carol = USERS["carol"]
        self.fill("erin", 20, carol)
        self.assert_deferred(self.send_as("erin", net(30), carol), carol)
        time.sleep(WINDOW + 1)
        self.assertTrue(self.send_as("erin", net(30), carol).accepted)

    @dump_logs_on_failure
    def test_c_block_account_refused_everywhere(self):
        dave = USERS["dave"]
        self.assertTrue(self.daemon.reload({"relay": {"block_account": True}}))
        self.fill("frank", 40, dave)
        self.assert_deferred(self.send_as("frank", net(50), dave), dave)
        # refused from now on, from a network it had, and as any sender: the blocklist (sasl:frank)
        for client, sender in ((net(41), "frank@example.com"), ("192.0.2.33", "other@example.net")):
            r = self.pf.smtp(sender, [dave], client=client, xclient={"LOGIN": "frank"})
            self.assertEqual(r.rcpt[dave].code, 550, r)
            self.assertTrue(r.rcpt[dave].text.endswith(BLOCK_TEXT), r)
        self.assertTrue(self.send_as("grace", net(41), dave).accepted)
        self.assertIn("reason:     relay", self.daemon.ctl("lookup", "sasl:frank").stdout)


class PostfixSubmissionWiringTest(PostfixCase):
    """The submission wiring docs/relay.md gives: relay control in
    smtpd_relay_restrictions (permit_sasl_authenticated, reject), spamtrapd
    first in smtpd_recipient_restrictions, before permit_sasl_authenticated.
    A "wrong" service puts permit_sasl_authenticated first, as many examples
    do: there the account is never asked about."""

    @classmethod
    def setUpClass(cls):
        cls.daemon = sh.Spamtrapd(sh.merge(DAEMON_CONFIG, {"relay": {"max_networks": 1}}))
        trap = "check_policy_service inet:127.0.0.1:%d" % cls.daemon.policy_port("trap")
        submission = {"smtpd_sasl_auth_enable": "yes",
                      "smtpd_relay_restrictions": "permit_sasl_authenticated, reject",
                      "smtpd_recipient_restrictions": trap + ", permit_sasl_authenticated, reject"}
        wrong = dict(submission, smtpd_recipient_restrictions="permit_sasl_authenticated, " + trap + ", reject")
        cls.pf = ph.PostfixInstance(mailboxes=list(USERS.values()) + ["trap@%s" % SINK],
                                    services={"submission": submission, "wrong": wrong})
        try:
            cls.daemon.start()
            cls.pf.start()
        except BaseException:
            cls.tearDownClass()
            raise

    def send(self, service, account, client, rcpt):
        xclient = {"LOGIN": account} if account else None
        return self.pf.smtp("%s@example.com" % (account or "stranger"), [rcpt], client=client, xclient=xclient,
                            service=service)

    @dump_logs_on_failure
    def test_relay_control_first_then_spamtrapd_before_permit_sasl_authenticated(self):
        bob = USERS["bob"]
        self.assertTrue(self.send("submission", "henry", net(1), bob).accepted)
        # the relay restrictions' permit did not skip the recipient restrictions: spamtrapd was asked
        r = self.send("submission", "henry", net(2), bob)
        self.assertEqual(r.rcpt[bob].code, 451, r)
        self.assertTrue(r.rcpt[bob].text.endswith(DEFER_TEXT), r)
        # an unauthenticated client is refused by the relay control, before spamtrapd
        r = self.send("submission", None, net(3), bob)
        self.assertEqual(r.rcpt[bob].code, 554, r)
        self.assertIn("denied", r.rcpt[bob].text)
        # permit_sasl_authenticated first: the account's third network passes unasked
        self.assertTrue(self.send("wrong", "henry", net(4), bob).accepted)


if __name__ == "__main__":
    ph.require_postfix()
    unittest.main(verbosity=2)
