"""Integration tests for spamtrapctl (Python 3 stdlib only).

Runs the real $SPAMTRAPCTL against a temporary config whose store is a
temporary SQLite file (and, for one class, a real redis-server started
here on a free loopback port and stopped by PID): add, lookup, list,
remove, expire, export, key normalisation, and the errors people see for
bad keys and broken stores. Entries with a past expiry are written with
Python's sqlite3 module, so no test sleeps.
"""

import datetime
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
import unittest

import spamtrapd_harness as sh
from redis_harness import ClassRedis

CTL = os.environ.get("SPAMTRAPCTL", "")
REJECT = "550 5.7.1 Blocked after mail to a spamtrap"
ACTION = "REJECT 5.7.1 Blocked after mail to a spamtrap"
ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d"


class CtlCase(unittest.TestCase):
    """A temporary folder, a config file, and a way to run spamtrapctl on it."""

    store = {}

    def setUp(self):
        self.assertTrue(CTL and os.access(CTL, os.X_OK), "SPAMTRAPCTL must name the spamtrapctl binary")
        self.dir = tempfile.mkdtemp(prefix="stctl.")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.db = os.path.join(self.dir, "blocklist.db")
        self.config = self.write_config(self.store_settings())

    def store_settings(self):
        return {"backend": "sqlite", "sqlite": {"path": self.db}}

    def write_config(self, store, name="spamtrapd.json"):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            json.dump({"store": store, "blocklist": {"reject": REJECT, "ttl": "24h"}}, f)
        return path

    def ctl(self, *args, config=None, rc=None):
        p = subprocess.run([*sh.command("SPAMTRAPCTL"), "-c", config or self.config, *args], capture_output=True,
                           text=True,
                           timeout=60)
        if rc is not None:
            self.assertEqual(p.returncode, rc, f"spamtrapctl {' '.join(args)}: {p.stdout}{p.stderr}")
        return p

    def add(self, *args):
        return self.ctl("add", *args, rc=0).stdout

    def listed(self):
        return [line.split("\t") for line in self.ctl("list", rc=0).stdout.splitlines()]


