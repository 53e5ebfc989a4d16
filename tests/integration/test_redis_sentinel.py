"""Integration tests of Redis Sentinel master discovery (store.redis.sentinels).

Each test starts a real Redis master, a replica (--replicaof) and one
Sentinel watching them (quorum 1, down-after 1 s), all on free loopback
ports, and spamtrapd configured with the Sentinel only (store.redis.host
and port point at a closed port, so nothing works unless the Sentinel is
asked). A failover, forced by killing the master or by SENTINEL FAILOVER,
must not need a restart of spamtrapd: the next trap hit is recorded on the
new master and rejected. A missing redis-server fails.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

import redis_harness as rh
import spamtrapd_harness as sh

REJECT_TEXT = "550 5.7.1 Blocked here after mail to a spamtrap (sentinel test)"
TRAP = "trap@example.com"
MASTER = "mymaster"
FAILOVER_TIMEOUT = 20.0
RECOVERY_TIMEOUT = 20.0


class SentinelCase(rh.RecoveryChecks, unittest.TestCase):
    REJECT_TEXT = REJECT_TEXT
    RECOVERY_TIMEOUT = RECOVERY_TIMEOUT

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="spamtrapd-sentinel.")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.master = rh.RedisServer(self.dir, "master").start()
        self.addCleanup(self.master.kill)
        self.replica = rh.RedisServer(self.dir, "replica", replicaof=("127.0.0.1", self.master.port)).start()
        self.addCleanup(self.replica.kill)
        rh.wait_until(lambda: self.replica.info("replication").get("master_link_status") == "up", 10,
                      "the replica to sync")
        self.sentinel = rh.RedisSentinel(self.dir, self.master.port, MASTER)
        self.sentinel.start()
        self.addCleanup(self.sentinel.kill)
        rh.wait_until(self.sentinel_sees_replica, 10, "the Sentinel to find the replica")

    def sentinel_sees_replica(self):
        return any(r.get("port") == str(self.replica.port) and r.get("flags") == "slave"
                   for r in self.sentinel.replicas())

    def daemon(self, sentinels=None):
        config = {
            "traps": {"addresses": [TRAP]},
            "blocklist": {"reject": REJECT_TEXT},
            "store": {
                "backend": "redis",
                "redis": {"host": "127.0.0.1", "port": sh.free_port(),  # nothing there
                          "sentinels": sentinels or [f"127.0.0.1:{self.sentinel.port}"],
                          "sentinel_master": MASTER, "connect_timeout": 300, "command_timeout": 300},
            },
        }
        d = sh.Spamtrapd(config, roles=("trap", "sender"))
        self.addCleanup(d.cleanup)
        return d.start()

    def wait_master(self, port):
        rh.wait_until(lambda: self.sentinel.master_addr() == ("127.0.0.1", port), FAILOVER_TIMEOUT,
                      f"the Sentinel to name 127.0.0.1:{port} as master")

    def record_before_failover(self, d):
        self.assertEqual(self.sentinel.master_addr(), ("127.0.0.1", self.master.port))
        self.trap_hit(d, "one@bad.test", "192.0.2.80")
        d.wait_for_log(r"blocklisted=one@bad\.test,192\.0\.2\.80")
        self.assertEqual(self.sender_check(d, "one@bad.test", "203.0.113.80"), REJECT_TEXT)
        self.assertEqual(self.master.command("HGET", "spamtrapd:bl:one@bad.test", "trap"), TRAP)
        rh.wait_until(lambda: self.replica.command("EXISTS", "spamtrapd:bl:one@bad.test") == 1, 10,
                      "the entry on the replica")

    def check_after_failover(self, d, pid, mark):
        self.wait_recorded(d, "two@bad.test", "192.0.2.81", since=mark)
        self.wait_rejected(d, "two@bad.test", "203.0.113.81")
        # written to the promoted replica, and the entry from before the failover still blocks
        self.assertEqual(self.replica.command("HGET", "spamtrapd:bl:two@bad.test", "trap"), TRAP)
        self.assertEqual(self.sender_check(d, "one@bad.test", "203.0.113.82"), REJECT_TEXT)
        self.assertEqual(d.proc.pid, pid)
        self.assertEqual(d.stop(), 0)


class TestSentinelFailover(SentinelCase):
    def test_master_killed(self):
        # the first Sentinel listed is down: the next one is asked
        d = self.daemon([f"127.0.0.1:{sh.free_port()}", f"127.0.0.1:{self.sentinel.port}"])
        pid = d.proc.pid
        self.record_before_failover(d)
        mark = d.log_mark()
        self.master.stop(signal.SIGKILL)

        def served_meanwhile():
            # mail keeps flowing while Sentinel fails over: answered (store.on_error accept), never stuck
            start = time.monotonic()
            self.assertIn(self.sender_check(d, "one@bad.test", "203.0.113.83"), ("DUNNO", REJECT_TEXT))
            self.assertLess(time.monotonic() - start, 5.0)
            return self.sentinel.master_addr() == ("127.0.0.1", self.replica.port)
        rh.wait_until(served_meanwhile, FAILOVER_TIMEOUT, "the Sentinel to promote the replica")
        self.assertEqual(self.replica.info("replication")["role"], "master")
        d.wait_for_log(r"store lookup failed: redis master mymaster: ", since=mark)
        self.check_after_failover(d, pid, mark)

    def test_manual_failover_old_master_alive(self):
        """After SENTINEL FAILOVER the old master goes on taking writes until the Sentinel demotes it
        (after its next INFO, up to 10 s): spamtrapd must notice the switch by itself and write to the
        new master, or the hits of those seconds would be lost with the old master's data."""
        d = self.daemon()
        pid = d.proc.pid
        self.record_before_failover(d)
        mark = d.log_mark()
        self.assertEqual(self.sentinel.command("SENTINEL", "FAILOVER", MASTER), "OK")
        self.wait_master(self.replica.port)
        time.sleep(1.2)  # spamtrapd asks the Sentinels again at most once a second
        self.check_after_failover(d, pid, mark)


