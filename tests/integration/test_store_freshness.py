"""Integration test of the SQLite store's absent-key filter (src/store/sqlite_filter.c)
in the real daemon: most lookups are answered from memory, yet every write
to the file, by anyone, counts from the very next request.

The daemon answers sender checks long enough for its filter to be built
(it is built in the background after the first lookup, and again at most
once a second after a write it did not make). Then, round after round, the
file is changed by another process (spamtrapctl add and remove, the sqlite3
shell) or by the daemon itself (a trap hit), and the next request must see
the change: a key listed by another process is never answered "not
listed", however the filter stands.

All of that would pass with no filter at all (every lookup asking SQLite),
so the filter must also be seen answering: the daemon logs how many lookups
it answered alone at each purge (debug), here once a second.
"""

import os
import re
import subprocess
import time
import unittest

import spamtrapd_harness as sh

TRAP = "trap@example.com"
REJECT = "550 5.7.1 Sender is blocklisted here (spamtrapd test)"
ROUNDS = 4
# Longer than the builder's gap between builds (1 s), so that each round starts with a built filter.
REBUILD_WAIT = 1.2


class FreshnessTest(sh.PolicyChecks, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = sh.Spamtrapd({"traps": {"addresses": [TRAP]}, "blocklist": {"reject": REJECT},
                              "log": {"level": "debug"}, "store": {"purge_interval": "1s"}})
        try:
            cls.d.start()
        except BaseException:
            cls.d.cleanup()
            raise
        cls.db = cls.d.config["store"]["sqlite"]["path"]

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def check(self, sender, client="192.0.2.10"):
        return self.sender_check(self.d, sender, client)

    def warm(self):
        """Lookups (the first starts the filter's builder), then time for a build."""
        for i in range(20):
            self.assertEqual(self.check(f"warm{i}@example.org"), "DUNNO")
        time.sleep(REBUILD_WAIT)

    def filter_answers(self):
        """Lookups the filter answered alone, as of the daemon's latest purge (0 before the first)."""
        counts = re.findall(r"absent-key filter answered (\d+) lookups", self.d.log())
        return int(counts[-1]) if counts else 0

    def sqlite(self, sql):
        """Another process writes the file directly, as the daemon's user."""
        argv = ["sqlite3", "-cmd", ".timeout 5000", self.db, sql]
        if os.getuid() == 0 and sh.run_user():
            argv = ["runuser", "-u", sh.run_user(), "--"] + argv
        subprocess.run(argv, check=True, capture_output=True, timeout=30)

    def test_builder_thread_runs(self):
        self.warm()
        names = []
        for tid in os.listdir(f"/proc/{self.d.proc.pid}/task"):
            with open(f"/proc/{self.d.proc.pid}/task/{tid}/comm") as f:
                names.append(f.read().strip())
        self.assertIn("store-filter", names)

    def test_filter_answers_lookups_of_absent_keys(self):
        before = self.filter_answers()
        deadline = time.monotonic() + sh.START_TIMEOUT
        i = 0
        while self.filter_answers() == before:
            self.assertLess(time.monotonic(), deadline,
                            "the absent-key filter answered no lookup:\n" + self.d.log_tail())
            self.assertEqual(self.check(f"absent{i}@example.org"), "DUNNO")
            i += 1
            time.sleep(0.05)

    def test_spamtrapctl_add_and_remove_count_at_once(self):
        self.warm()
        for r in range(ROUNDS):
            sender = f"ctl{r}@example.org"
            self.assertEqual(self.check(sender), "DUNNO")
            self.d.ctl("add", sender)
            self.assertEqual(self.check(sender), REJECT, f"round {r}: added by spamtrapctl")
            self.d.ctl("remove", sender)
            self.assertEqual(self.check(sender), "DUNNO", f"round {r}: removed by spamtrapctl")
            time.sleep(REBUILD_WAIT)

    def test_network_added_by_another_process(self):
        self.warm()
        for r in range(ROUNDS):
            client = f"198.51.{100 + r}.7"
            self.assertEqual(self.check(f"net{r}@example.org", client), "DUNNO")
            self.d.ctl("add", f"198.51.{100 + r}.0/24")
            self.assertEqual(self.check(f"net{r}@example.org", client), REJECT, f"round {r}")
            time.sleep(REBUILD_WAIT)

    def test_sqlite_shell_insert_counts_at_once(self):
        self.warm()
        now = int(time.time())
        for r in range(ROUNDS):
            sender = f"shell{r}@example.org"
            self.assertEqual(self.check(sender), "DUNNO")
            self.sqlite(f"INSERT INTO blocklist (key, first_seen, last_seen, expires) "
                        f"VALUES ('{sender}', {now}, {now}, {now + 3600})")
            self.assertEqual(self.check(sender), REJECT, f"round {r}: inserted by the sqlite3 shell")
            time.sleep(REBUILD_WAIT)

    def test_own_trap_hits_count_at_once(self):
        self.warm()
        for r in range(3 * ROUNDS):
            sender = f"hit{r}@example.org"
            client = f"203.0.113.{r + 1}"
            self.assertEqual(self.check(sender, client), "DUNNO")
            self.trap_hit(self.d, sender, client)
            self.assertEqual(self.check(sender, client), REJECT, f"round {r}: the daemon's own trap hit")
            self.assertEqual(self.check(f"other{r}@example.org", client), REJECT, "the client is listed too")


if __name__ == "__main__":
    unittest.main()
