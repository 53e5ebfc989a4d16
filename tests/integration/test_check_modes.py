"""Per-check modes (SPEC.md "Checks"): enforce, shadow, off, on both front ends.

Each check has SECTION.mode. A shadow check decides and logs "shadow,
would ..." and changes nothing; top-level "mode": "dry-run" makes every
check shadow and logs "dry-run, would ..."; an off check never runs. The
same sessions run through the milter (tests/lib/milter_client.py playing
Postfix) and the policy protocol (a `full` listener), against the real
daemon with a real SQLite file.
"""

import unittest

import spamtrapd_harness as sh
from milter_client import MilterClient

TRAP = "trap@example.com"
REJECT = "550 5.7.1 Sender is blocklisted after mail to a spamtrap"


class Milter:
    """One SMTP session through the milter front end."""

    def __init__(self, daemon, client, sender):
        self.conn = MilterClient.open(daemon.config["milter"]["listen"])
        self.conn.negotiate()
        self.conn.connect("mx.sender.test", client)
        self.conn.helo("mx.sender.test")
        self.sender = sender

    def mail(self):
        r = self.conn.mail(f"<{self.sender}>", macros={"i": "QM1"})
        return "continue" if r.verdict == "continue" else r.smtp

    def rcpt(self, rcpt):
        r = self.conn.rcpt(f"<{rcpt}>", macros={"i": "QM1"})
        return "continue" if r.verdict == "continue" else r.smtp

    def end(self):
        r = self.conn.message(macros={"i": "QM1"})
        self.conn.quit()
        return r


class ModesCase(unittest.TestCase):
    CONFIG = {}

    @classmethod
    def setUpClass(cls):
        config = sh.merge({"traps": {"addresses": [TRAP]}}, cls.CONFIG)
        cls.d = sh.Spamtrapd(config, roles=("full",), milter=True)
        try:
            cls.d.start()
        except BaseException:
            cls.d.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def policy(self, **kw):
        c = sh.PolicyClient(self.d.policy_address("full"))
        self.addCleanup(c.close)
        return c.check(**kw)

    def listed(self, key):
        out = self.d.ctl("list").stdout
        return any(line.split("\t")[0] == key for line in out.splitlines())


class TrapsShadow(ModesCase):
    """traps.mode shadow: the hit is recorded (the point of trying it), the recipient is not touched."""

    CONFIG = {"traps": {"mode": "shadow"}}

    def test_policy(self):
        mark = self.d.log_mark()
        self.assertEqual(self.policy(sender="s1@spam.test", client_address="192.0.2.31", recipient=TRAP), "DUNNO")
        self.d.wait_for_log(r"shadow, would reject: trap trap=trap@example\.com .*client=192\.0\.2\.31", since=mark)
        self.assertTrue(self.listed("s1@spam.test"))
        # The blocklist still enforces: the next message from the sender is refused.
        self.assertEqual(self.policy(sender="s1@spam.test", client_address="192.0.2.131",
                                     protocol_state="MAIL", recipient=None), REJECT)

    def test_milter(self):
        mark = self.d.log_mark()
        m = Milter(self.d, "192.0.2.32", "s2@spam.test")
        self.assertEqual(m.mail(), "continue")
        self.assertEqual(m.rcpt(TRAP), "continue")
        end = m.end()
        self.assertEqual(end.verdict, "continue")
        self.assertEqual(end.deleted, [])  # the trap's copy is not dropped
        self.d.wait_for_log(r"shadow, would drop-copy: trap trap=trap@example\.com .*front=milter", since=mark)
        self.assertTrue(self.listed("192.0.2.32"))


