"""Integration tests of the Redis store: real spamtrapd daemons sharing one
real redis-server, the way the MX hosts of one site do.

Each test starts its own redis-server on a free loopback port (no
persistence, so a restarted server is empty) and the daemons it needs,
speaks the Postfix policy protocol to their trap and sender ports, and
stops everything by PID. Covered: a trap hit at instance A blocks the sender
at instance B; spamtrapctl sees the shared entry; Redis killed, hung and
restarted under running daemons (store.on_error accept and tempfail, with
rate-limited error logging and recovery without a restart); key prefixes
keeping two sites apart on one server. A missing redis-server fails.
"""

import shutil
import signal
import tempfile
import time
import unittest

import redis_harness as rh
import spamtrapd_harness as sh

REJECT_TEXT = "550 5.7.1 Blocked here after mail to a spamtrap (redis test)"
TRAP = "trap@example.com"
TRAP_REPLY = "550 5.1.1 User unknown"  # action discard, on_mixed deliver-others, policy front end
TEMPFAIL = "450 4.7.1"
# Generous bound on one answer while Redis is down or hung: the store gives up
# after the timeouts below (300 ms); this only catches a hang.
ANSWER_BOUND = 5.0
RECOVERY_TIMEOUT = 20.0  # the store's back-off is at most 5 s


class RedisCase(rh.RecoveryChecks, unittest.TestCase):
    """A fresh redis-server per test; daemons made by daemon() are stopped (cleanly) after it."""
    REJECT_TEXT = REJECT_TEXT
    RECOVERY_TIMEOUT = RECOVERY_TIMEOUT

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="spamtrapd-redis.")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.redis = rh.RedisServer(self.dir).start()
        self.addCleanup(self.redis.kill)

    def daemon(self, prefix="site1:", on_error="accept", roles=("trap", "sender")):
        config = {
            "traps": {"addresses": [TRAP]},
            "blocklist": {"reject": REJECT_TEXT},
            "store": {
                "backend": "redis",
                "on_error": on_error,
                "redis": {"host": "127.0.0.1", "port": self.redis.port, "prefix": prefix,
                          "connect_timeout": 300, "command_timeout": 300},
            },
        }
        d = sh.Spamtrapd(config, roles=roles)
        self.addCleanup(d.cleanup)
        return d.start()

    def timed_checks(self, client, n, **attrs):
        """n requests on one connection; returns the answers, failing if one takes ANSWER_BOUND or more."""
        answers = []
        for i in range(n):
            start = time.monotonic()
            answers.append(client.check(**attrs))
            took = time.monotonic() - start
            self.assertLess(took, ANSWER_BOUND, f"request {i} took {took:.2f} s")
        return answers


