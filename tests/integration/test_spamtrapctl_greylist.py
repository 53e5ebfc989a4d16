"""Integration tests for `spamtrapctl greylist` (Python 3 stdlib only).

Runs the real $SPAMTRAPCTL on a temporary config, once on a temporary
SQLite file and once on a real redis-server: list, lookup ("why was this
mail delayed, and for how long more?"), remove, remove --client and
whitelist. Triplets are written behind spamtrapctl's back in the store's
own layout (the greylist_triplets table, rows found by the key's FNV-1a; Redis hashes at PREFIX
"grey:t:" KEY), with times around now, so no test sleeps. The keys the
tests write are the keys the greylist check makes (core/greystep.h,
core/greynorm.h): spamtrapctl must build the same from the words an
admin types.
"""

import json
import os
import re
import sqlite3
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import redis_harness  # noqa: E402
from redis_harness import ClassRedis  # noqa: E402
from test_spamtrapctl import ISO, CtlCase  # noqa: E402

KEY = "192.0.2.0/24/user@example.com/bob@example.org"
# What an admin types for KEY: another host of the /24, the sender as the log shows it (case,
# brackets, an extension), the recipient in capitals.
WORDS = ("192.0.2.77", "<User+Newsletter@Example.COM>", "Bob@Example.ORG")
MINUTE_MS = 60 * 1000
DAY_MS = 86400 * 1000


def fnv1a(key):
    """The 64-bit FNV-1a of key as SQLite stores it (signed): the column greylist_triplets.hash."""
    h = 0xcbf29ce484222325
    for b in key.encode():
        h = ((h ^ b) * 0x100000001b3) & (2**64 - 1)
    return h - 2**64 if h >= 2**63 else h


def now_ms():
    return int(time.time() * 1000)


