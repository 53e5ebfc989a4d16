#!/usr/bin/env python3
"""End to end: a real Postfix 3.7 asks spamtrapd through check_policy_service.

One Postfix instance for the whole class (postfix_harness), wired the way
README.md documents, except that check_policy_service comes before
permit_mynetworks (tests connect from 127.0.0.1; XCLIENT poses as the
client the policy server then sees):

    smtpd_sender_restrictions    = check_policy_service inet:127.0.0.1:SENDER
    smtpd_recipient_restrictions = check_policy_service inet:127.0.0.1:TRAP,
                                   permit_mynetworks, reject_unauth_destination

The main smtpd listener keeps smtpd_delay_reject=yes (the default: a
blocklisted sender shows at RCPT); a second one ("nodelay") has it off and
shows the same refusal at MAIL FROM. One spamtrapd (spamtrapd_harness) on a
SQLite store serves the class; tests change its config by SIGHUP. Every
trap address is also a real Maildir mailbox, so only spamtrapd can keep
mail out of it, and every test uses its own senders, client addresses,
traps and mailboxes, so tests do not depend on each other's blocklist
entries. "Not delivered" is asserted only once the queue is empty.

Run alone: see docs/testing.md. Needs root (exit 77 otherwise).
"""

import functools
import re
import sys
import time
import unittest

import postfix_harness as ph
import spamtrapd_harness as sh

SINK = "sink.test"
WHITELISTED_DOMAIN = "friends.test"
REJECT_TEXT = "e2e: sender blocklisted after mail to a spamtrap"
REJECT = "550 5.7.1 " + REJECT_TEXT

# One trap per test; each is a real mailbox too (see the module comment).
TRAPS = {name: "trap-%s@%s" % (name, SINK) for name in ("a", "a2", "b", "c", "d", "e")}
USERS = {name: "%s@%s" % (name, SINK) for name in ("alice", "bob", "carol", "dave", "erin", "frank", "gina", "hank")}

DAEMON_CONFIG = {
    "traps": {"addresses": sorted(TRAPS.values()), "action": "discard", "on_mixed": "deliver-others"},
    "blocklist": {"keys": ["sender", "client_address"], "ttl": "1h", "ipv4_prefix": 32, "ipv6_prefix": 64,
                  "reject": REJECT},
    "whitelist": {"domains": [WHITELISTED_DOMAIN]},
}


def sender_refused(sender):
    """Postfix's text for spamtrapd's blocklist.reject in smtpd_sender_restrictions."""
    return "5.7.1 <%s>: Sender address rejected: %s" % (sender, REJECT_TEXT)


def trap_refused(trap):
    """How the trap RCPT is refused (action discard, on_mixed deliver-others):
    an unknown user, 550 5.1.1, as rejected by smtpd_recipient_restrictions."""
    return "5.1.1 <%s>: Recipient address rejected:" % trap


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


class PostfixCase(unittest.TestCase):
    """One Postfix and one spamtrapd per class (setUpClass in the subclass) and the helpers."""

    pf = None
    daemon = None

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.pf:
                cls.pf.cleanup()
        finally:
            if cls.daemon:
                cls.daemon.cleanup()

    # ------------------------------------------------------------ helpers
    def send(self, sender, recipients, client, **kw):
        return self.pf.smtp(sender, recipients, client=client, **kw)

    def assert_delivered(self, result, mailbox):
        """result's message (by Message-ID) arrives in mailbox."""
        self.assertTrue(result.accepted, result)
        self.pf.wait_delivered(mailbox, message_id=result.message_id)

    def assert_trap_hit(self, result, trap, others=()):
        """The trap RCPT was refused as an unknown user, the others accepted."""
        self.assertEqual(result.mail, (250, "2.1.0 Ok"), result)
        self.assertEqual(result.rcpt[trap].code, 550, result)
        self.assertTrue(result.rcpt[trap].text.startswith(trap_refused(trap)), result)
        self.assertNotIn(REJECT_TEXT, result.rcpt[trap].text, result)
        for rcpt in others:
            self.assertEqual(result.rcpt[rcpt], (250, "2.1.5 Ok"), result)


