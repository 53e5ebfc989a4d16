#!/usr/bin/env python3
"""End to end: greylisting (issue 13) through a real Postfix 3.7, on both front ends.

Three classes, each with its own Postfix (postfix_harness) and spamtrapd
(spamtrapd_harness), greylist.delay DELAY seconds and header true:

- GreylistMilterTest: smtpd_milters, one spamtrapd on SQLite.
- GreylistPolicyTest: the README's policy wiring plus the DATA stage:
      smtpd_sender_restrictions    = check_policy_service SENDER
      smtpd_recipient_restrictions = check_policy_service TRAP, permit_mynetworks, reject_unauth_destination
      smtpd_data_restrictions      = check_policy_service TRAP
  (check_policy_service before permit_mynetworks: the tests connect from
  127.0.0.1 and pose as other clients with XCLIENT), with a `nodelay`
  listener (smtpd_delay_reject=no) that shows the blocklist at MAIL FROM.
- GreylistSharedRedisTest: two MX hosts, A and B, each a Postfix with its
  own spamtrapd, both daemons on one real redis-server: the policy wiring
  above on the main listener, the milter on a `milter` listener.

What is asserted is what docs/greylist.md and spamtrapd.json(5) GREYLIST
document: the first attempt and an early retry get 450 4.2.0 with the
seconds left, a retry after the delay is delivered with one X-Greylist
header, each recipient is judged on its own, a trap recipient is never
greylisted and its hit blocklists the client, the null sender is deferred
at DATA (a callout gets 250 at RCPT TO), authenticated clients are not
greylisted, a Redis greylist is one for all MX hosts, and a store outage
(greylist.on_error continue) lets mail through ungreylisted.

Waiting past the delay is a sleep of DELAY + 1.2 s after the first attempt
has been answered: the SQLite store's clock counts whole seconds, so a
retry more than DELAY + 1 s later is past the delay whatever the fraction
of the second the first attempt fell on. An "early" retry comes right
after the first attempt, well inside DELAY (3 s). No duration is asserted.

Every test uses its own clients (in a /24 of its own: the greylist's
triplet network) and senders, so tests do not see each other's triplets.

Run alone: see docs/testing.md. Needs root (exit 77 otherwise).
"""

import functools
import re
import shutil
import smtplib
import socket
import sys
import tempfile
import time
import unittest

import postfix_harness as ph
import redis_harness as rh
import spamtrapd_harness as sh

DELAY = 3
PAST_DELAY = DELAY + 1.2
SINK = "sink.test"
ALICE, BOB, CAROL, DAVE = ("%s@%s" % (n, SINK) for n in ("alice", "bob", "carol", "dave"))
TRAP = "trap@" + SINK
MAILBOXES = [ALICE, BOB, CAROL, DAVE, TRAP]
HEADER = "X-Greylist"

GREYLIST = {"mode": "enforce", "delay": "%ds" % DELAY, "header": True}
CONFIG = {
    "traps": {"addresses": [TRAP], "action": "discard", "on_mixed": "deliver-others"},
    "blocklist": {"keys": ["sender", "client_address"]},
    "greylist": GREYLIST,
}
# spamtrapd's default blocklist.reject, as the milter sends it.
BLOCKED = "5.7.1 Sender is blocklisted after mail to a spamtrap"
GREYLISTED = re.compile(r"Greylisted, try again in (\d+) seconds$")


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


def sleep_past_delay(answered_at):
    """Sleep until PAST_DELAY after answered_at (time.monotonic() once the first attempt was answered)."""
    left = answered_at + PAST_DELAY - time.monotonic()
    if left > 0:
        time.sleep(left)


def dump_logs_on_failure(test):
    """On failure print what each Postfix and spamtrapd of the class logged during the test."""

    @functools.wraps(test)
    def wrapper(self):
        marks = [(pf, pf.log_mark()) for pf in self.postfixes()] + [(d, d.log_mark()) for d in self.daemons()]
        try:
            test(self)
        except BaseException:
            time.sleep(0.2)  # postlogd writes the maillog asynchronously
            for thing, mark in marks:
                if isinstance(thing, ph.PostfixInstance):
                    sys.stderr.write("\n=== %s: Postfix %s maillog ===\n%s" % (self.id(), thing.dir,
                                                                             thing.maillog(since=mark)))
                else:
                    sys.stderr.write("\n=== %s: spamtrapd %s log ===\n%s" % (self.id(), thing.dir,
                                                                           thing.log_since(mark)))
            raise

    return wrapper


