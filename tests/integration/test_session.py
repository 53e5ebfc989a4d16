"""One representative daemon session: both front ends, both stores, spamtrapctl.

Short on purpose: ctest also runs it as valgrind.session, with spamtrapd
and spamtrapctl under valgrind (a plain build, docs/testing.md), where
every step takes some 20 to 50 times longer. It walks each path a real
site uses once, so a leak or a memory error on any of them shows up:

- SQLite: a trap hit through the policy trap listener, and one through the
  milter (the trap recipient is dropped at end of message); both senders
  then refused by both front ends; spamtrapctl add, lookup, list, remove;
  a reload (SIGHUP) with a new trap list; a clean stop.
- Redis (a real redis-server): a trap hit, the sender refused, spamtrapctl
  lookup on the shared entry, a clean stop.

Each daemon must exit 0 with no sanitizer or valgrind report (the harness
and run_checked.py see to the reports).
"""

import shutil
import tempfile
import unittest

import redis_harness as rh
import spamtrapd_harness as sh
from milter_client import MilterClient

TRAP = "trap@example.com"
TRAP_REPLY = "550 5.1.1 User unknown"
REJECT = "550 5.7.1 Blocked after mail to a spamtrap (session test)"
CONFIG = {"traps": {"addresses": [TRAP]}, "blocklist": {"reject": REJECT}}


class Session(sh.PolicyChecks, unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="spamtrapd-session.")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def start(self, config, milter=False):
        d = sh.Spamtrapd(sh.merge(CONFIG, config), milter=milter)
        self.addCleanup(d.cleanup)
        d.start()
        if milter:
            rh.wait_until(lambda: self.milter_up(d), sh.START_TIMEOUT, "the milter socket")
        return d

    @staticmethod
    def milter_up(d):
        try:
            MilterClient.open(d.config["milter"]["listen"], timeout=1.0).close()
            return True
        except OSError:
            return False

    def milter_session(self, d, client, sender, rcpts, queue_id):
        """One SMTP session as Postfix's milter client: the MAIL reply, and the end-of-message reply
        (None when MAIL was refused)."""
        with MilterClient.open(d.config["milter"]["listen"], timeout=sh.scaled(10.0)) as m:
            m.negotiate()
            m.connect("client.test", client)
            m.helo("client.test")
            mail = m.mail(f"<{sender}>", macros={"i": queue_id})
            if mail.verdict != "continue":
                return mail, None
            for r in rcpts:
                m.rcpt(f"<{r}>", macros={"i": queue_id})
            return mail, m.message(macros={"i": queue_id})

    def test_sqlite_policy_milter_ctl_reload(self):
        d = self.start({}, milter=True)
        self.assertEqual(self.trap_hit(d, "spam@policy.test", "192.0.2.10"), TRAP_REPLY)
        mail, end = self.milter_session(d, "192.0.2.20", "spam@milter.test", [TRAP, "user@example.com"], "QID1")
        self.assertEqual(mail.verdict, "continue")
        self.assertEqual(end.deleted, [f"<{TRAP}>"])
        for sender in ("spam@policy.test", "spam@milter.test"):
            self.assertEqual(self.sender_check(d, sender, "203.0.113.1"), REJECT)
            mail, _ = self.milter_session(d, "203.0.113.1", sender, ["user@example.com"], "QID2")
            self.assertEqual(mail.smtp, REJECT)

        self.assertRegex(d.ctl("add", "manual@bad.test").stdout, "^added manual@bad.test")
        self.assertIn("manual@bad.test", d.ctl("lookup", "manual@bad.test").stdout)
        listed = d.ctl("list").stdout
        for key in ("spam@policy.test", "192.0.2.10", "spam@milter.test", "192.0.2.20", "manual@bad.test"):
            self.assertIn(key, listed)
        self.assertEqual(d.ctl("remove", "manual@bad.test").stdout, "removed manual@bad.test\n")
        self.assertEqual(self.sender_check(d, "manual@bad.test", "198.51.100.1"), "DUNNO")

        self.assertTrue(d.reload({"traps": {"addresses": [TRAP, "trap2@example.com"]}}))
        hit = self.client(d, "trap").check(sender="late@policy.test", recipient="trap2@example.com",
                                           client_address="192.0.2.30")
        self.assertEqual(hit, TRAP_REPLY)
        d.stop()

    def test_redis(self):
        redis = rh.RedisServer(self.dir).start()
        self.addCleanup(redis.kill)
        d = self.start({"store": {"backend": "redis", "redis": {"host": "127.0.0.1", "port": redis.port}}})
        self.assertEqual(self.trap_hit(d, "spam@redis.test", "192.0.2.40"), TRAP_REPLY)
        self.assertEqual(self.sender_check(d, "spam@redis.test", "203.0.113.2"), REJECT)
        self.assertIn("spam@redis.test", d.ctl("lookup", "spam@redis.test").stdout)
        d.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