class PostfixPolicyTest(PostfixCase):
    @classmethod
    def setUpClass(cls):
        cls.daemon = sh.Spamtrapd(DAEMON_CONFIG)
        trap_port, sender_port = cls.daemon.policy_port("trap"), cls.daemon.policy_port("sender")
        cls.pf = ph.PostfixInstance(
            mailboxes=list(TRAPS.values()) + list(USERS.values()),
            params={
                "smtpd_sender_restrictions": "check_policy_service inet:127.0.0.1:%d" % sender_port,
                "smtpd_recipient_restrictions": "check_policy_service inet:127.0.0.1:%d, "
                                                "permit_mynetworks, reject_unauth_destination" % trap_port,
                "smtpd_delay_reject": "yes",
            },
            services={"nodelay": {"smtpd_delay_reject": "no"}})
        try:
            cls.daemon.start()
            cls.pf.start()
        except BaseException:
            cls.tearDownClass()
            raise

    # ------------------------------------------------------------ helpers
    def assert_refused_at_rcpt(self, result, sender):
        """smtpd_delay_reject=yes: MAIL is accepted, every RCPT gets blocklist.reject."""
        self.assertEqual(result.mail, (250, "2.1.0 Ok"), result)
        self.assertTrue(result.rcpt, result)
        for reply in result.rcpt.values():
            self.assertEqual(reply, (550, sender_refused(sender)), result)
        self.assertIsNone(result.data, result)

    # -------------------------------------------------------------- tests
    @dump_logs_on_failure
    def test_a_trap_hit_blocklists_the_sender(self):
        a, b = "spammer-a@bad-a.test", "clean-b@good-b.test"
        first = self.send(a, [TRAPS["a"], USERS["alice"]], client="192.0.2.10")
        self.assert_trap_hit(first, TRAPS["a"], others=[USERS["alice"]])
        # deliver-others: the real recipient of the trap message gets it.
        self.assert_delivered(first, USERS["alice"])

        # A again, from a clean address: refused at RCPT with the configured text.
        again = self.send(a, [USERS["alice"]], client="198.51.100.10")
        self.assertEqual(again.rejected_at(), "rcpt " + USERS["alice"], again)
        self.assert_refused_at_rcpt(again, a)

        # B from a clean address is not affected.
        clean = self.send(b, [USERS["bob"]], client="198.51.100.11")
        self.assertEqual(clean.rejected_at(), None, clean)
        self.assert_delivered(clean, USERS["bob"])

        self.pf.wait_queue_empty()
        self.assertEqual(self.pf.delivered_ids(USERS["alice"]), [first.message_id])
        self.assertEqual(self.pf.delivered(TRAPS["a"]), [])

    @dump_logs_on_failure
    def test_a2_refused_at_mail_from_without_delay_reject(self):
        a = "spammer-a2@bad-a2.test"
        first = self.send(a, [TRAPS["a2"]], client="192.0.2.12", service="nodelay")
        self.assert_trap_hit(first, TRAPS["a2"])
        self.assertFalse(first.accepted, first)

        again = self.send(a, [USERS["carol"]], client="198.51.100.12", service="nodelay")
        self.assertEqual(again.rejected_at(), "mail", again)
        self.assertEqual(again.mail, (550, sender_refused(a)), again)
        self.assertEqual(again.rcpt, {}, again)

        self.pf.wait_queue_empty()
        self.assertEqual(self.pf.delivered(USERS["carol"]), [])
        self.assertEqual(self.pf.delivered(TRAPS["a2"]), [])

    @dump_logs_on_failure
    def test_b_client_address_is_blocklisted(self):
        first = self.send("spammer-b@bad-b.test", [TRAPS["b"]], client="192.0.2.20")
        self.assert_trap_hit(first, TRAPS["b"])

        # Another, never seen sender from the same client address is refused...
        other = "other-b@fresh-b.test"
        refused = self.send(other, [USERS["dave"]], client="192.0.2.20")
        self.assert_refused_at_rcpt(refused, other)
        refused = self.send(other, [USERS["dave"]], client="192.0.2.20", service="nodelay")
        self.assertEqual(refused.mail, (550, sender_refused(other)), refused)
        # ...while the same sender from the neighbouring address (ipv4_prefix 32) is not.
        ok = self.send(other, [USERS["dave"]], client="192.0.2.21")
        self.assertEqual(ok.rejected_at(), None, ok)
        self.assert_delivered(ok, USERS["dave"])

        self.pf.wait_queue_empty()
        self.assertEqual(self.pf.delivered_ids(USERS["dave"]), [ok.message_id])

    @dump_logs_on_failure
    def test_c_ipv6_client_is_blocklisted_per_64(self):
        first = self.send("spammer-c@bad-c.test", [TRAPS["c"]], client="2001:db8::7")
        self.assertEqual(first.xclient.code, 220, first)
        self.assert_trap_hit(first, TRAPS["c"])

        other = "other-c@fresh-c.test"
        same64 = self.send(other, [USERS["erin"]], client="2001:db8::1:2:3:4")
        self.assert_refused_at_rcpt(same64, other)
        next64 = self.send(other, [USERS["erin"]], client="2001:db8:0:1::7")
        self.assertEqual(next64.rejected_at(), None, next64)
        self.assert_delivered(next64, USERS["erin"])

        self.pf.wait_queue_empty()
        self.assertEqual(self.pf.delivered_ids(USERS["erin"]), [next64.message_id])

    @dump_logs_on_failure
    def test_d_whitelisted_sender_protects_only_itself_unless_authenticated(self):
        boss = "boss@" + WHITELISTED_DOMAIN
        # Not authenticated, so possibly forged: the trap hit counts and blocklists the client...
        first = self.send(boss, [TRAPS["d"], USERS["frank"]], client="203.0.113.40")
        self.assert_trap_hit(first, TRAPS["d"], others=[USERS["frank"]])
        self.assert_delivered(first, USERS["frank"])
        again = self.send(boss, [USERS["frank"]], client="203.0.113.40")
        self.assert_refused_at_rcpt(again, boss)
        # ...but not the whitelisted sender itself.
        elsewhere = self.send(boss, [USERS["frank"]], client="203.0.113.41")
        self.assertEqual(elsewhere.rejected_at(), None, elsewhere)
        self.assert_delivered(elsewhere, USERS["frank"])

        # Authenticated (XCLIENT LOGIN): the sender is verified, so the listed client is not
        # judged; the trap recipient alone is refused, and with no sasl_username in
        # blocklist.keys nothing is recorded (test_postfix_milter's test_21 shows the account
        # recorded).
        for service in ("default", "nodelay"):
            auth = self.send(boss, [TRAPS["d"], USERS["frank"]], client="203.0.113.40", service=service,
                             xclient={"LOGIN": "boss"})
            self.assertEqual(auth.mail.code, 250, auth)
            self.assertEqual(auth.rcpt[TRAPS["d"]].code, 550, auth)
            self.assert_delivered(auth, USERS["frank"])

        self.pf.wait_queue_empty()
        self.assertEqual(len(self.pf.delivered(USERS["frank"])), 4)

    @dump_logs_on_failure
    def test_e_discard_all_drops_the_whole_message(self):
        self.assertTrue(self.daemon.reload({"traps": {"on_mixed": "discard-all"}}), self.daemon.log_tail())
        self.addCleanup(self.daemon.reload, {"traps": {"on_mixed": "deliver-others"}})
        sender = "spammer-e@bad-e.test"

        r = self.send(sender, [TRAPS["e"], USERS["gina"]], client="203.0.113.50")
        # SMTP says yes to everything: the sender learns nothing...
        self.assertEqual(r.rejected_at(), None, r)
        self.assertEqual(r.rcpt[TRAPS["e"]], (250, "2.1.5 Ok"), r)
        self.assertTrue(r.accepted, r)
        self.pf.wait_log(re.escape("discard: RCPT from unknown[203.0.113.50]: <%s>" % TRAPS["e"]))
        # ...and nobody gets the message, not even the real recipient.
        self.pf.wait_queue_empty()
        self.assertEqual(self.pf.delivered(USERS["gina"]), [])
        self.assertEqual(self.pf.delivered(TRAPS["e"]), [])

        # The hit was recorded all the same.
        again = self.send(sender, [USERS["gina"]], client="198.51.100.50")
        self.assert_refused_at_rcpt(again, sender)

    @dump_logs_on_failure
    def test_f_policy_server_down_is_a_tempfail(self):
        sender = "someone-f@good-f.test"
        self.daemon.stop()
        try:
            # Both policy services are down; the sender check (at RCPT) asks first.
            r = self.send(sender, [USERS["hank"]], client="203.0.113.60", subject="retried")
            self.assertEqual(r.mail, (250, "2.1.0 Ok"), r)
            reply = r.rcpt[USERS["hank"]]
            self.assertEqual(reply.code, 451, r)
            self.assertTrue(reply.text.startswith("4.3.5 "), r)
            self.assertTrue(reply.text.endswith("Server configuration problem"), r)
            self.assertFalse(r.accepted, r)

            r = self.send(sender, [USERS["hank"]], client="203.0.113.60", service="nodelay")
            self.assertEqual(r.mail, (451, "4.3.5 <%s>: Sender address rejected: Server configuration problem"
                                      % sender), r)
        finally:
            self.daemon.start()
        # Nothing was accepted, so nothing was lost: the client's retry goes through.
        retry = self.send(sender, [USERS["hank"]], client="203.0.113.60")
        self.assertEqual(retry.rejected_at(), None, retry)
        self.assert_delivered(retry, USERS["hank"])


