"""Integration tests of "exports": files the real daemon keeps current
(issue 16), read as a firewall loader would.

- SQLite: a trap hit at the daemon's policy port makes the nft export
  list the client within the interval; `spamtrapctl remove` (another
  process) makes it go; a bad path is a clear error at start-up; a write
  that fails (the folder taken away) keeps the daemon serving and the
  old file as it was, and the next interval after the folder is back
  writes it again.
- Redis: two daemons on one real redis-server; a trap hit at A appears
  in B's export (the time from the hit to B's file is printed); after a
  restart of redis-server, B's subscriber is back and a later hit at A
  reaches B's file too.
- Redis, stop: a daemon whose subscriber has just begun its one-second
  wait on Redis stops without sitting it out (its own log's times).

Deadlines are generous (scaled) and polled: nothing asserts a speed.
"""

import os
import re
import shutil
import sys
import tempfile
import time
import unittest

import redis_harness as rh
import spamtrapd_harness as sh

TRAP = "trap@example.com"
DEADLINE = 10.0


def exports_config(path, interval="1s"):
    return {
        "traps": {"addresses": [TRAP]},
        "blocklist": {"keys": ["sender", "client_address"], "ttl": "24h"},
        "exports": [{"format": "nft", "path": path, "interval": interval}],
    }


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


def wait_for(check, what, timeout=DEADLINE):
    deadline = time.monotonic() + sh.scaled(timeout)
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {sh.scaled(timeout)}s: {what}")
        time.sleep(0.05)


def export_dir(d):
    """A folder the daemon's user may write, for its exports."""
    folder = os.path.join(d, "exports")
    os.mkdir(folder)
    sh.give_to_run_user(folder)
    return folder


class SqliteExports(sh.PolicyChecks, unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="spamtrapd-test.")
        sh.give_to_run_user(self.dir)
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.out = export_dir(self.dir)
        self.path = os.path.join(self.out, "blocklist.nft")

    def daemon(self, config):
        d = sh.Spamtrapd(config, workdir=self.dir)
        d.start()
        self.addCleanup(d.cleanup)
        return d

    def test_hit_listed_and_removal_unlisted(self):
        d = self.daemon(exports_config(self.path))
        first = wait_for(lambda: read(self.path), "the export written at start")
        self.assertIn("table inet spamtrapd", first)
        self.assertNotIn("192.0.2.41", first)
        self.assertEqual(self.trap_hit(d, "spam@bad.example", "192.0.2.41"), "550 5.1.1 User unknown")
        text = wait_for(lambda: (read(self.path) or "") if "192.0.2.41" in (read(self.path) or "") else None,
                        "the trapped client in the export")
        self.assertRegex(text, r"192\.0\.2\.41 timeout \d+s")
        d.ctl("remove", "192.0.2.41")
        wait_for(lambda: "192.0.2.41" not in (read(self.path) or "192.0.2.41"),
                 "the removed client gone from the export")

    def test_reload_adds_and_moves_an_export(self):
        config = exports_config(self.path)
        del config["exports"]
        d = self.daemon(config)
        self.trap_hit(d, "spam@bad.example", "192.0.2.45")
        self.assertTrue(d.reload({"exports": [{"format": "nft", "path": self.path, "interval": "1s"}]}))
        wait_for(lambda: "192.0.2.45" in (read(self.path) or ""), "the export a reload added")
        other = os.path.join(self.out, "blocklist.cidr")
        self.assertTrue(d.reload({"exports": [{"format": "cidr", "path": other, "interval": "1s"}]}))
        wait_for(lambda: "192.0.2.45" in (read(other) or ""), "the export the next reload named")
        # A bad path in a reload is refused and the exports in force stay.
        self.assertFalse(d.reload({"exports": [{"format": "nft", "path": "/nonexistent-dir/x.nft"}]}))

    def test_bad_path_is_a_start_up_error(self):
        for path, why in ((os.path.join(self.dir, "missing", "x.nft"), "No such file or directory"),
                          ("relative.nft", "expected the absolute path of a file")):
            d = sh.Spamtrapd(exports_config(path), workdir=self.dir)
            self.addCleanup(d.cleanup)
            self.assertEqual(d.run_until_exit(), 1)
            self.assertIn("exports[0].path: ", d.log())
            self.assertIn(why, d.log())

    def test_write_failure_keeps_serving_and_the_old_file(self):
        d = self.daemon(exports_config(self.path))
        self.trap_hit(d, "spam@bad.example", "192.0.2.51")
        wait_for(lambda: "192.0.2.51" in (read(self.path) or ""), "the first client in the export")
        # The folder goes (a disk taken away): the daemon's user cannot write there any more.
        moved = self.out + ".away"
        os.rename(self.out, moved)
        mark = d.log_mark()
        self.assertEqual(self.trap_hit(d, "spam2@bad.example", "192.0.2.52"), "550 5.1.1 User unknown")
        d.wait_for_log(r"export: .*blocklist\.nft not written, the old file stays", mark,
                       timeout=sh.scaled(DEADLINE))
        self.assertEqual(self.sender_check(d, "spam2@bad.example", "192.0.2.52"),
                         "550 5.7.1 Sender is blocklisted after mail to a spamtrap")
        old = read(os.path.join(moved, "blocklist.nft"))
        self.assertIn("192.0.2.51", old)
        self.assertNotIn("192.0.2.52", old)
        self.assertEqual(sorted(os.listdir(moved)), ["blocklist.nft"])  # no temporary file left
        os.rename(moved, self.out)
        wait_for(lambda: "192.0.2.52" in (read(self.path) or ""), "the export written again")
        d.wait_for_log(r"export: .*blocklist\.nft written again", mark, timeout=sh.scaled(DEADLINE))
        self.assertTrue(d.running())


