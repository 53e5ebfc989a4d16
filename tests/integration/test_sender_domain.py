"""Integration tests of blocklist.sender_domain_min_networks (issue 11, item 5):
with the `sender_domain` key, a trap hit lists the sender's domain only once
hits from that many distinct client networks (/24 for IPv4, /32 for IPv6)
came within the blocklist TTL, so that one forged `x@gmail.com` cannot block
gmail.com. The real daemon on the policy protocol, with real SQLite, and two
daemons sharing one real redis-server (their counts add up).

Client addresses come from the documentation ranges; each test uses its own
sender domain, so that the tests of a class share one daemon.
"""

import shutil
import subprocess
import tempfile
import unittest

import redis_harness as rh
import spamtrapd_harness as sh

REJECT_TEXT = "550 5.7.1 Sender is blocklisted here (sender domain test)"
TRAP = "trap@example.com"
TRAP_REPLY = "550 5.1.1 User unknown"  # action discard, on_mixed deliver-others, policy front end

BASE = {
    "traps": {"addresses": [TRAP]},
    "blocklist": {"reject": REJECT_TEXT, "keys": ["sender", "client_address", "sender_domain"]},
}

# A client that no hit ever blocklists by its address, to check a domain alone.
FRESH_CLIENT = "203.0.113.250"


def networks(domain, n, m=3):
    return r"domain=@%s networks=%d/%d" % (domain.replace(".", r"\."), n, m)


class DomainChecks(sh.PolicyChecks):
    """Trap hits and checks that name the domain's state."""

    def hit(self, d, sender, client):
        mark = d.log_mark()
        self.assertEqual(self.trap_hit(d, sender, client), TRAP_REPLY)
        return mark

    def assert_domain_listed(self, d, domain, listed):
        want = REJECT_TEXT if listed else "DUNNO"
        self.assertEqual(self.sender_check(d, f"someone-else@{domain}", FRESH_CLIENT), want)