class BlocklistShadow(ModesCase):
    """blocklist.mode shadow: a listed sender passes, logged as "shadow, would reject"."""

    CONFIG = {"blocklist": {"mode": "shadow"}}

    def test_both_fronts(self):
        self.d.ctl("add", "listed@spam.test")
        mark = self.d.log_mark()
        self.assertEqual(self.policy(sender="listed@spam.test", client_address="192.0.2.33",
                                     protocol_state="MAIL", recipient=None), "DUNNO")
        m = Milter(self.d, "192.0.2.34", "listed@spam.test")
        self.assertEqual(m.mail(), "continue")
        self.assertEqual(m.rcpt("user@example.net"), "continue")
        m.end()
        self.d.wait_for_log(r"shadow, would reject: blocklisted key=listed@spam\.test .*front=policy", since=mark)
        self.d.wait_for_log(r"shadow, would reject: blocklisted key=listed@spam\.test .*front=milter", since=mark)
        # The trap check still enforces.
        self.assertEqual(self.policy(sender="s3@spam.test", client_address="192.0.2.35", recipient=TRAP),
                         "550 5.1.1 User unknown")


class BlocklistOff(ModesCase):
    """blocklist.mode off: no lookup, no line; trap hits are still recorded."""

    CONFIG = {"blocklist": {"mode": "off"}}

    def test_both_fronts(self):
        self.d.ctl("add", "off@spam.test")
        mark = self.d.log_mark()
        self.assertEqual(self.policy(sender="off@spam.test", client_address="192.0.2.36",
                                     protocol_state="MAIL", recipient=None), "DUNNO")
        m = Milter(self.d, "192.0.2.37", "off@spam.test")
        self.assertEqual(m.mail(), "continue")
        self.assertEqual(m.rcpt("user@example.net"), "continue")
        m.end()
        self.assertEqual(self.policy(sender="s4@spam.test", client_address="192.0.2.38", recipient=TRAP),
                         "550 5.1.1 User unknown")
        self.d.wait_for_log(r"reject: trap trap=trap@example\.com .*client=192\.0\.2\.38", since=mark)
        self.assertEqual(self.d.count_log(r"blocklisted key=off@spam\.test", since=mark), 0)
        self.assertTrue(self.listed("s4@spam.test"))


class TopLevelDryRun(ModesCase):
    """mode dry-run makes every check shadow, and says "dry-run"."""

    CONFIG = {"mode": "dry-run"}

    def test_policy(self):
        self.d.ctl("add", "dry@spam.test")
        mark = self.d.log_mark()
        self.assertEqual(self.policy(sender="dry@spam.test", client_address="192.0.2.39",
                                     protocol_state="MAIL", recipient=None), "DUNNO")
        self.assertEqual(self.policy(sender="s5@spam.test", client_address="192.0.2.40", recipient=TRAP), "DUNNO")
        self.d.wait_for_log(r"dry-run, would reject: blocklisted key=dry@spam\.test", since=mark)
        self.d.wait_for_log(r"dry-run, would reject: trap trap=trap@example\.com .*client=192\.0\.2\.40", since=mark)
        self.assertEqual(self.d.count_log(r"shadow, would", since=mark), 0)


class ModeConfig(unittest.TestCase):
    """A bad mode is named with file, line and column; every check that has a mode takes the three."""

    def check_config(self, config):
        d = sh.Spamtrapd(config)
        self.addCleanup(d.cleanup)
        return d.run_until_exit("-t"), d.log()

    def test_bad_mode(self):
        code, log = self.check_config({"blocklist": {"mode": "dry-run"}})
        self.assertEqual(code, 1)
        self.assertRegex(log, r"spamtrapd\.json:\d+:\d+: blocklist\.mode: expected one of off, shadow, enforce")

    def test_every_mode(self):
        for mode in ("off", "shadow", "enforce"):
            code, log = self.check_config({"traps": {"mode": mode}, "blocklist": {"mode": mode}})
            self.assertEqual(code, 0, log)

    def test_shadow_traps_with_enforcing_blocklist_warns(self):
        code, log = self.check_config({"traps": {"mode": "shadow"}})
        self.assertEqual(code, 0, log)
        self.assertIn("traps.mode is shadow but blocklist.mode is enforce", log)
        code, log = self.check_config({"traps": {"mode": "shadow"}, "blocklist": {"mode": "shadow"}})
        self.assertNotIn("traps.mode is shadow", log)

    def test_whitelist_has_no_mode(self):
        code, log = self.check_config({"whitelist": {"mode": "off"}})
        self.assertEqual(code, 1)
        self.assertIn("whitelist.mode: unknown key", log)


if __name__ == "__main__":
    unittest.main(verbosity=2)