class StoreScenarios:
    """Cases that must pass on every backend (mixed into the classes below)."""

    def test_add_lookup_list_remove(self):
        out = self.add("<Spammer@Example.COM.>", "--reason", "ticket 42")
        self.assertRegex(out, r"^added spammer@example.com until " + ISO + r"\n$")
        rows = self.listed()
        self.assertEqual(len(rows), 1)
        key, expires, hits, last, trap, reason = rows[0]
        self.assertEqual((key, hits, trap, reason), ("spammer@example.com", "0", "-", "ticket 42"))
        left = datetime.datetime.fromisoformat(expires).timestamp() - time.time()
        self.assertAlmostEqual(left, 86400, delta=120)
        self.assertRegex(last, ISO)
        out = self.ctl("lookup", "SPAMMER@example.com", rc=0).stdout
        self.assertIn("spammer@example.com: blocklisted until", out)
        self.assertIn("reason:     ticket 42", out)
        self.assertIn("trap:       (none: added by hand)", out)
        self.assertEqual(self.ctl("remove", "spammer@example.com", rc=0).stdout, "removed spammer@example.com\n")
        p = self.ctl("lookup", "spammer@example.com", rc=1)
        self.assertIn("not blocklisted", p.stderr)
        self.assertIn("no such entry", self.ctl("remove", "spammer@example.com", rc=1).stderr)
        self.assertEqual(self.listed(), [])

    def test_lookup_ip_shows_every_covering_entry(self):
        for key in ("192.0.0.0/16", "192.0.2.7", "192.0.2.0/24", "198.51.100.0/24"):
            self.add(key)
        out = self.ctl("lookup", "192.0.2.7", rc=0).stdout
        heads = re.findall(r"^(\S+): blocklisted", out, re.M)
        self.assertEqual(heads, ["192.0.2.7", "192.0.2.0/24", "192.0.0.0/16"])
        self.assertEqual(out.count("matches:    192.0.2.7"), 2)
        out = self.ctl("lookup", "192.0.3.1", rc=0).stdout
        self.assertEqual(re.findall(r"^(\S+): blocklisted", out, re.M), ["192.0.0.0/16"])
        self.ctl("lookup", "203.0.113.1", rc=1)

    def test_lookup_address_shows_domain_entry(self):
        self.add("@Example.NET.")
        out = self.ctl("lookup", "anyone@example.net", rc=0).stdout
        self.assertIn("@example.net: blocklisted", out)
        self.assertIn("matches:    anyone@example.net", out)

    def test_add_with_ttl_updates_entry_in_force(self):
        self.add("sasl:Bob", "--ttl", "2h")
        (row,) = self.listed()
        left = datetime.datetime.fromisoformat(row[1]).timestamp() - time.time()
        self.assertAlmostEqual(left, 7200, delta=120)
        self.assertRegex(self.add("sasl:Bob", "--ttl=7d", "--reason", "again"), r"^updated sasl:bob until")
        (row,) = self.listed()
        self.assertEqual(row[5], "again")
        left = datetime.datetime.fromisoformat(row[1]).timestamp() - time.time()
        self.assertAlmostEqual(left, 7 * 86400, delta=120)

    def test_control_characters_never_reach_the_terminal(self):
        # one entry a line, tab separated: a tab, newline or escape in a reason must not break that
        self.add("192.0.2.98", "--reason", "two\tcolumns\nand a line\x1b[31m red")
        (row,) = self.listed()
        self.assertEqual(row[5], "two?columns?and a line?[31m red")
        out = self.ctl("lookup", "192.0.2.98", rc=0).stdout
        self.assertIn("reason:     two?columns?and a line?[31m red\n", out)

    def test_ttl_up_to_the_blocklist_ttl_maximum(self):
        self.add("192.0.2.96", "--ttl", "3650d")
        (row,) = self.listed()
        left = datetime.datetime.fromisoformat(row[1]).timestamp() - time.time()
        self.assertAlmostEqual(left, 3650 * 86400, delta=120)
        # longer is refused with the reason, never wrapped around or cut (UBSan aborts on an overflow)
        for ttl in ("3651d", "315360001", "106751991167300d", "99999999999999999999999s"):
            with self.subTest(ttl=ttl):
                p = self.ctl("add", "192.0.2.97", "--ttl", ttl, rc=1)
                self.assertIn(f"--ttl: '{ttl}' is longer than 3650d, the most blocklist.ttl allows", p.stderr)
                self.assertEqual(p.stdout, "")
        self.assertEqual([r[0] for r in self.listed()], ["192.0.2.96"])

    def test_key_normalisation(self):
        cases = [
            ("<User@Example.COM>", "user@example.com"),
            ("@Example.ORG.", "@example.org"),
            ("HELO:Mail.Example.NET", "helo:mail.example.net"),
            ("sasl:MixedCase", "sasl:mixedcase"),
            ("SASL:J Doe", "sasl:j doe"),
            ("<sasl:alice@sink.test>", '"sasl:alice"@sink.test'),
            ('"x y"@Quoted.Example', "x y@quoted.example"),
            ("::ffff:192.0.2.9", "192.0.2.9"),
            ("2001:DB8:0:0::1", "2001:db8::1"),
            ("2001:db8:1::/48", "2001:db8:1::/48"),
            ("[192.0.2.10]", "192.0.2.10"),
        ]
        for given, want in cases:
            with self.subTest(given=given):
                self.assertRegex(self.add(given), "^added " + re.escape(want) + " until")
        self.assertEqual(sorted(r[0] for r in self.listed()), sorted(w for _, w in cases))

    def test_typed_keys_round_trip(self):
        """Keys that read alike name different entries (a sender spelled like a SASL or HELO key is
        quoted), and every key list prints reads back through lookup, remove and import."""
        given = ["sasl:J Doe", "sasl:alice@sink.test", '"sasl:alice"@sink.test', "helo:mx@bad.example",
                 "<helo:mx@bad.example>", "x y@quoted.example", '"\\"x\\""@quoted.example', "sasl:Jörg"]
        for key in given:
            self.add(key)
        before = self.ctl("list", rc=0).stdout
        keys = [row[0] for row in self.listed()]
        self.assertEqual(sorted(keys), sorted([
            "sasl:j doe", "sasl:alice@sink.test", '"sasl:alice"@sink.test', "helo:mx@bad.example",
            '"helo:mx"@bad.example', "x y@quoted.example", '"\\"x\\""@quoted.example', "sasl:jörg"]))
        for key in keys:
            with self.subTest(key=key):
                out = self.ctl("lookup", key, rc=0).stdout
                self.assertEqual(re.findall(r"^(.+): blocklisted", out, re.M), [key])
        # the SASL user is not the sender that reads like it, nor the other way round
        self.ctl("remove", '"sasl:alice"@sink.test', rc=0)
        self.ctl("lookup", "sasl:alice@sink.test", rc=0)
        self.ctl("lookup", "<sasl:alice@sink.test>", rc=1)
        for key in keys:
            if key != '"sasl:alice"@sink.test':
                self.assertEqual(self.ctl("remove", key, rc=0).stdout, f"removed {key}\n")
        self.assertEqual(self.listed(), [])
        backup = os.path.join(self.dir, "backup.tsv")
        with open(backup, "w") as f:
            f.write(before)
        self.assertEqual(self.ctl("import", backup, rc=0).stdout, f"imported {len(keys)} entries\n")
        self.assertEqual(self.ctl("list", rc=0).stdout, before)

    def test_export_postfix(self):
        for key in ("spammer@example.com", "@example.net", "192.0.2.7", "198.51.100.0/24",
                    "203.0.113.0/31", "2001:db8::5", "2001:db8:1::/48", "sasl:bob", "helo:bad.example"):
            self.add(key)
        p = self.ctl("export", "--format", "postfix", rc=0)
        self.assertEqual(p.stdout.splitlines(), sorted([
            f"spammer@example.com {ACTION}",
            f"example.net {ACTION}",
            f"192.0.2.7 {ACTION}",
            f"198.51.100 {ACTION}",
            f"203.0.113.0 {ACTION}",
            f"203.0.113.1 {ACTION}",
            f"2001:db8::5 {ACTION}",
        ]))
        self.assertIn("1 IPv6 network entries left out", p.stderr)
        self.assertEqual(self.ctl("export", rc=0).stdout, p.stdout)  # postfix is the default
        out = self.ctl("export", "--keys", "sasl,helo", rc=0).stdout
        self.assertEqual(out.splitlines(), [f"bad.example {ACTION}", f"bob {ACTION}"])
        self.postmap_check(p.stdout, "hash", {"198.51.100": True, "example.net": True, "203.0.113.2": False})

    def test_export_cidr(self):
        for key in ("spammer@example.com", "192.0.2.7", "198.51.100.0/25", "2001:db8:1::/48"):
            self.add(key)
        out = self.ctl("export", "--format", "cidr", rc=0).stdout
        self.assertEqual(out.splitlines(), [
            f"192.0.2.7 {ACTION}", f"198.51.100.0/25 {ACTION}", f"2001:db8:1::/48 {ACTION}"])
        self.postmap_check(out, "cidr", {"198.51.100.100": True, "198.51.100.200": False,
                                         "2001:db8:1:2::3": True, "2001:db8:2::1": False})
        p = self.ctl("export", "--format", "cidr", "--keys", "sender", rc=1)
        self.assertIn("client addresses only", p.stderr)

    def test_export_output_replaces_the_file_whole(self):
        for key in ("192.0.2.0/24", "192.0.2.7", "2001:db8::/64", "spammer@example.com"):
            self.add(key)
        out = os.path.join(self.dir, "exports")
        os.mkdir(out)
        path = os.path.join(out, "blocklist.nft")
        with open(path, "w") as f:
            f.write("old\n")
        p = self.ctl("export", "--format", "nft", "--output", path, rc=0)
        self.assertEqual(p.stdout, "")
        with open(path) as f:
            text = f.read()
        # the same export; a timeout is what is left of the entry, which a second's tick between the
        # two commands can take one from
        def remaining_masked(export):
            return re.sub(r"timeout \d+s", "timeout Ns", export)
        self.assertEqual(remaining_masked(text), remaining_masked(self.ctl("export", "--format", "nft", rc=0).stdout))
        self.assertIn("\t192.0.2.0/24 timeout ", text)
        self.assertNotIn("192.0.2.7", text)  # inside the /24: merged into it
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o644)
        self.assertEqual(os.listdir(out), ["blocklist.nft"])  # no temporary file left
        # a target that cannot be replaced: exit 2, nothing half-written, no temporary file
        os.mkdir(os.path.join(out, "taken"))
        p = self.ctl("export", "--format", "pf", "--output", os.path.join(out, "taken"), rc=2)
        self.assertIn("renaming the temporary file to", p.stderr)
        p = self.ctl("export", "--format", "pf", "--output", os.path.join(self.dir, "nonexistent", "x"), rc=2)
        self.assertIn("creating a temporary file for", p.stderr)
        self.assertEqual(sorted(os.listdir(out)), ["blocklist.nft", "taken"])
        with open(path) as f:
            self.assertEqual(f.read(), text)

    def test_export_formats_take_only_their_keys(self):
        self.add("192.0.2.7")
        for fmt in ("nft", "ipset", "pf", "cidr"):
            with self.subTest(fmt=fmt):
                p = self.ctl("export", "--format", fmt, "--keys", "client,sender", rc=1)
                self.assertIn(f"--format {fmt} holds client addresses only", p.stderr)
                self.assertEqual(p.stdout, "")
        p = self.ctl("export", "--format", "rbldnsd", "--keys", "sender", rc=1)
        self.assertIn("client addresses and sender domains only", p.stderr)
        p = self.ctl("export", "--format", "iptables", "--output", os.path.join(self.dir, "x"), rc=1)
        self.assertIn("unknown format 'iptables' (postfix, cidr, nft, ipset, pf or rbldnsd)", p.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "x")))
        self.ctl("list", "--output", "x", rc=1)

    def postmap_check(self, table, kind, queries):
        """The export is what Postfix reads: build it with the real postmap and query it."""
        postmap = shutil.which("postmap") or "/usr/sbin/postmap"
        if not os.access(postmap, os.X_OK):
            return  # the exact-lines assertions above still hold
        conf = os.path.join(self.dir, "pfconf")
        os.makedirs(conf, exist_ok=True)
        open(os.path.join(conf, "main.cf"), "w").close()
        path = os.path.join(self.dir, "table." + kind)
        with open(path, "w") as f:
            f.write(table)
        if kind == "hash":
            subprocess.run([postmap, "-c", conf, "hash:" + path], check=True, capture_output=True)
        for query, hit in queries.items():
            p = subprocess.run([postmap, "-c", conf, "-q", query, f"{kind}:{path}"], capture_output=True,
                               text=True)
            self.assertEqual(p.returncode, 0 if hit else 1, f"postmap -q {query}: {p.stderr}")
            if hit:
                self.assertEqual(p.stdout.strip(), ACTION)

    def test_bad_keys_are_refused_clearly(self):
        cases = [
            ("example.com", "is not a key: use user@example.com, @example.com"),
            ("192.0.2.1/24", "has host bits set below the /24 prefix (did you mean 192.0.2.0/24?)"),
            ("<>", "the null sender <> is never blocklisted"),
            ("sasl:", "sasl: needs a name"),
            ("helo:a b", "no spaces"),
            ("sasl:a\tb", "without control characters"),
            ("<sasl:alice>", "not an IP address or network"),
            ("10.0.0.0/7", "never checks a /7 network"),
            ("2001:db8::/33", "never checks a /33 network"),
            ("user@", "not a valid address"),
            ("@", "not a valid @domain"),
            ("300.1.2.3", "not an IP address or network"),
        ]
        for key, message in cases:
            with self.subTest(key=key):
                p = self.ctl("add", key, rc=1)
                self.assertIn(message, p.stderr)
                self.assertEqual(p.stdout, "")
        self.assertEqual(self.listed(), [])

    def test_usage_errors(self):
        cases = [
            ([], "no command given"),
            (["frobnicate"], "unknown command 'frobnicate'"),
            (["list", "extra"], "list: takes no KEY"),
            (["lookup"], "lookup: needs a KEY"),
            (["add", "a@b.c", "--ttl"], "--ttl needs a value"),
            (["add", "a@b.c", "--ttl", "soon"], "'soon' is not a duration"),
            (["add", "a@b.c", "--ttl", "-5"], "'-5' is not a duration"),
            (["add", "a@b.c", "--ttl", "0s"], "'0s': the shortest is 1s"),
            (["remove", "a@b.c", "--ttl", "1h"], "takes no --ttl"),
            (["export", "--format", "csv"], "unknown format 'csv'"),
            (["export", "--keys", "senders"], "unknown kind 'senders'"),
            (["list", "--bogus"], "unknown option --bogus"),
        ]
        for args, message in cases:
            with self.subTest(args=args):
                p = self.ctl(*args, rc=1)
                self.assertIn(message, p.stderr)