class GreylistCase(unittest.TestCase):
    """Helpers; the subclasses say how their front end shows each answer."""

    pf = None
    daemon = None

    @classmethod
    def postfixes(cls):
        return [cls.pf] if cls.pf else []

    @classmethod
    def daemons(cls):
        return [cls.daemon] if cls.daemon else []

    @classmethod
    def tearDownClass(cls):
        problems = []
        try:
            for pf in cls.postfixes():
                problems += re.findall(r".*(?:warning|error|fatal).*milter.*", pf.maillog())
                pf.cleanup()
        finally:
            for d in cls.daemons():
                try:
                    d.stop()  # raises on a non-zero exit (an ASan report, a crash)
                    if "connection(s) open" in d.log():  # a milter context never closed
                        problems.append(d.log()[-2000:])
                finally:
                    d.cleanup()
        if problems:
            raise AssertionError("Postfix complained about the milter, or contexts were left open:\n"
                                 + "\n".join(problems))

    def send(self, sender, rcpts, client, pf=None, **kw):
        return (pf or self.pf).smtp(sender, rcpts, client=client, **kw)

    # ---- what the SMTP client sees ----

    def greylist_text(self, reply, rcpt):
        """The greylist part of reply's text; the front end's framing checked."""
        raise NotImplementedError

    def assert_greylisted(self, result, rcpt, seconds=None):
        """rcpt got 450 4.2.0 Greylisted, try again in N seconds: N == seconds, or 1..DELAY."""
        reply = result.rcpt[rcpt]
        self.assertEqual(reply.code, 450, result)
        m = GREYLISTED.search(self.greylist_text(reply, rcpt))
        self.assertTrue(m, result)
        if seconds is not None:
            self.assertEqual(int(m.group(1)), seconds, result)
        else:
            self.assertTrue(1 <= int(m.group(1)) <= DELAY, result)

    def assert_accepted(self, result, *rcpts):
        for rcpt in rcpts:
            self.assertEqual(result.rcpt[rcpt].code, 250, result)

    def assert_delivered(self, result, to, not_to=(), pf=None):
        """result's message reached every mailbox of to, and, once the queue is empty, none of not_to."""
        pf = pf or self.pf
        self.assertTrue(result.accepted, result)
        for mailbox in to:
            pf.wait_delivered(mailbox, message_id=result.message_id)
        pf.wait_queue_empty()
        for mailbox in not_to:
            self.assertNotIn(result.message_id, pf.delivered_ids(mailbox), "%s got it: %s" % (mailbox, result))

    def delivered_copy(self, mailbox, result, pf=None):
        for msg in (pf or self.pf).delivered(mailbox):
            if msg.get("Message-ID") == result.message_id:
                return msg
        self.fail("%s has no copy of %s" % (mailbox, result))

    def assert_header_once(self, result, mailboxes, pf=None):
        for mailbox in mailboxes:
            headers = self.delivered_copy(mailbox, result, pf).get_all(HEADER) or []
            self.assertEqual(len(headers), 1, "%s: %s headers %r" % (mailbox, HEADER, headers))
            self.assertRegex(headers[0], r"^delayed \d+ seconds by spamtrapd; ")

    def assert_no_header(self, result, mailboxes, pf=None):
        for mailbox in mailboxes:
            self.assertIsNone(self.delivered_copy(mailbox, result, pf).get(HEADER), mailbox)

    def callout(self, sender, rcpt, client, service="default", pf=None):
        """A sender-verification callout: MAIL FROM, RCPT TO, then QUIT. Returns RCPT's reply."""
        pf = pf or self.pf
        conn = smtplib.SMTP("127.0.0.1", pf.ports[service], timeout=30)
        try:
            conn.ehlo("callout.example.test")
            self.assertEqual(conn.docmd("XCLIENT", "ADDR=" + client)[0], 220)
            conn.ehlo("callout.example.test")
            self.assertEqual(conn.mail(sender)[0], 250)
            code, text = conn.rcpt(rcpt)
            return ph.Reply(code, text.decode("utf-8", "replace"))
        finally:
            conn.quit()