FULL_TRAPS = {name: "trap-full-%s@%s" % (name, SINK) for name in ("old", "old2", "new")}
FULL_USERS = {name: "%s@%s" % (name, SINK) for name in ("ivan", "judy")}


class PostfixFullListenerTest(PostfixCase):
    """One `full` listener in smtpd_recipient_restrictions (docs/policy.md): at each RCPT the trap
    check runs first, then the sender check. A trap hit must not let a sender that was blocklisted
    before the message began pass for the message's other recipients (issue 11, item 2)."""

    @classmethod
    def setUpClass(cls):
        config = sh.merge(DAEMON_CONFIG, {"traps": {"addresses": sorted(FULL_TRAPS.values())}})
        cls.daemon = sh.Spamtrapd(config, roles=("full",))
        cls.pf = ph.PostfixInstance(
            mailboxes=list(FULL_TRAPS.values()) + list(FULL_USERS.values()),
            params={
                "smtpd_recipient_restrictions": "check_policy_service inet:127.0.0.1:%d, "
                                                "permit_mynetworks, reject_unauth_destination"
                                                % cls.daemon.policy_port("full"),
            })
        try:
            cls.daemon.start()
            cls.pf.start()
        except BaseException:
            cls.tearDownClass()
            raise

    @dump_logs_on_failure
    def test_a_sender_listed_before_is_refused_for_the_other_recipients(self):
        sender = "listed-full@bad-full.test"
        earlier = self.send(sender, [FULL_TRAPS["old"]], client="192.0.2.70")
        self.assert_trap_hit(earlier, FULL_TRAPS["old"])

        # A new message from a clean client, its first recipient a trap: the trap is refused
        # as a trap, and the ordinary recipient gets the blocklist reject.
        r = self.send(sender, [FULL_TRAPS["old2"], FULL_USERS["ivan"]], client="198.51.100.70")
        self.assertEqual(r.rcpt[FULL_TRAPS["old2"]].code, 550, r)
        self.assertTrue(r.rcpt[FULL_TRAPS["old2"]].text.startswith(trap_refused(FULL_TRAPS["old2"])), r)
        reply = r.rcpt[FULL_USERS["ivan"]]
        self.assertEqual(reply.code, 550, r)
        self.assertTrue(reply.text.startswith("5.7.1 <%s>: Recipient address rejected: " % FULL_USERS["ivan"]), r)
        self.assertTrue(reply.text.endswith(REJECT_TEXT), r)
        self.assertFalse(r.accepted, r)

        self.pf.wait_queue_empty()
        self.assertEqual(self.pf.delivered(FULL_USERS["ivan"]), [])

    @dump_logs_on_failure
    def test_b_sender_not_listed_before_reaches_the_other_recipients(self):
        sender = "fresh-full@bad-full.test"
        r = self.send(sender, [FULL_TRAPS["new"], FULL_USERS["judy"]], client="192.0.2.71")
        self.assert_trap_hit(r, FULL_TRAPS["new"], others=[FULL_USERS["judy"]])
        self.assert_delivered(r, FULL_USERS["judy"])

        # The hit was recorded: the next message is refused.
        again = self.send(sender, [FULL_USERS["judy"]], client="198.51.100.71")
        self.assertEqual(again.rcpt[FULL_USERS["judy"]].code, 550, again)
        self.assertTrue(again.rcpt[FULL_USERS["judy"]].text.endswith(REJECT_TEXT), again)

        self.pf.wait_queue_empty()
        self.assertEqual(self.pf.delivered_ids(FULL_USERS["judy"]), [r.message_id])


if __name__ == "__main__":
    ph.require_postfix()
    unittest.main(verbosity=2)