class RedisExports(sh.PolicyChecks, unittest.TestCase):
    """Two daemons, A and B, on one real redis-server with one prefix, each with its own export."""

    def setUp(self):
        self.server, _ = rh.start_server(self)
        store = rh.store_override(self.server, "exp:")
        self.hosts = []
        for name in ("a", "b"):
            folder = tempfile.mkdtemp(prefix=f"spamtrapd-test-{name}.")
            sh.give_to_run_user(folder)
            self.addCleanup(shutil.rmtree, folder, True)
            path = os.path.join(export_dir(folder), "blocklist.nft")
            d = sh.Spamtrapd(sh.merge(exports_config(path), store), workdir=folder)
            d.start()
            self.addCleanup(d.cleanup)
            wait_for(lambda: read(path), f"{name}'s export written at start")
            d.wait_for_log(r"export: watching other hosts' changes \(Redis\)", timeout=sh.scaled(DEADLINE))
            self.hosts.append((d, path))
        # B's subscription marks its exports dirty once, when it connects: a first hit at A, in
        # B's file, shows that has been written, so that what reaches B later came by the channel.
        self.hit_reaches_b("192.0.2.60", "first@bad.example", "warm-up")

    def hit_reaches_b(self, client, sender, what):
        (a, _), (b, b_path) = self.hosts
        mark = a.log_mark()
        # A's store may still be reconnecting (after a restart of redis-server): hit until it records.
        deadline = time.monotonic() + sh.scaled(DEADLINE)
        while True:
            self.trap_hit(a, sender, client)
            hit_at = time.monotonic()
            if a.count_log(r"blocklisted=" + sender.replace(".", r"\."), mark):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"A recorded no hit of {sender}:\n" + a.log_tail())
            time.sleep(0.2)
        wait_for(lambda: client in (read(b_path) or ""), f"{client} in B's export ({what})")
        took = time.monotonic() - hit_at
        print(f"\n{what}: a trap hit at A reached B's export in {took:.3f} s", file=sys.stderr)
        return took

    def test_hit_at_a_reaches_b_and_removal_too(self):
        (a, _), (b, b_path) = self.hosts
        self.hit_reaches_b("192.0.2.61", "spam@bad.example", "A to B")
        a.ctl("remove", "192.0.2.61")
        wait_for(lambda: "192.0.2.61" not in (read(b_path) or "192.0.2.61"),
                 "the client removed at A gone from B's export")
        a.ctl("add", "198.51.100.9", "--ttl", "1h")
        wait_for(lambda: "198.51.100.9" in (read(b_path) or ""), "the client added at A in B's export")

    def test_subscriber_reconnects_after_a_redis_restart(self):
        (a, _), (b, b_path) = self.hosts
        self.hit_reaches_b("192.0.2.71", "spam@bad.example", "before the restart")
        mark = b.log_mark()
        self.server.stop()
        b.wait_for_log(r"export: .*subscription to .* was lost", mark, timeout=sh.scaled(DEADLINE))
        self.server.start()
        b.wait_for_log(r"export: watching other hosts' changes again", mark, timeout=sh.scaled(DEADLINE))
        self.hit_reaches_b("192.0.2.72", "spam2@bad.example", "after the restart")
        self.assertTrue(a.running() and b.running())


def log_time(d, pattern):
    """The daemon's own timestamp (seconds in the day) of the last log line matching pattern."""
    stamps = re.findall(r"^\d{4}-\d\d-\d\dT(\d\d):(\d\d):(\d\d\.\d+) .*" + pattern, d.log(), re.M)
    if not stamps:
        raise AssertionError(f"no log line matching {pattern!r}:\n" + d.log_tail())
    h, m, sec = stamps[-1]
    return int(h) * 3600 + int(m) * 60 + float(sec)


class RedisExportsStop(unittest.TestCase):
    """Stopping a daemon whose subscriber waits on Redis (up to a second for a reload to be
    seen) does not wait for that wait: the stop wakes it (exporter's stopfd)."""

    def test_stop_wakes_the_subscriber(self):
        server, _ = rh.start_server(self)
        folder = tempfile.mkdtemp(prefix="spamtrapd-test-stop.")
        sh.give_to_run_user(folder)
        self.addCleanup(shutil.rmtree, folder, True)
        path = os.path.join(export_dir(folder), "blocklist.nft")
        # An interval long enough that no export is being written at the stop.
        d = sh.Spamtrapd(sh.merge(exports_config(path, interval="1h"), rh.store_override(server, "stop:")),
                         workdir=folder)
        self.addCleanup(d.cleanup)
        # The subscriber logs this line as it connects, then waits a second on Redis: a daemon
        # that sits that wait out stops a second after the line at the earliest, by its own
        # clock. A SIGTERM sent late (a loaded machine) leaves too little of the wait to tell:
        # then again, a few times.
        for attempt in range(3):
            mark = d.log_mark()
            d.start()
            d.wait_for_log(r"export: watching other hosts' changes \(Redis\)", since=mark, timeout=DEADLINE)
            d.stop()
            watching = log_time(d, r"export: watching other hosts' changes \(Redis\)")
            late = log_time(d, r"notice: SIGTERM received, stopping") - watching
            stopped = log_time(d, r"notice: stopped$") - watching
            print(f"\nSIGTERM {late:.3f} s after the wait began, stopped at {stopped:.3f} s", file=sys.stderr)
            if late < 0.5:
                break
        self.assertLess(stopped, 1.0, "the stop sat out the subscriber's wait on Redis")


if __name__ == "__main__":
    unittest.main()