class CommandLineTest(unittest.TestCase):
    """--help and --version need no config and no store: they work before anything is set up."""

    def run_ctl(self, *args):
        return subprocess.run([*sh.command("SPAMTRAPCTL"), *args], capture_output=True, text=True, timeout=30)

    def test_help_prints_usage_to_stdout(self):
        for args in (["--help"], ["-h"], ["-c", "/nonexistent.json", "--help"], ["add", "--help"]):
            with self.subTest(args=args):
                p = self.run_ctl(*args)
                self.assertEqual(p.returncode, 0, p.stderr)
                self.assertTrue(p.stdout.startswith("usage: spamtrapctl "), p.stdout)
                self.assertIn("--version", p.stdout)
                self.assertEqual(p.stderr, "")

    def test_version_prints_the_cmake_version(self):
        for flag in ("--version", "-V"):
            with self.subTest(flag=flag):
                p = self.run_ctl(flag)
                self.assertEqual(p.returncode, 0, p.stderr)
                self.assertEqual(p.stdout, f"spamtrapctl {sh.project_version()}\n")
                self.assertEqual(p.stderr, "")

    def test_unknown_global_option_is_a_usage_error(self):
        p = self.run_ctl("--bogus", "list")
        self.assertEqual(p.returncode, 1)
        self.assertEqual(p.stdout, "")
        self.assertIn("usage: spamtrapctl ", p.stderr)