class TestSharedBlocklist(RedisCase):
    def test_hit_at_one_instance_rejects_at_the_other(self):
        a, b = self.daemon(), self.daemon()
        self.assertEqual(self.sender_check(b, "spam@bad.test", "203.0.113.5"), "DUNNO")
        self.assertEqual(self.trap_hit(a, "spam@bad.test", "192.0.2.50"), TRAP_REPLY)
        a.wait_for_log(r"trap=trap@example\.com blocklisted=spam@bad\.test,192\.0\.2\.50")
        # B never saw the trap hit: by the sender, and by the client address
        self.assertEqual(self.sender_check(b, "spam@bad.test", "203.0.113.5"), REJECT_TEXT)
        self.assertEqual(self.sender_check(b, "innocent@other.test", "192.0.2.50"), REJECT_TEXT)
        self.assertEqual(self.sender_check(b, "innocent@other.test", "192.0.2.51"), "DUNNO")
        b.wait_for_log(r"reject: blocklisted key=spam@bad\.test trap=trap@example\.com hits=1")
        # the entry is where docs/redis.md says, with Redis's own expiry
        self.assertEqual(self.redis.command("HGET", "site1:bl:spam@bad.test", "trap"), TRAP)
        self.assertGreater(self.redis.command("TTL", "site1:bl:spam@bad.test"), 86000)

    def test_spamtrapctl_lists_the_shared_entry(self):
        a, b = self.daemon(), self.daemon()
        self.trap_hit(a, "listed@bad.test", "192.0.2.52")
        a.wait_for_log(r"blocklisted=listed@bad\.test")
        rows = [line.split("\t") for line in b.ctl("list").stdout.splitlines()]
        self.assertEqual(sorted(r[0] for r in rows), ["192.0.2.52", "listed@bad.test"])
        for row in rows:
            self.assertEqual((row[2], row[4], row[5]), ("1", TRAP, "trap"))
        out = b.ctl("lookup", "Listed@Bad.test").stdout
        self.assertIn("listed@bad.test: blocklisted until", out)
        self.assertIn("trap:       " + TRAP, out)
        # removed through B's config: A stops rejecting
        b.ctl("remove", "listed@bad.test")
        self.assertEqual(self.sender_check(a, "listed@bad.test", "203.0.113.52"), "DUNNO")

    def test_prefixes_keep_sites_apart(self):
        one, two = self.daemon(prefix="site1:"), self.daemon(prefix="site2:")
        self.trap_hit(one, "x@bad.test", "192.0.2.53")
        one.wait_for_log(r"blocklisted=x@bad\.test")
        self.trap_hit(two, "y@bad.test", "192.0.2.54")
        two.wait_for_log(r"blocklisted=y@bad\.test")
        self.assertEqual(self.sender_check(one, "x@bad.test", "203.0.113.53"), REJECT_TEXT)
        self.assertEqual(self.sender_check(one, "y@bad.test", "203.0.113.54"), "DUNNO")
        self.assertEqual(self.sender_check(two, "y@bad.test", "203.0.113.54"), REJECT_TEXT)
        self.assertEqual(self.sender_check(two, "x@bad.test", "203.0.113.53"), "DUNNO")
        self.assertEqual(self.sender_check(two, "z@ok.test", "192.0.2.53"), "DUNNO")
        self.assertEqual([l.split("\t")[0] for l in one.ctl("list").stdout.splitlines()],
                         ["192.0.2.53", "x@bad.test"])
        self.assertEqual([l.split("\t")[0] for l in two.ctl("list").stdout.splitlines()],
                         ["192.0.2.54", "y@bad.test"])
        # Entries only: each prefix also holds its network-lengths hash (PREFIXnetlens).
        entries = [k for k in self.redis.command("KEYS", "*") if ":bl:" in k]
        self.assertEqual(sorted(entries),
                         ["site1:bl:192.0.2.53", "site1:bl:x@bad.test", "site2:bl:192.0.2.54",
                          "site2:bl:y@bad.test"])
        self.assertFalse([k for k in self.redis.command("KEYS", "*")
                          if not k.startswith("site1:") and not k.startswith("site2:")])


