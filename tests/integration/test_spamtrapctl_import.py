"""Integration tests for `spamtrapctl import FILE` (Python 3 stdlib only).

The real $SPAMTRAPCTL on a temporary SQLite store, and once on a real
redis-server (started here on a free loopback port, stopped by PID): what
`list` prints imports back to the same list; bare keys get --ttl and
--reason; keys are normalised as `add` does; the last line of a key wins;
expired lines are left out; a file with any bad line changes nothing and
names every bad line; a large file is written in several transactions
with every entry and the network-length counts right.
"""

import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
import unittest

import spamtrapd_harness as sh
from redis_harness import ClassRedis


class ImportCase(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="stctl-import.")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.db = os.path.join(self.dir, "blocklist.db")
        self.config = os.path.join(self.dir, "spamtrapd.json")
        with open(self.config, "w") as f:
            json.dump({"store": self.store_settings(), "blocklist": {"ttl": "24h"}}, f)

    def store_settings(self):
        return {"backend": "sqlite", "sqlite": {"path": self.db}}

    def ctl(self, *args, rc=0):
        # TZ=UTC: list prints local times, and these tests compare them.
        p = subprocess.run([*sh.command("SPAMTRAPCTL"), "-c", self.config, *args], capture_output=True,
                           text=True, timeout=120, env=dict(os.environ, TZ="UTC"))
        self.assertEqual(p.returncode, rc, f"spamtrapctl {' '.join(args)}: {p.stdout}{p.stderr}")
        return p

    def file(self, text, name="in.tsv"):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def listed(self):
        return [line.split("\t") for line in self.ctl("list").stdout.splitlines()]


class ImportScenarios:
    def test_list_output_imports_back(self):
        self.ctl("add", "a@example.com", "--reason", "ticket 1")
        self.ctl("add", "192.0.2.0/24", "--ttl", "7d")
        self.ctl("add", "sasl:Alice")
        before = self.ctl("list").stdout
        backup = self.file(before, "backup.tsv")
        for key in ("a@example.com", "192.0.2.0/24", "sasl:Alice"):
            self.ctl("remove", key)
        self.assertEqual(self.ctl("import", backup).stdout, "imported 3 entries\n")
        self.assertEqual(self.ctl("list").stdout, before)

    def test_bare_keys_take_ttl_and_reason(self):
        path = self.file("# spammers from the old system\n\n<Spammer@Example.COM>\n@example.net\n"
                         "198.51.100.7\nhelo:Bad.Example\n")
        self.assertEqual(self.ctl("import", path, "--ttl", "2h", "--reason", "migrated").stdout,
                         "imported 4 entries\n")
        rows = self.listed()
        self.assertEqual([r[0] for r in rows], ["198.51.100.7", "@example.net", "helo:bad.example",
                                                "spammer@example.com"])
        for r in rows:
            self.assertEqual(r[2:], ["0", r[3], "-", "migrated"])
        out = self.ctl("lookup", "spammer@example.com").stdout
        self.assertRegex(out, r"\(1h 59m from now\)|\(2h 0m from now\)")

    def test_columns_as_given_and_last_line_wins(self):
        path = self.file("a@example.com\t2099-01-02T03:04:05Z\t7\t2024-05-01T14:03:27+02:00\ttrap@t.example\tx\n"
                         "b@example.com\t@4102444800\t-\t2024-05-01T12:00:00Z\t-\t-\n"
                         "c@example.com\t2099-01-02T03:04:05-01:30\t3\t1714565007\tt@t.example\twhy not\n"
                         "A@Example.com\t2099-01-01T00:00:00+01:00\t9\n")
        self.assertEqual(self.ctl("import", path).stdout, "imported 3 entries\n")
        rows = {r[0]: r[1:] for r in self.listed()}
        self.assertEqual(rows["a@example.com"][:2], ["2098-12-31T23:00:00+00:00", "9"])
        self.assertEqual(rows["a@example.com"][3:], ["-", "import"])
        self.assertEqual(rows["b@example.com"], ["2100-01-01T00:00:00+00:00", "0", "2024-05-01T12:00:00+00:00",
                                                 "-", "-"])
        self.assertEqual(rows["c@example.com"], ["2099-01-02T04:34:05+00:00", "3", "2024-05-01T12:03:27+00:00",
                                                 "t@t.example", "why not"])

    def test_expired_lines_left_out(self):
        now = int(time.time())
        path = self.file(f"old@example.com\t{now - 60}\nnew@example.com\t{now + 600}\n")
        self.assertEqual(self.ctl("import", path).stdout, "imported 1 entry (1 expired lines left out)\n")
        self.assertEqual([r[0] for r in self.listed()], ["new@example.com"])

    def test_bad_file_changes_nothing(self):
        self.ctl("add", "keep@example.com")
        lines = ["ok@example.com", "not a key", "x@example.com\tyesterday", "192.0.2.1/24",
                 "y@example.com\t-\tmany", "z@example.com\t1\t2\t3\t4\t5\t6", "192.0.2.0/3"]
        p = self.ctl("import", self.file("\n".join(lines) + "\n"), rc=1)
        for n in range(2, 8):
            self.assertIn(f"in.tsv:{n}: ", p.stderr)
        self.assertNotIn("in.tsv:1:", p.stderr)
        self.assertIn("nothing imported", p.stderr)
        self.assertEqual([r[0] for r in self.listed()], ["keep@example.com"])
        self.ctl("import", os.path.join(self.dir, "missing.tsv"), rc=1)
        self.ctl("import", rc=1)


class SqliteImportTest(ImportScenarios, ImportCase):
    def test_large_file_in_several_transactions(self):
        # More than one STORE_PUT_BATCH (50,000), unsorted, with network keys counted by netlens.
        n = 120000
        lines = [f"k{(i * 7919) % n}@example.com" for i in range(n)]
        lines += [f"10.{i // 256}.{i % 256}.0/24" for i in range(300)]
        start = time.monotonic()
        self.assertEqual(self.ctl("import", self.file("\n".join(lines) + "\n")).stdout,
                         f"imported {n + 300} entries\n")
        self.assertLess(time.monotonic() - start, 60 * sh.TIMEOUT_SCALE)
        db = sqlite3.connect(self.db)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("SELECT count(*) FROM blocklist").fetchone()[0], n + 300)
        self.assertEqual(db.execute("SELECT family, len, n FROM netlens").fetchall(), [(4, 24, 300)])
        self.assertEqual(db.execute("SELECT reason FROM blocklist WHERE key = 'k1@example.com'").fetchone()[0],
                         "import")


class RedisImportTest(ClassRedis, ImportScenarios, ImportCase):
    """The same scenarios on Redis, which writes each entry as `add` does (no bulk path there)."""


if __name__ == "__main__":
    unittest.main(verbosity=2)
