"""Integration tests of the greylist check (issue 13) through the policy
protocol: the real daemon, real SQLite files and a real redis-server.

Timers are short (greylist.delay 2s): a test sleeps past a delay where it
must, and never asserts how long anything took. Each test uses its own
sender, so that the tests of a class can share one daemon. The side-by-side
comparison with Debian's postgrey is test_greylist_postgrey.py; the real
Postfix end to end is tests/e2e/test_postfix_greylist.py.
"""

import re
import shutil
import time
import unittest

import redis_harness as rh
import spamtrapd_harness as sh

DELAY = 2
TRAP = "trap@example.com"
TRAP_REPLY = "550 5.1.1 User unknown"  # policy front end, discard + deliver-others
BLOCK_REPLY = "550 5.7.1 Sender is blocklisted after mail to a spamtrap"
GREY = {
    "traps": {"addresses": [TRAP]},
    "greylist": {"mode": "enforce", "delay": f"{DELAY}s", "header": True,
                 "clients": ["198.51.100.0/24"], "recipients": ["postmaster@"]},
}
DEFER = re.compile(r"^DEFER_IF_PERMIT 4\.2\.0 Greylisted, try again in (\d+) seconds$")
HEADER = re.compile(r"^PREPEND X-Greylist: delayed (\d+) seconds by spamtrapd; \w{3}, \d\d \w{3} \d{4} ")


def redis_store(redis):
    return rh.store_override(redis, "grey:")


def start_redis(case):
    return rh.start_server(case)


class GreyChecks(sh.PolicyChecks):
    def ask(self, d, sender, rcpt="user@example.com", client="192.0.2.10", **kw):
        return self.client(d, "trap").check(sender=sender, recipient=rcpt, client_address=client, **kw)

    def assert_deferred(self, action, at_most=DELAY):
        m = DEFER.match(action)
        self.assertIsNotNone(m, action)
        self.assertTrue(1 <= int(m.group(1)) <= at_most, action)

    def wait_delay(self):
        time.sleep(DELAY + 0.2)


class Behaviour(GreyChecks):
    """The same rows for every store (the subclasses start the daemon)."""

    def test_new_early_retry_then_pass_with_header_once(self):
        d, s = self.d, "alice@list.example"
        self.assert_deferred(self.ask(d, s))
        self.assert_deferred(self.ask(d, s))  # early retry
        self.wait_delay()
        inst = sh.new_instance()
        self.assertRegex(self.ask(d, s, instance=inst), HEADER)
        # the message's next recipient (same triplet for another recipient waits on its own)
        self.assert_deferred(self.ask(d, s, rcpt="other@example.com", instance=inst))
        # a later message of the passed triplet: no header, no wait
        self.assertEqual(self.ask(d, s), "DUNNO")

    def test_same_network_is_the_same_triplet(self):
        d, s = self.d, "bob@list.example"
        self.assert_deferred(self.ask(d, s, client="192.0.2.20"))
        self.wait_delay()
        self.assertRegex(self.ask(d, s, client="192.0.2.200"), HEADER)  # the same /24
        self.assert_deferred(self.ask(d, s, client="192.0.3.20"))  # another /24

    def test_sender_normalisation(self):
        d = self.d
        self.assert_deferred(self.ask(d, "bounce-123@news.example"))
        self.wait_delay()
        self.assertRegex(self.ask(d, "bounce-456@news.example"), HEADER)
        self.assertEqual(self.ask(d, "prvs=0123456789=bounce-789@news.example"), "DUNNO")

    def test_whitelists_and_sasl(self):
        d = self.d
        self.assertEqual(self.ask(d, "c@x.example", client="198.51.100.7"), "DUNNO")
        self.assertEqual(self.ask(d, "c@x.example", rcpt="postmaster@example.com"), "DUNNO")
        self.assertEqual(self.ask(d, "c@x.example", client="203.0.113.9", sasl_username="carol"), "DUNNO")
        self.assert_deferred(self.ask(d, "c@x.example", client="203.0.113.9"))

    def test_unreadable_recipients_are_greylisted(self):
        # Postfix delivers these to user@ (recipient_delimiter +) though spamtrapd cannot read them:
        # past the policy cap, and "user+<x"@ in Postfix's internal form. Each waits as any triplet.
        d, s = self.d, "ivan@x.example"
        for rcpt in ("user+" + "x" * 600 + "@example.com", "user+<x@example.com"):
            self.assert_deferred(self.ask(d, s, rcpt=rcpt))
        self.wait_delay()
        self.assertRegex(self.ask(d, s, rcpt="user+<x@example.com"), HEADER)

    def test_trap_recipient_of_a_greylisted_client_is_caught(self):
        d, s, client = self.d, "spammer@spam.example", "203.0.113.66"
        self.assert_deferred(self.ask(d, s, client=client))
        self.assertEqual(self.ask(d, s, rcpt=TRAP, client=client), TRAP_REPLY)
        self.assertEqual(self.sender_check(d, "someone@else.example", client), BLOCK_REPLY)

    def test_null_sender_is_deferred_at_data(self):
        d, client = self.d, "192.0.2.77"
        inst = sh.new_instance()
        # RCPT TO answered, so a callout (RCPT TO, QUIT) gets its 250
        self.assertEqual(self.ask(d, "", client=client, instance=inst), "DUNNO")
        c = self.client(d, "trap")
        self.assert_deferred(c.check(protocol_state="DATA", sender="", recipient="", client_address=client,
                                     instance=inst))
        # another message's DATA is not deferred
        self.assertEqual(c.check(protocol_state="DATA", sender="", recipient="", client_address=client), "DUNNO")
        self.wait_delay()
        inst = sh.new_instance()
        self.assertRegex(self.ask(d, "", client=client, instance=inst), HEADER)
        self.assertEqual(c.check(protocol_state="DATA", sender="", recipient="", client_address=client,
                                 instance=inst), "DUNNO")