class FrontEndScenarios:
    """The rows both front ends must pass; the class says how its front end answers a trap,
    a blocklisted sender and the null sender at DATA."""

    @dump_logs_on_failure
    def test_a_first_attempt_early_retry_then_delivered_with_one_header(self):
        sender, client = "news-a@sender-a.test", self.net + ".10"
        first = self.send(sender, [ALICE, CAROL], client)
        self.assertEqual(first.mail.code, 250, first)
        self.assert_greylisted(first, ALICE, seconds=DELAY)  # a new triplet waits the whole delay
        self.assert_greylisted(first, CAROL, seconds=DELAY)
        self.assertIsNone(first.data, first)
        answered = time.monotonic()

        early = self.send(sender, [ALICE, CAROL], client)
        self.assert_greylisted(early, ALICE)
        self.assert_greylisted(early, CAROL)

        sleep_past_delay(answered)
        # Another host of the client's /24 (ipv4_prefix 24): the same triplets.
        retry = self.send(sender, [ALICE, CAROL], self.net + ".11")
        self.assert_accepted(retry, ALICE, CAROL)
        self.assert_delivered(retry, [ALICE, CAROL])
        # Both triplets passed in this message: one header all the same.
        self.assert_header_once(retry, [ALICE, CAROL])

        # One transaction, a passed triplet and a new one: each recipient is judged on its own.
        mixed = self.send(sender, [ALICE, BOB], client)
        self.assert_accepted(mixed, ALICE)
        self.assert_greylisted(mixed, BOB, seconds=DELAY)
        self.assert_delivered(mixed, [ALICE], not_to=[BOB])
        self.assert_no_header(mixed, [ALICE])  # its triplet passed before, not just now

    @dump_logs_on_failure
    def test_b_trap_recipient_of_a_greylisted_client_is_caught(self):
        sender, client = "spam-b@bad-b.test", self.net + ".20"
        r = self.send(sender, [ALICE, TRAP], client)
        self.assert_greylisted(r, ALICE, seconds=DELAY)
        self.assert_trap_answer(r)
        self.pf.wait_queue_empty()
        self.assertEqual(self.pf.delivered_ids(TRAP), [], r)
        self.assertNotIn(r.message_id, self.pf.delivered_ids(ALICE), r)
        # The hit blocklisted the client and the sender: never mind the greylist now.
        self.assert_blocklisted_at_mail("fresh-b@other-b.test", client)
        self.assert_blocklisted_at_mail(sender, self.net2 + ".20")

    @dump_logs_on_failure
    def test_c_null_sender_deferred_at_data_callout_answered(self):
        client = self.net + ".30"
        # A callout (RCPT TO, then QUIT) gets its answer...
        self.assertEqual(self.callout("", DAVE, client).code, 250)
        # ...and a bounce is deferred at DATA, not at RCPT TO.
        bounce = self.send("", [CAROL], client)
        self.assertEqual(bounce.mail.code, 250, bounce)
        self.assert_accepted(bounce, CAROL)
        self.assert_deferred_at_data(bounce)
        answered = time.monotonic()
        self.assertFalse(bounce.accepted, bounce)
        early = self.send("", [CAROL], client)
        self.assert_accepted(early, CAROL)
        self.assert_deferred_at_data(early)

        # Its triplet was recorded at RCPT TO: the retry after the delay is delivered.
        sleep_past_delay(answered)
        retry = self.send("", [CAROL], client)
        self.assert_accepted(retry, CAROL)
        self.assertEqual(retry.data.code, 354, retry)
        self.assert_delivered(retry, [CAROL])
        # The callout's triplet too (recorded at RCPT TO, as any other).
        callout_retry = self.send("", [DAVE], client)
        self.assert_delivered(callout_retry, [DAVE])

    @dump_logs_on_failure
    def test_d_authenticated_client_is_not_greylisted(self):
        r = self.send("user-d@sink-d.test", [ALICE, BOB], self.net + ".40", xclient={"LOGIN": "user-d"})
        self.assert_accepted(r, ALICE, BOB)
        self.assert_delivered(r, [ALICE, BOB])
        self.assert_no_header(r, [ALICE, BOB])
        # The same sender and recipients unauthenticated, from the same address: a new triplet.
        r = self.send("user-d@sink-d.test", [ALICE], self.net + ".40")
        self.assert_greylisted(r, ALICE, seconds=DELAY)