class GreylistScenarios:
    """Cases that must pass on both backends (mixed into the classes below)."""

    def grey(self, *args, rc=None):
        return self.ctl("greylist", *args, rc=rc)

    def test_lookup_says_how_long_more(self):
        t = now_ms()
        self.put_triplet(KEY, t - MINUTE_MS, t - MINUTE_MS, t + 2 * DAY_MS)
        out = self.grey("lookup", *WORDS, rc=0).stdout
        self.assertTrue(out.startswith(f"triplet {KEY}:\n"), out)
        m = re.search(r"pending: deferred; a retry passes in (\d+)s", out)
        self.assertIsNotNone(m, out)
        self.assertTrue(200 <= int(m.group(1)) <= 240, out)  # delay 5m, first attempt a minute ago
        self.assertRegex(out, r"first seen: +" + ISO)
        self.assertIn("client 192.0.2.77: not auto-whitelisted (no passes counted)", out)

    def test_lookup_passed_and_unknown(self):
        t = now_ms()
        self.put_triplet(KEY, t - DAY_MS, t - DAY_MS + 10 * MINUTE_MS, t + 30 * DAY_MS)
        out = self.grey("lookup", *WORDS, rc=0).stdout
        self.assertRegex(out, r"passed: mail passes; it is kept until " + ISO)
        out = self.grey("lookup", "192.0.2.77", "user@example.com", "carol@example.org", rc=1).stdout
        self.assertIn("triplet 192.0.2.0/24/user@example.com/carol@example.org: not seen (or expired): its next"
                      " attempt is deferred for 5m 0s", out)
        # another /24 is another triplet
        self.grey("lookup", "192.0.3.77", *WORDS[1:], rc=1)

    def test_expired_triplet_is_not_seen(self):
        t = now_ms()
        self.put_triplet(KEY, t - 3 * DAY_MS, t - 3 * DAY_MS, t - DAY_MS)
        self.assertIn("not seen (or expired)", self.grey("lookup", *WORDS, rc=1).stdout)
        self.assertEqual(self.grey("list", rc=0).stdout, "")

    def test_list(self):
        t = now_ms()
        self.put_triplet("2001:db8::/64/<>/postmaster@example.org", t - MINUTE_MS, t - MINUTE_MS, t + DAY_MS)
        self.put_triplet(KEY, t - DAY_MS, t - DAY_MS + 10 * MINUTE_MS, t + DAY_MS)
        self.grey("whitelist", "198.51.100.1", rc=0)
        rows = [line.split("\t") for line in self.grey("list", rc=0).stdout.splitlines()]
        self.assertEqual([r[:3] for r in rows], [["triplet", KEY, "passed"],
                                                 ["triplet", "2001:db8::/64/<>/postmaster@example.org", "pending"],
                                                 ["client", "198.51.100.1", "whitelisted 5/5"]])
        for r in rows:
            self.assertEqual(len(r), 6)
            self.assertRegex(r[4], ISO)
            self.assertRegex(r[5], ISO)
        self.assertEqual(rows[2][3], "-")

    def test_whitelist_then_remove_the_client(self):
        out = self.grey("whitelist", "192.0.2.7", rc=0).stdout
        self.assertRegex(out, r"^auto-whitelisted client 192.0.2.7 until " + ISO + r"\n$")
        out = self.grey("lookup", "192.0.2.7", "user@example.com", "bob@example.org", rc=0).stdout
        self.assertIn("its client passes without it", out)
        self.assertIn("client 192.0.2.7: auto-whitelisted (5 passes, 5 needed)", out)
        # by address (awl_by): another host of the network is not whitelisted
        self.grey("lookup", "192.0.2.8", "user@example.com", "bob@example.org", rc=1)
        self.assertEqual(self.grey("remove", "--client", "192.0.2.7", rc=0).stdout, "removed client 192.0.2.7\n")
        p = self.grey("remove", "--client", "192.0.2.7", rc=1)
        self.assertIn("no client 192.0.2.7", p.stderr)
        self.grey("lookup", "192.0.2.7", "user@example.com", "bob@example.org", rc=1)

    def test_remove_triplet(self):
        t = now_ms()
        self.put_triplet(KEY, t - MINUTE_MS, t - MINUTE_MS, t + DAY_MS)
        self.assertEqual(self.grey("remove", *WORDS, rc=0).stdout, f"removed triplet {KEY}\n")
        self.grey("lookup", *WORDS, rc=1)
        p = self.grey("remove", *WORDS, rc=1)
        self.assertIn(f"no triplet {KEY}", p.stderr)

    def test_settings_come_from_the_config(self):
        """greylist.ipv4_prefix, delay and awl_by of the config, as the check uses them."""
        path = os.path.join(self.dir, "grey16.json")
        with open(path, "w") as f:
            json.dump({"store": self.store_settings(),
                       "greylist": {"ipv4_prefix": 16, "delay": "10m", "awl_by": "network"}}, f)
        t = now_ms()
        key16 = "192.0.0.0/16/user@example.com/bob@example.org"
        self.put_triplet(key16, t - MINUTE_MS, t - MINUTE_MS, t + 2 * DAY_MS)
        out = self.ctl("greylist", "lookup", *WORDS, config=path, rc=0).stdout
        m = re.search(r"a retry passes in (\d+)s", out)
        self.assertIsNotNone(m, out)
        self.assertTrue(500 <= int(m.group(1)) <= 540, out)  # delay 10m, first attempt a minute ago
        self.ctl("greylist", "whitelist", "192.0.2.7", config=path, rc=0)
        self.assertIn("192.0.0.0/16", self.ctl("greylist", "list", config=path, rc=0).stdout)

    def test_usage_errors(self):
        for args in ([], ["bogus"], ["lookup", "192.0.2.7", "a@b"], ["list", "x"], ["whitelist"],
                     ["whitelist", "--client", "192.0.2.7"], ["remove", "--client", "192.0.2.7", "x"]):
            with self.subTest(args=args):
                p = self.grey(*args, rc=1)
                self.assertIn("usage: spamtrapctl", p.stderr)
        p = self.grey("lookup", "192.0.2", "a@b", "c@d", rc=1)
        self.assertEqual(p.stderr, "spamtrapctl: greylist: '192.0.2' is not an IPv4 or IPv6 address\n")
        p = self.grey("lookup", "192.0.2.7", "a@b", "<>", rc=1)
        self.assertIn("is not a recipient address", p.stderr)


class SqliteGreylistTest(GreylistScenarios, CtlCase):
    def put_triplet(self, key, first, last, expires):
        self.ctl("greylist", "list", rc=0)  # creates the file and its schema
        with sqlite3.connect(self.db) as db:
            db.execute("INSERT INTO greylist_triplets (hash, key, first_ms, last_ms, expires_ms)"
                       " VALUES (?, ?, ?, ?, ?)",
                       (fnv1a(key), key, first, last, expires))


class RedisGreylistTest(ClassRedis, GreylistScenarios, CtlCase):
    def put_triplet(self, key, first, last, expires):
        name = self.prefix() + "grey:t:" + key
        redis_harness.command(self.port, "HSET", name, "first", str(first), "last", str(last), "exp", str(expires))
        if expires > now_ms():
            redis_harness.command(self.port, "PEXPIREAT", name, str(expires))
        else:
            redis_harness.command(self.port, "DEL", name)  # Redis would have expired it

    def prefix(self):
        return self.store_prefix

    def store_settings(self):
        s = super().store_settings()
        self.store_prefix = s["redis"]["prefix"]
        return s

    def test_whitelist_layout(self):
        """docs/redis.md: PREFIX "grey:a:" CLIENT, a hash with Redis's own expiry at max_age."""
        self.grey("whitelist", "192.0.2.7", rc=0)
        name = self.prefix() + "grey:a:192.0.2.7"
        self.assertEqual(redis_harness.command(self.port, "HGET", name, "count"), "5")
        pttl = redis_harness.command(self.port, "PTTL", name)
        self.assertTrue(35 * DAY_MS - 60000 < pttl <= 35 * DAY_MS, pttl)


if __name__ == "__main__":
    unittest.main(verbosity=2)