class TestSqlite(Behaviour, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = sh.Spamtrapd(GREY)
        try:
            cls.d.start()
        except BaseException:
            cls.d.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()


class TestRedis(Behaviour, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.redis, cls.tmp = start_redis(None)
        cls.d = sh.Spamtrapd(sh.merge(GREY, redis_store(cls.redis)))
        try:
            cls.d.start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()
        cls.redis.kill()
        shutil.rmtree(cls.tmp, True)


class TestShared(GreyChecks, unittest.TestCase):
    """Two daemons on one Redis: one greylist for every MX host."""

    def test_first_attempt_at_a_retry_at_b(self):
        redis, _ = start_redis(self)
        a = sh.Spamtrapd(sh.merge(GREY, redis_store(redis)))
        b = sh.Spamtrapd(sh.merge(GREY, redis_store(redis)))
        for d in (a, b):
            self.addCleanup(d.cleanup)
            d.start()
        s = "dave@shared.example"
        self.assert_deferred(self.ask(a, s))
        self.assert_deferred(self.ask(b, s))  # B knows the first attempt: an early retry
        self.wait_delay()
        self.assertRegex(self.ask(b, s), HEADER)
        self.assertEqual(self.ask(a, s), "DUNNO")


class TestModesAndErrors(GreyChecks, unittest.TestCase):
    def test_shadow_defers_nothing_and_says_so(self):
        d = sh.Spamtrapd(sh.merge(GREY, {"greylist": {"mode": "shadow"}}))
        self.addCleanup(d.cleanup)
        d.start()
        mark = d.log_mark()
        self.assertEqual(self.ask(d, "erin@x.example"), "DUNNO")
        d.wait_for_log(r"shadow, would defer: greylisted result=new", since=mark)

    def test_off_by_default(self):
        d = sh.Spamtrapd({"traps": {"addresses": [TRAP]}})
        self.addCleanup(d.cleanup)
        d.start()
        self.assertEqual(self.ask(d, "frank@x.example"), "DUNNO")

    def test_store_outage_never_delays_mail_and_recovers(self):
        redis, _ = start_redis(self)
        d = sh.Spamtrapd(sh.merge(GREY, redis_store(redis)))
        self.addCleanup(d.cleanup)
        d.start()
        self.assert_deferred(self.ask(d, "gina@x.example"))
        redis.stop()
        mark = d.log_mark()
        self.assertEqual(self.ask(d, "gina@x.example"), "DUNNO")
        self.assertEqual(self.ask(d, "gina2@x.example"), "DUNNO")
        d.wait_for_log(r"continue: store-error", since=mark)
        redis.start()
        deadline = time.monotonic() + 10
        while True:  # the store reconnects by itself
            action = self.ask(d, "gina3@x.example")
            if action != "DUNNO" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assert_deferred(action)

    def test_on_error_tempfail(self):
        redis, _ = start_redis(self)
        d = sh.Spamtrapd(sh.merge(sh.merge(GREY, redis_store(redis)), {"greylist": {"on_error": "tempfail"}}))
        self.addCleanup(d.cleanup)
        d.start()
        redis.stop()
        self.assertEqual(self.ask(d, "hal@x.example"), "451 4.3.0 Temporary local problem, try again later")


if __name__ == "__main__":
    unittest.main(verbosity=2)