class TestSentinelErrors(SentinelCase):
    def ctl_config(self, sentinels, master=MASTER):
        path = os.path.join(self.dir, "ctl.json")
        sh.write_config(path, {"store": {"backend": "redis", "redis": {
            "sentinels": sentinels, "sentinel_master": master, "connect_timeout": 300,
            "command_timeout": 300}}})
        return path

    def ctl(self, config, *args):
        return subprocess.run([*sh.command("SPAMTRAPCTL"), "-c", config, *args], capture_output=True,
                                 text=True, timeout=30)

    def test_spamtrapctl_through_the_sentinel(self):
        config = self.ctl_config([f"127.0.0.1:{self.sentinel.port}"])
        p = self.ctl(config, "add", "manual@bad.test", "--reason", "by hand")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(self.master.command("HGET", "spamtrapd:bl:manual@bad.test", "reason"), "by hand")

    def test_no_sentinel_answers(self):
        dead = f"127.0.0.1:{sh.free_port()}"
        p = self.ctl(self.ctl_config([dead]), "list")
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(f"redis master {MASTER}: no sentinel named the master (1 asked; last: sentinel {dead}: "
                      "cannot connect", p.stderr)

    def test_unknown_master_name(self):
        p = self.ctl(self.ctl_config([f"127.0.0.1:{self.sentinel.port}"], master="nosuchmaster"), "list")
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("does not know the master", p.stderr)

    def fake_sentinel(self, answer):
        fake = rh.FakeSentinel(answer)
        self.addCleanup(fake.close)
        return fake

    def test_named_server_is_not_the_master(self):
        """A Sentinel may be out of date: the server it names is checked with ROLE."""
        fake = self.fake_sentinel(("127.0.0.1", self.replica.port))
        p = self.ctl(self.ctl_config([f"127.0.0.1:{fake.port}"]), "list")
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(f"redis master {MASTER}: the server the sentinels named is not a master (role slave)",
                      p.stderr)
        self.assertEqual(fake.asked, 1)

    def test_out_of_date_sentinel_is_skipped(self):
        """The daemon then asks the next Sentinel first, and writes to the real master."""
        fake = self.fake_sentinel(("127.0.0.1", self.replica.port))
        d = self.daemon([f"127.0.0.1:{fake.port}", f"127.0.0.1:{self.sentinel.port}"])
        self.wait_recorded(d, "skip@bad.test", "192.0.2.92", since=0)
        self.wait_rejected(d, "skip@bad.test", "203.0.113.92")
        self.assertEqual(self.master.command("EXISTS", "spamtrapd:bl:skip@bad.test"), 1)
        self.assertGreaterEqual(fake.asked, 1)
        d.wait_for_log(r"store \w+ failed: redis master mymaster: the server the sentinels named is not a master")

    def test_bad_sentinel_answers(self):
        cases = [
            ("error reply", "ERR unknown command", "sentinel 127.0.0.1:%d: ERR unknown command"),
            ("not an address", b"+OK\r\n", "sentinel 127.0.0.1:%d: unexpected answer"),
            ("bad port", b"*2\r\n$9\r\n127.0.0.1\r\n$5\r\n70000\r\n",
             "sentinel 127.0.0.1:%d: bad port in the answer"),
            ("one element", b"*1\r\n$9\r\n127.0.0.1\r\n", "sentinel 127.0.0.1:%d: unexpected answer"),
            ("control character in the host", b"*2\r\n$5\r\nho\x01st\r\n$4\r\n6379\r\n",
             "sentinel 127.0.0.1:%d: unexpected answer"),
        ]
        for name, answer, message in cases:
            with self.subTest(name):
                fake = self.fake_sentinel(answer)
                p = self.ctl(self.ctl_config([f"127.0.0.1:{fake.port}"]), "list")
                self.assertNotEqual(p.returncode, 0)
                self.assertIn(message % fake.port, p.stderr)

    def test_daemon_starts_with_sentinels_down_and_connects_later(self):
        """Like a Redis down at start: spamtrapd starts, applies on_error, and finds the master once a
        Sentinel answers."""
        self.sentinel.kill()
        d = self.daemon()
        self.assertEqual(self.sender_check(d, "x@good.test", "203.0.113.90"), "DUNNO")
        d.wait_for_log(r"no sentinel named the master")
        self.sentinel.start()
        mark = d.log_mark()
        self.wait_recorded(d, "late@bad.test", "192.0.2.91", since=mark)
        self.wait_rejected(d, "late@bad.test", "203.0.113.91")
        self.assertEqual(self.master.command("EXISTS", "spamtrapd:bl:late@bad.test"), 1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