class GreylistMilterTest(FrontEndScenarios, GreylistCase):
    net, net2 = "192.0.2", "198.51.100"

    @classmethod
    def setUpClass(cls):
        ph.require_postfix()
        cls.daemon = sh.Spamtrapd(CONFIG, roles=(), milter=True)
        cls.pf = ph.PostfixInstance(
            mailboxes=MAILBOXES,
            params={"smtpd_milters": "inet:127.0.0.1:%d" % cls.daemon.milter_port(),
                    "milter_default_action": "tempfail"})
        try:
            cls.daemon.start()
            wait_milter_port(cls.daemon)
            cls.pf.start()
        except BaseException:
            cls.tearDownClass()
            raise

    def greylist_text(self, reply, rcpt):
        # smfi_setreply's text reaches the client as written.
        self.assertTrue(reply.text.startswith("4.2.0 Greylisted, try again in "), reply)
        return reply.text

    def assert_trap_answer(self, r):
        # traps.action discard: the trap RCPT is accepted and its copy dropped at end of message.
        self.assert_accepted(r, TRAP)
        self.assertTrue(r.accepted, r)

    def assert_blocklisted_at_mail(self, sender, client):
        r = self.send(sender, [ALICE], client)
        self.assertEqual(r.mail.code, 550, r)
        self.assertEqual(r.mail.text, BLOCKED, r)

    def assert_deferred_at_data(self, r):
        self.assertEqual(r.data.code, 450, r)
        self.assertTrue(r.data.text.startswith("4.2.0 Greylisted, try again in "), r)
        self.assertTrue(1 <= int(GREYLISTED.search(r.data.text).group(1)) <= DELAY, r)


REJECT_TEXT = "e2e: sender blocklisted after mail to a spamtrap"


class GreylistPolicyTest(FrontEndScenarios, GreylistCase):
    net, net2 = "203.0.113", "198.18.0"

    @classmethod
    def setUpClass(cls):
        ph.require_postfix()
        cls.daemon = sh.Spamtrapd(sh.merge(CONFIG, {"blocklist": {"reject": "550 5.7.1 " + REJECT_TEXT}}))
        trap = "check_policy_service inet:127.0.0.1:%d" % cls.daemon.policy_port("trap")
        cls.pf = ph.PostfixInstance(
            mailboxes=MAILBOXES,
            params={
                "smtpd_sender_restrictions": "check_policy_service inet:127.0.0.1:%d"
                                             % cls.daemon.policy_port("sender"),
                "smtpd_recipient_restrictions": trap + ", permit_mynetworks, reject_unauth_destination",
                "smtpd_data_restrictions": trap,
            },
            services={"nodelay": {"smtpd_delay_reject": "no"}})
        try:
            cls.daemon.start()
            cls.pf.start()
        except BaseException:
            cls.tearDownClass()
            raise

    def greylist_text(self, reply, rcpt):
        # DEFER_IF_PERMIT 4.2.0 text: Postfix frames it as a recipient restriction's answer.
        prefix = "4.2.0 <%s>: Recipient address rejected: " % rcpt
        self.assertTrue(reply.text.startswith(prefix), reply)
        return reply.text[len(prefix):]

    def assert_trap_answer(self, r):
        # traps.action discard on the policy side (on_mixed deliver-others): unknown user.
        reply = r.rcpt[TRAP]
        self.assertEqual(reply.code, 550, r)
        self.assertTrue(reply.text.startswith("5.1.1 <%s>: Recipient address rejected:" % TRAP), r)

    def assert_blocklisted_at_mail(self, sender, client):
        r = self.send(sender, [ALICE], client, service="nodelay")
        self.assertEqual(r.mail, (550, "5.7.1 <%s>: Sender address rejected: %s" % (sender, REJECT_TEXT)), r)

    def assert_deferred_at_data(self, r):
        self.assertEqual(r.data.code, 450, r)
        m = re.fullmatch(r"4\.2\.0 <DATA>: Data command rejected: Greylisted, try again in (\d+) seconds", r.data.text)
        self.assertTrue(m, r)
        self.assertTrue(1 <= int(m.group(1)) <= DELAY, r)