class TestSqlite(DomainChecks, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = sh.Spamtrapd(BASE)
        try:
            cls.d.start()
        except BaseException:
            cls.d.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def test_third_network_lists_the_domain(self):
        d, dom = self.d, "forged-a.test"
        mark = self.hit(d, f"x1@{dom}", "192.0.2.10")
        d.wait_for_log(r"blocklisted=x1@forged-a\.test,192\.0\.2\.10 " + networks(dom, 1), since=mark)
        self.assert_domain_listed(d, dom, False)
        # the sender and the client of the hit are listed as before
        self.assertEqual(self.sender_check(d, f"x1@{dom}", FRESH_CLIENT), REJECT_TEXT)
        self.assertEqual(self.sender_check(d, "innocent@other.test", "192.0.2.10"), REJECT_TEXT)

        mark = self.hit(d, f"x2@{dom}", "198.51.100.10")
        d.wait_for_log(networks(dom, 2), since=mark)
        self.assert_domain_listed(d, dom, False)

        mark = self.hit(d, f"x3@{dom}", "2001:db8:a::1")
        d.wait_for_log(r"blocklisted=x3@forged-a\.test,2001:db8:a::/64,@forged-a\.test " + networks(dom, 3),
                       since=mark)
        self.assert_domain_listed(d, dom, True)
        out = d.ctl("lookup", f"@{dom}").stdout
        self.assertIn(f"@{dom}: blocklisted until", out)

    def test_one_network_counts_once(self):
        """Three addresses of one /24 (whatever ipv4_prefix says: 32 here) and two of one IPv6 /32
        (in different /48s, as one hosting customer can have) are two networks: the domain waits
        for a third."""
        d, dom = self.d, "forged-b.test"
        for i, client in enumerate(["192.0.2.20", "192.0.2.21", "192.0.2.222"]):
            mark = self.hit(d, f"y{i}@{dom}", client)
            d.wait_for_log(networks(dom, 1), since=mark)
        for i, client in enumerate(["2001:db8:b:1::1", "2001:db8:c:ffff::2"]):
            mark = self.hit(d, f"z{i}@{dom}", client)
            d.wait_for_log(networks(dom, 2), since=mark)
        self.assert_domain_listed(d, dom, False)
        mark = self.hit(d, f"w@{dom}", "198.51.100.20")
        d.wait_for_log(r",@forged-b\.test " + networks(dom, 3), since=mark)
        self.assert_domain_listed(d, dom, True)

    def test_loopback_never_counts(self):
        d, dom = self.d, "forged-c.test"
        for i in range(3):
            mark = self.hit(d, f"l{i}@{dom}", "127.0.0.1")
            d.wait_for_log(r"blocklisted=l%d@forged-c\.test domain=@forged-c\.test networks=not counted" % i,
                           since=mark)
        self.assert_domain_listed(d, dom, False)


class TestMinOne(DomainChecks, unittest.TestCase):
    """sender_domain_min_networks 1: the first hit lists the domain, as before the setting existed."""

    def test_first_hit_lists_the_domain(self):
        d = sh.Spamtrapd(sh.merge(BASE, {"blocklist": {"sender_domain_min_networks": 1}}))
        self.addCleanup(d.cleanup)
        d.start()
        self.assertEqual(self.trap_hit(d, "x@forged-d.test", "192.0.2.30"), TRAP_REPLY)
        d.wait_for_log(r"blocklisted=x@forged-d\.test,192\.0\.2\.30,@forged-d\.test;")
        self.assert_domain_listed(d, "forged-d.test", True)


class TestCountFails(DomainChecks, unittest.TestCase):
    """A store error while counting is an update error: store.on_error decides the trap's answer,
    the hit's other keys are still listed, the domain is not."""

    def test_store_error_follows_on_error(self):
        for on_error, reply in (("accept", TRAP_REPLY), ("tempfail", "450 4.7.1 ")):
            with self.subTest(on_error=on_error):
                d = sh.Spamtrapd(sh.merge(BASE, {"store": {"on_error": on_error}}))
                self.addCleanup(d.cleanup)
                d.start()
                d.wait_for_log(r"ready")  # the store is open, its schema in place
                # Another process makes every count fail, and nothing else. The daemon
                # counts in memory (sqlite_hot) and reads a set from the file the first
                # time it meets it: a fault on writes would only show at the write
                # behind, so the table goes away and the first read of the set fails.
                subprocess.run(["sqlite3", "-batch", "-bail", "-cmd", ".timeout 5000",
                                d.config["store"]["sqlite"]["path"],
                                "ALTER TABLE distinct_members RENAME TO counting_refused_by_the_test"],
                               check=True, timeout=30)
                mark = d.log_mark()
                self.assertTrue(self.trap_hit(d, "e@forged-e.test", "192.0.2.60").startswith(reply))
                d.wait_for_log(r"blocklisted=e@forged-e\.test,192\.0\.2\.60 "
                               r"domain=@forged-e\.test networks=\? \(store error\)", since=mark)
                d.wait_for_log(r"store update failed: .*distinct_members", since=mark)
                self.assertEqual(self.sender_check(d, "e@forged-e.test", FRESH_CLIENT), REJECT_TEXT)
                self.assert_domain_listed(d, "forged-e.test", False)


class TestRedis(DomainChecks, unittest.TestCase):
    """Two daemons on one redis-server: hits at either count toward the same domain."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="spamtrapd-redis.")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.redis = rh.RedisServer(self.dir).start()
        self.addCleanup(self.redis.kill)

    def daemon(self):
        d = sh.Spamtrapd(sh.merge(BASE, {"store": {
            "backend": "redis",
            "redis": {"host": "127.0.0.1", "port": self.redis.port, "prefix": "site:"}}}))
        self.addCleanup(d.cleanup)
        return d.start()

    def test_two_daemons_count_together(self):
        a, b, dom = self.daemon(), self.daemon(), "forged-r.test"
        mark = self.hit(a, f"r1@{dom}", "192.0.2.40")
        a.wait_for_log(networks(dom, 1), since=mark)
        mark = self.hit(b, f"r2@{dom}", "192.0.2.41")  # the same /24, at the other host
        b.wait_for_log(networks(dom, 1), since=mark)
        mark = self.hit(b, f"r3@{dom}", "198.51.100.40")
        b.wait_for_log(networks(dom, 2), since=mark)
        self.assert_domain_listed(a, dom, False)
        self.assert_domain_listed(b, dom, False)
        mark = self.hit(a, f"r4@{dom}", "2001:db8:c::4")
        a.wait_for_log(r",@forged-r\.test " + networks(dom, 3), since=mark)
        self.assert_domain_listed(a, dom, True)
        self.assert_domain_listed(b, dom, True)
        # where docs/redis.md says: one sorted set, with Redis's own expiry (the TTL, 24 h)
        key = f"site:ds:sender_domain:{dom}"
        self.assertEqual(self.redis.command("ZCARD", key), 3)
        self.assertGreater(self.redis.command("TTL", key), 86000)


if __name__ == "__main__":
    unittest.main(verbosity=2)