class SqliteTest(StoreScenarios, CtlCase):
    def put_expired(self, key, ago):
        """An entry that expired `ago` seconds ago, written behind spamtrapctl's back."""
        self.add(key)  # creates the file and its schema
        now = int(time.time())
        with sqlite3.connect(self.db) as db:
            db.execute("UPDATE blocklist SET expires = ?, trap = 'trap@example.com', hits = 4,"
                       " client = '192.0.2.7', helo = 'bad.example', queue_id = 'ABC123' WHERE key = ?",
                       (now - ago, key))

    def test_expire_and_expired_entries(self):
        self.put_expired("old@example.com", 3600)
        self.add("new@example.com")
        self.assertEqual([r[0] for r in self.listed()], ["new@example.com"])
        p = self.ctl("lookup", "old@example.com", rc=1)
        self.assertRegex(p.stdout, r"old@example.com: expired since " + ISO + r" \(1h 0m ago\)")
        self.assertIn("trap:       trap@example.com", p.stdout)
        self.assertIn("hits:       4", p.stdout)
        self.assertIn("queue id:   ABC123", p.stdout)
        self.assertEqual(self.ctl("expire", rc=0).stdout, "removed 1 expired entry\n")
        self.assertEqual(self.ctl("expire", rc=0).stdout, "removed 0 expired entries\n")
        self.assertIn("not blocklisted", self.ctl("lookup", "old@example.com", rc=1).stderr)

    def test_add_over_expired_entry_starts_afresh(self):
        self.put_expired("old@example.com", 60)
        self.assertRegex(self.add("old@example.com"), "^added old@example.com")
        out = self.ctl("lookup", "old@example.com", rc=0).stdout
        self.assertIn("hits:       0", out)
        self.assertIn("trap:       (none: added by hand)", out)

    def test_blocklist_of_0_1_0(self):
        """A file written by 0.1.0 opens upgraded: the entry that the sender <"sasl:alice"@sink.test>
        wrote under the SASL user's key is that sender's entry now, SASL names are lowercased, and
        every other entry is as it was."""
        now = int(time.time())
        fixture = os.path.join(os.environ["SPAMTRAPD_SOURCE_DIR"], "tests", "data", "blocklist-0.1.0.sql")
        with sqlite3.connect(self.db) as db, open(fixture) as f:
            db.executescript(f.read())
            db.executemany("INSERT INTO blocklist (key, sender, first_seen, last_seen, expires, hits, trap)"
                           " VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [("sasl:alice@sink.test", "sasl:alice@sink.test", now, now, now + 3600, 1, "trap@t.test"),
                            ("sasl:Bob", "", now, now, now + 3600, 0, ""),
                            ("spammer@bad.example", "spammer@bad.example", now, now, now + 3600, 2, "trap@t.test"),
                            ("192.0.2.0/24", "x@bad.example", now, now, now + 3600, 1, "trap@t.test")])
        db.close()
        self.assertEqual(sorted(r[0] for r in self.listed()),
                         ['"sasl:alice"@sink.test', "192.0.2.0/24", "sasl:bob", "spammer@bad.example"])
        self.assertIn("not blocklisted", self.ctl("lookup", "sasl:alice@sink.test", rc=1).stderr)
        out = self.ctl("lookup", '"sasl:alice"@sink.test', rc=0).stdout
        self.assertIn("sender:     sasl:alice@sink.test", out)
        self.ctl("lookup", "sasl:BOB", rc=0)
        self.ctl("lookup", "192.0.2.9", rc=0)
        with sqlite3.connect(self.db) as db:
            self.assertEqual(db.execute("PRAGMA user_version").fetchone(), (7,))
        db.close()

    def test_new_database_file(self):
        self.add("a@example.com")
        self.assertEqual(os.stat(self.db).st_mode & 0o777, 0o640)

    def test_store_errors(self):
        missing = os.path.join(self.dir, "no", "such", "dir", "x.db")
        config = self.write_config({"backend": "sqlite", "sqlite": {"path": missing}}, "bad.json")
        p = self.ctl("list", config=config, rc=2)
        self.assertIn(missing, p.stderr)
        self.assertIn("No such file or directory", p.stderr)
        p = self.ctl("list", config=os.path.join(self.dir, "nothere.json"), rc=2)
        self.assertIn("nothere.json", p.stderr)
        with open(self.config, "w") as f:
            f.write('{"store": {"backend": "sqlite", "sqlite": {"paht": "x"}}}')
        p = self.ctl("list", rc=2)
        self.assertIn("paht", p.stderr)

    def test_override_store_path(self):
        other = os.path.join(self.dir, "other.db")
        p = subprocess.run([*sh.command("SPAMTRAPCTL"), "-c", self.config, "-o", f"store.sqlite.path={other}",
                            "add", "x@y.example"],
                           capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertTrue(os.path.exists(other))
        self.assertEqual(self.listed(), [])


class RedisTest(ClassRedis, StoreScenarios, CtlCase):
    """The same scenarios against a real redis-server (CI installs it: a missing one fails)."""

    def test_redis_down_is_a_store_error(self):
        config = self.write_config({"backend": "redis", "redis": {"host": "127.0.0.1", "port": sh.free_port(),
                                                                  "connect_timeout": 200}}, "down.json")
        start = time.monotonic()
        p = self.ctl("list", config=config, rc=2)
        self.assertLess(time.monotonic() - start, 5)
        self.assertIn("Connection refused", p.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