class TestRedisOutage(RedisCase):
    REQUESTS = 30

    def test_killed_accept_then_restarted(self):
        a, b = self.daemon(), self.daemon()
        pids = (a.proc.pid, b.proc.pid)
        self.trap_hit(a, "before@bad.test", "192.0.2.60")
        self.assertEqual(self.sender_check(b, "before@bad.test", "203.0.113.60"), REJECT_TEXT)
        mark_a, mark_b = a.log_mark(), b.log_mark()

        self.redis.stop(signal.SIGKILL)
        answers = self.timed_checks(self.client(b, "sender"), self.REQUESTS, sender="before@bad.test",
                                    client_address="203.0.113.60")
        self.assertEqual(answers, ["DUNNO"] * self.REQUESTS)
        # a trap hit still gets the trap's answer; recording it fails (logged)
        self.assertEqual(self.timed_checks(self.client(a, "trap"), 3, sender="during@bad.test",
                                           recipient=TRAP, client_address="192.0.2.61"), [TRAP_REPLY] * 3)
        a.wait_for_log(r"blocklisted=none \(store error\)", since=mark_a)
        a.wait_for_log(r"store update failed: redis 127\.0\.0\.1:%d" % self.redis.port, since=mark_a)
        # The start-up purge may still be running (a slow machine, valgrind): its error can take
        # the one rate-limited error line.
        b.wait_for_log(r"store (lookup|purge) failed: redis 127\.0\.0\.1:%d" % self.redis.port, since=mark_b)
        errors = b.count_log(r"store lookup failed", since=mark_b)
        self.assertLess(errors, self.REQUESTS, "store errors are logged at a limited rate")
        self.assertEqual(b.count_log(r"continue: store-error", since=mark_b), self.REQUESTS)
        self.assertTrue(a.running() and b.running())

        # The same port, empty (no persistence): blocking resumes, no restart of spamtrapd.
        self.redis.start()
        mark_a = a.log_mark()
        self.wait_recorded(a, "after@bad.test", "192.0.2.62", since=mark_a)
        self.wait_rejected(b, "after@bad.test", "203.0.113.62")
        self.assertEqual(self.redis.command("HGET", "site1:bl:after@bad.test", "hits"), "1")
        # the entry made before the outage went with the old server
        self.assertEqual(self.sender_check(b, "before@bad.test", "203.0.113.63"), "DUNNO")
        self.assertEqual((a.proc.pid, b.proc.pid), pids)
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def test_hung_redis_costs_at_most_the_timeout(self):
        a, b = self.daemon(), self.daemon()
        self.trap_hit(a, "hung@bad.test", "192.0.2.64")
        self.assertEqual(self.sender_check(b, "hung@bad.test", "203.0.113.64"), REJECT_TEXT)
        mark_b = b.log_mark()
        self.redis.pause()
        try:
            answers = self.timed_checks(self.client(b, "sender"), 10, sender="hung@bad.test",
                                        client_address="203.0.113.64")
        finally:
            self.redis.resume()
        self.assertEqual(answers, ["DUNNO"] * 10)
        b.wait_for_log(r"store (lookup|purge) failed: .*(timed out|Resource temporarily unavailable)",
                       since=mark_b)  # (lookup|purge): see test_killed_accept_then_restarted
        self.wait_rejected(b, "hung@bad.test", "203.0.113.64")
        self.assertTrue(a.running() and b.running())

    def test_tempfail_while_down(self):
        d = self.daemon(on_error="tempfail")
        pid = d.proc.pid
        self.assertEqual(self.sender_check(d, "fine@good.test", "203.0.113.70"), "DUNNO")
        mark = d.log_mark()
        self.redis.stop(signal.SIGTERM)
        for answer in self.timed_checks(self.client(d, "sender"), 10, sender="fine@good.test",
                                        client_address="203.0.113.70"):
            self.assertTrue(answer.startswith(TEMPFAIL + " "), answer)
        # a trap hit that cannot be recorded is deferred too, so that it comes back
        (answer,) = self.timed_checks(self.client(d, "trap"), 1, sender="t@bad.test", recipient=TRAP,
                                      client_address="192.0.2.71")
        self.assertTrue(answer.startswith(TEMPFAIL + " "), answer)
        d.wait_for_log(r"tempfail: store-error", since=mark)
        self.assertLess(d.count_log(r"store (lookup|update) failed", since=mark), 11)
        self.redis.start()
        rh.wait_until(lambda: self.sender_check(d, "fine@good.test", "203.0.113.70") == "DUNNO",
                      RECOVERY_TIMEOUT, "answers without the store error", interval=0.2)
        self.wait_recorded(d, "t@bad.test", "192.0.2.71", since=mark)
        self.assertEqual(self.sender_check(d, "t@bad.test", "203.0.113.71"), REJECT_TEXT)
        self.assertEqual(d.proc.pid, pid)


if __name__ == "__main__":
    unittest.main(verbosity=2)