class GreylistSharedRedisTest(GreylistCase):
    """Two MX hosts, A and B (a Postfix and a spamtrapd each), one redis-server."""

    pfs = ()
    ds = ()
    redis = None
    rdir = None

    @classmethod
    def postfixes(cls):
        return list(cls.pfs)

    @classmethod
    def daemons(cls):
        return list(cls.ds)

    @classmethod
    def setUpClass(cls):
        ph.require_postfix()
        cls.rdir = tempfile.mkdtemp(prefix="stgl-redis.")
        cls.redis = rh.RedisServer(cls.rdir).start()
        store = {"backend": "redis", "redis": {"host": "127.0.0.1", "port": cls.redis.port, "prefix": "gl:"}}
        cls.ds = [sh.Spamtrapd(sh.merge(CONFIG, {"store": store}), roles=("trap",), milter=True)
                  for _ in range(2)]
        cls.pfs = []
        for d in cls.ds:
            trap = "check_policy_service inet:127.0.0.1:%d" % d.policy_port("trap")
            cls.pfs.append(ph.PostfixInstance(
                mailboxes=MAILBOXES,
                params={"smtpd_recipient_restrictions": trap + ", permit_mynetworks, reject_unauth_destination",
                        "smtpd_data_restrictions": trap},
                services={"milter": {"smtpd_milters": "inet:127.0.0.1:%d" % d.milter_port(),
                                     "milter_default_action": "tempfail",
                                     "smtpd_recipient_restrictions": "permit_mynetworks, reject_unauth_destination",
                                     "smtpd_data_restrictions": "permit"}}))
        try:
            for d in cls.ds:
                d.start()
                wait_milter_port(d)
            for pf in cls.pfs:
                pf.start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            if cls.redis:
                cls.redis.stop()
            if cls.rdir:
                shutil.rmtree(cls.rdir, ignore_errors=True)

    def greylist_text(self, reply, rcpt):
        return reply.text

    @dump_logs_on_failure
    def test_a_first_attempt_at_one_host_retry_at_the_other(self):
        """The retry goes to the host that never saw the triplet: with a greylist of its own it would
        be a first attempt there (450); with the shared one it passes."""
        a, b = self.pfs
        # Milter: first attempt and an early retry at A, the retry after the delay at B.
        first = self.send("news-ra@sender-ra.test", [ALICE], "192.0.2.110", pf=a, service="milter")
        self.assert_greylisted(first, ALICE, seconds=DELAY)
        early = self.send("news-ra@sender-ra.test", [ALICE], "192.0.2.110", pf=a, service="milter")
        self.assert_greylisted(early, ALICE)
        # Policy: first attempt and an early retry at B, the retry after the delay at A.
        first = self.send("news-rb@sender-rb.test", [BOB], "192.0.2.120", pf=b)
        self.assert_greylisted(first, BOB, seconds=DELAY)
        early = self.send("news-rb@sender-rb.test", [BOB], "192.0.2.120", pf=b)
        self.assert_greylisted(early, BOB)
        answered = time.monotonic()

        sleep_past_delay(answered)
        retry = self.send("news-ra@sender-ra.test", [ALICE], "192.0.2.110", pf=b, service="milter")
        self.assert_accepted(retry, ALICE)
        self.assert_delivered(retry, [ALICE], pf=b)
        self.assert_header_once(retry, [ALICE], pf=b)
        retry = self.send("news-rb@sender-rb.test", [BOB], "192.0.2.120", pf=a)
        self.assert_accepted(retry, BOB)
        self.assert_delivered(retry, [BOB], pf=a)
        self.assert_header_once(retry, [BOB], pf=a)

    @dump_logs_on_failure
    def test_z_redis_down_mail_passes_ungreylisted_then_greylisting_resumes(self):
        """greylist.on_error continue (the default): a store outage never delays mail; back, it greylists again."""
        a, b = self.pfs
        marks = [d.log_mark() for d in self.ds]
        self.redis.stop()
        try:
            r = self.send("news-rz@sender-rz.test", [ALICE], "192.0.2.130", pf=a, service="milter")
            self.assert_accepted(r, ALICE)
            self.assert_delivered(r, [ALICE], pf=a)
            self.assert_no_header(r, [ALICE], pf=a)
            r = self.send("news-rz@sender-rz.test", [BOB], "192.0.2.130", pf=b)
            self.assert_accepted(r, BOB)
            self.assert_delivered(r, [BOB], pf=b)
            for d, mark in zip(self.ds, marks):
                self.assertTrue(d.count_log(r"store-error", mark), d.log_since(mark))
        finally:
            self.redis.start()  # same port, empty

        # Recovers by itself: a new triplet is greylisted again once the store reconnects.
        n = [0]

        def greylisted_again():
            n[0] += 1
            r = self.send("news-rz%d@sender-rz.test" % n[0], [CAROL], "192.0.2.131", pf=a, service="milter")
            return r.rcpt[CAROL].code == 450

        rh.wait_until(greylisted_again, sh.scaled(20), "greylisting back after Redis returned", interval=0.3)


if __name__ == "__main__":
    ph.require_postfix()
    unittest.main(verbosity=2)
