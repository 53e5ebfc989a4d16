"""Integration tests of the relay check (issue 14) through the policy
protocol: the real daemon, a real SQLite file and a real redis-server.

An account (sasl_username) that sends from more client networks in the
window than relay.max_networks is deferred at the first network past the
limit; block_account then stops it at MAIL FROM on the sender listener;
two daemons on one Redis count together. Each test uses its own account,
so that the tests of a class can share one daemon.
"""

import os
import shutil
import tempfile
import threading
import time
import unittest

import redis_harness as rh
import spamtrapd_harness as sh

TRAP = "trap@example.com"
DEFER = "451 4.7.1 Too many client networks for this account, try again later"
BLOCK_REPLY = "550 5.7.1 Sender is blocklisted after mail to a spamtrap"
RELAY = {
    "traps": {"addresses": [TRAP]},
    "relay": {"mode": "enforce", "max_networks": 10, "exempt_networks": ["198.51.100.0/24"]},
}


def net(i):
    """A client address in the /24 number i (203.0.i.7 is TEST-NET only for i = 113: fine on loopback)."""
    return f"198.18.{i}.7"


def redis_store(redis):
    return rh.store_override(redis, "relay:")


def start_redis(case):
    return rh.start_server(case)[0]


class RelayChecks(sh.PolicyChecks):
    def ask(self, d, account, client, rcpt="friend@example.org", sender=None, **kw):
        sender = sender if sender is not None else f"{account}@example.com"
        return self.client(d, "trap").check(sender=sender, recipient=rcpt, client_address=client,
                                            sasl_username=account, **kw)


class Behaviour(RelayChecks):
    """The same rows for every store (the subclasses start the daemon)."""

    def test_eleventh_network_is_deferred_and_not_counted(self):
        d = self.d
        for i in range(1, 11):
            self.assertEqual(self.ask(d, "alice", net(i)), "DUNNO", i)
        mark = d.log_mark()
        self.assertEqual(self.ask(d, "alice", net(11)), DEFER)
        d.wait_for_log(r"tempfail: relay account=sasl:alice network=198\.18\.11\.0/24 networks=11 max_networks=10",
                       since=mark)
        self.assertEqual(self.ask(d, "alice", net(12)), DEFER)
        # a known network refreshes and passes; the refused ones were not added
        self.assertEqual(self.ask(d, "Alice", "198.18.5.99"), "DUNNO")
        self.assertEqual(self.ask(d, "alice", net(11)), DEFER)
        # another account is not affected, nor unauthenticated mail from the same networks
        self.assertEqual(self.ask(d, "bob", net(11)), "DUNNO")
        self.assertEqual(self.client(d, "trap").check(sender="alice@example.com", recipient="x@example.org",
                                                      client_address=net(13)), "DUNNO")

    def test_parallel_new_networks_pass_once(self):
        # one free slot, 16 requests from new networks at once on 16 connections (both workers):
        # the store's atomic add lets exactly one through
        d = self.d
        for i in range(1, 10):
            self.assertEqual(self.ask(d, "nina", net(100 + i)), "DUNNO", i)
        clients = [self.client(d, "trap") for _ in range(16)]
        barrier = threading.Barrier(len(clients))
        answers = [None] * len(clients)

        def one(k):
            barrier.wait()
            answers[k] = clients[k].check(sender="nina@example.com", recipient="friend@example.org",
                                          client_address=net(150 + k), sasl_username="nina")

        threads = [threading.Thread(target=one, args=(k,)) for k in range(len(clients))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual((answers.count("DUNNO"), answers.count(DEFER)), (1, 15), answers)
        out = d.ctl("relay", "show", "nina").stdout
        self.assertIn("account sasl:nina: 10 network(s)", out)

    def test_exempt_and_private_networks_never_count(self):
        d = self.d
        for i in range(1, 11):
            self.assertEqual(self.ask(d, "carol", net(20 + i)), "DUNNO", i)
        for client in ("198.51.100.9", "10.1.2.3", "192.168.7.7", "fd00::25", "127.0.0.1"):
            self.assertEqual(self.ask(d, "carol", client), "DUNNO", client)
        self.assertEqual(self.ask(d, "carol", "100.64.1.1"), DEFER)  # CGNAT: counted
        self.assertEqual(self.ask(d, "carol", "2001:db8:77::1"), DEFER)

    def test_ipv6_counts_by_48(self):
        d = self.d
        for i in range(1, 10):
            self.assertEqual(self.ask(d, "dave", net(40 + i)), "DUNNO", i)
        self.assertEqual(self.ask(d, "dave", "2001:db8:5:1::1"), "DUNNO")  # the 10th network
        self.assertEqual(self.ask(d, "dave", "2001:db8:5:ffff::2"), "DUNNO")  # the same /48
        self.assertEqual(self.ask(d, "dave", "::ffff:198.18.41.200"), "DUNNO")  # mapped: network 41's /24
        self.assertEqual(self.ask(d, "dave", "2001:db8:6::1"), DEFER)


    def test_spamtrapctl_relay_show_and_reset(self):
        d = self.d
        for i in range(1, 11):
            self.assertEqual(self.ask(d, "kate", net(60 + i)), "DUNNO", i)
        self.assertEqual(self.ask(d, "kate", net(99)), DEFER)
        out = d.ctl("relay", "show", "Kate").stdout
        self.assertIn("account sasl:kate: 10 network(s) in the last 3600s (relay.max_networks 10)", out)
        lines = [line for line in out.splitlines() if line.startswith("198.18.")]
        self.assertEqual(len(lines), 10, out)
        self.assertEqual(sorted(line.split("\t")[0] for line in lines),
                         sorted(f"198.18.{60 + i}.0/24" for i in range(1, 11)))
        self.assertIn("\tlast seen ", lines[0])
        self.assertNotIn("198.18.99.0/24", out)  # refused: never counted
        self.assertEqual(d.ctl("relay", "reset", "sasl:kate").stdout, "account sasl:kate: networks forgotten\n")
        self.assertEqual(self.ask(d, "kate", net(99)), "DUNNO")
        self.assertEqual(d.ctl("relay", "reset", "nobody-here", check=False).returncode, 1)
        self.assertEqual(d.ctl("relay", "show", "nobody-here", check=False).returncode, 1)
        self.assertEqual(d.ctl("relay", "show", check=False).returncode, 1)


class TestSqlite(Behaviour, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = sh.Spamtrapd(RELAY)
        try:
            cls.d.start()
        except BaseException:
            cls.d.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()


class TestRedis(Behaviour, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.redis, cls.tmp = rh.start_server()
        cls.d = sh.Spamtrapd(sh.merge(RELAY, redis_store(cls.redis)))
        try:
            cls.d.start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()
        cls.redis.kill()
        shutil.rmtree(cls.tmp, True)


class TestShared(RelayChecks, unittest.TestCase):
    def test_two_daemons_count_together(self):
        redis = start_redis(self)
        a = sh.Spamtrapd(sh.merge(RELAY, redis_store(redis)))
        b = sh.Spamtrapd(sh.merge(RELAY, redis_store(redis)))
        for d in (a, b):
            self.addCleanup(d.cleanup)
            d.start()
        for i in range(1, 7):
            self.assertEqual(self.ask(a, "erin", net(i)), "DUNNO", i)
        for i in range(7, 11):
            self.assertEqual(self.ask(b, "erin", net(i)), "DUNNO", i)
        self.assertEqual(self.ask(b, "erin", net(11)), DEFER)
        self.assertEqual(self.ask(a, "erin", net(12)), DEFER)
        self.assertEqual(self.ask(a, "erin", net(9)), "DUNNO")  # seen at B: known at A


    def test_two_daemons_with_copies_decide_the_last_slots_once(self):
        # both daemons answer the account's known networks from their copies (docs/redis.md, "The
        # hot copies"); a botnet's new networks spread over both at once still pass exactly as many
        # times as there are free slots: a new network is always Redis's atomic add
        redis = start_redis(self)
        daemons = [sh.Spamtrapd(sh.merge(RELAY, redis_store(redis))) for _ in range(2)]
        for d in daemons:
            self.addCleanup(d.cleanup)
            mark = 0
            d.start()
            self.assertEqual(self.ask(d, "warm", net(200)), "DUNNO")  # starts the view
            d.wait_for_log(r"local view: built, the relay and ratelimit keys' hot copies answer", since=mark)
        for i in range(1, 8):
            self.assertEqual(self.ask(daemons[i % 2], "olga", net(i)), "DUNNO", i)
        for d in daemons:  # a known network, from each daemon's copy of the set (read once)
            for _ in range(2):
                self.assertEqual(self.ask(d, "olga", net(1)), "DUNNO")
        clients = [self.client(daemons[k % 2], "trap") for k in range(16)]
        barrier = threading.Barrier(len(clients))
        answers = [None] * len(clients)

        def one(k):
            barrier.wait()
            answers[k] = clients[k].check(sender="olga@example.com", recipient="friend@example.org",
                                          client_address=net(150 + k), sasl_username="olga")

        threads = [threading.Thread(target=one, args=(k,)) for k in range(len(clients))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual((answers.count("DUNNO"), answers.count(DEFER)), (3, 13), answers)
        # and afterwards every daemon refuses the next new network, knows the ten
        for d in daemons:
            self.assertEqual(self.ask(d, "olga", net(199)), DEFER)
            for k in range(16):
                if answers[k] == "DUNNO":
                    self.assertEqual(self.ask(d, "olga", net(150 + k)), "DUNNO")
        self.assertIn("account sasl:olga: 10 network(s)", daemons[0].ctl("relay", "show", "olga").stdout)


class TestSqliteWriteBehind(RelayChecks, unittest.TestCase):
    """SQLite: the daemon counts networks and charges buckets in memory and writes them behind
    (docs/relay.md, "What a crash can lose"): a stop writes everything, a crash loses at most
    what the last few hundred ms counted."""

    CONFIG = sh.merge(RELAY, {"relay": {"max_networks": 3}, "ratelimit": {"mode": "enforce", "rules": [
        {"name": "account", "key": "sasl_username", "rate": "4/1h"}]}})

    def members(self, d, account):
        """The networks the file holds for the account, read past the daemon (no spamtrapctl sync)."""
        import sqlite3
        db = sqlite3.connect(d.config["store"]["sqlite"]["path"], timeout=10)
        try:
            return db.execute("SELECT count(*) FROM distinct_members WHERE set_name = ?",
                              ("relay:sasl:" + account,)).fetchone()[0]
        finally:
            db.close()

    def test_stop_keeps_networks_and_buckets(self):
        d = sh.Spamtrapd(self.CONFIG)
        self.addCleanup(d.cleanup)
        d.start()
        for i in range(1, 4):
            self.assertEqual(self.ask(d, "rita", net(i)), "DUNNO", i)
        self.assertEqual(self.ask(d, "rita", net(4)), DEFER)
        for k in range(4):
            self.assertEqual(self.ask(d, "ruth", net(200)), "DUNNO", k)
        self.assertTrue(self.ask(d, "ruth", net(200)).startswith("4"))
        d.restart()
        self.assertEqual(self.ask(d, "rita", net(5)), DEFER)
        self.assertEqual(self.ask(d, "rita", net(2)), "DUNNO")
        self.assertTrue(self.ask(d, "ruth", net(200)).startswith("4"))

    def test_crash_keeps_what_was_written(self):
        d = sh.Spamtrapd(self.CONFIG)
        self.addCleanup(d.cleanup)
        d.start()
        for i in range(1, 4):
            self.assertEqual(self.ask(d, "sven", net(i)), "DUNNO", i)
        # the daemon writes by itself, without a stop or a spamtrapctl asking
        deadline = time.monotonic() + 30
        while self.members(d, "sven") < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.members(d, "sven"), 3)
        d.kill()
        d.start()
        self.assertEqual(self.ask(d, "sven", net(4)), DEFER)
        self.assertEqual(self.ask(d, "sven", net(3)), "DUNNO")


class TestRedisExpiry(RelayChecks, unittest.TestCase):
    def test_every_relay_and_ratelimit_key_expires(self):
        """In Redis the checks' keys bound themselves (no max_entries, max_buckets there): every
        relay set, ratelimit bucket and block_account entry they write has an expiry."""
        redis = start_redis(self)
        d = sh.Spamtrapd(sh.merge(sh.merge(RELAY, redis_store(redis)), {
            "relay": {"max_networks": 2, "block_account": True},
            "ratelimit": {"mode": "enforce", "rules": [
                {"name": "account", "key": "sasl_username", "rate": "100/1h"},
                {"name": "client", "key": "client_address", "rate": "100/1h"}]}}))
        self.addCleanup(d.cleanup)
        d.start()
        for account in ("gina", "hank"):
            for i in range(1, 4):
                self.ask(d, account, net(i))
        want = {"ds:relay:": 2, "ctr:ratelimit:": 4, "bl:sasl:": 2}

        def counted():
            keys = [k.decode() if isinstance(k, bytes) else k for k in rh.command(redis.port, "KEYS", "relay:*")]
            kinds = {kind: [k for k in keys if k.startswith("relay:" + kind)] for kind in want}
            return {kind: len(v) for kind, v in kinds.items()}, [k for v in kinds.values() for k in v]
        # the buckets' charges are written behind (within 200 ms)
        rh.wait_until(lambda: counted()[0] == want, 3, "every key written")
        for key in counted()[1]:
            self.assertGreater(rh.command(redis.port, "PTTL", key), 0, key)


class TestBlockAccount(RelayChecks, unittest.TestCase):
    def test_blocked_at_mail_from_and_explained(self):
        d = sh.Spamtrapd(sh.merge(RELAY, {"relay": {"max_networks": 2, "block_account": True,
                                                    "action": "reject", "reply": "554 5.7.1 Account suspended"}}))
        self.addCleanup(d.cleanup)
        d.start()
        self.assertEqual(self.ask(d, "frank", net(1)), "DUNNO")
        self.assertEqual(self.ask(d, "frank", net(2)), "DUNNO")
        self.assertEqual(self.sender_check_sasl(d, "frank", net(2)), "DUNNO")
        self.assertEqual(self.ask(d, "frank", net(3)), "554 5.7.1 Account suspended")
        # now refused at MAIL FROM, from any network, whatever the sender address
        self.assertEqual(self.sender_check_sasl(d, "FRANK", net(1)), BLOCK_REPLY)
        self.assertEqual(self.sender_check_sasl(d, "frank", "192.0.2.99", sender="other@example.net"), BLOCK_REPLY)
        self.assertEqual(self.sender_check_sasl(d, "grace", net(1)), "DUNNO")
        out = d.ctl("lookup", "sasl:frank").stdout
        self.assertRegex(out, r"^sasl:frank: blocklisted until ")
        self.assertRegex(out, r"\n  reason: +relay\n")
        self.assertRegex(out, r"\n  trap: +\(none: the relay check, a compromised account\)\n")
        self.assertRegex(out, r"\n  client: +198\.18\.3\.7\n")

    def sender_check_sasl(self, d, account, client, sender=None):
        return self.client(d, "sender").check(sender=sender or f"{account}@example.com", client_address=client,
                                               sasl_username=account)


class TestNotify(RelayChecks, unittest.TestCase):
    def test_hung_hook_does_not_slow_mail(self):
        tmp = tempfile.mkdtemp(prefix="spamtrapd-relay-hook.")
        self.addCleanup(shutil.rmtree, tmp, True)
        os.chmod(tmp, 0o777)  # the daemon may run as another user
        script = 'echo "$1 $2 $3 $4" > "$0/started.$$"; sleep 30; touch "$0/done.$$"'
        d = sh.Spamtrapd(sh.merge(RELAY, {"relay": {
            "max_networks": 1, "notify_timeout": "60s",
            "notify": ["/bin/sh", "-c", script, tmp, "%{account}", "%{network}", "%{count}", "%{action}"]}}))
        self.addCleanup(d.cleanup)
        d.start()
        self.assertEqual(self.ask(d, "ivan", net(1)), "DUNNO")
        self.assertEqual(self.ask(d, "ivan", net(2)), DEFER)
        deadline = time.monotonic() + 30
        while not [f for f in os.listdir(tmp) if f.startswith("started.")]:
            self.assertLess(time.monotonic(), deadline, "the hook never started")
            time.sleep(0.05)
        started = [f for f in os.listdir(tmp) if f.startswith("started.")]
        with open(os.path.join(tmp, started[0]), encoding="utf-8") as f:
            self.assertEqual(f.read(), "sasl:ivan 198.18.2.0/24 2 defer\n")
        # the hook hangs: mail goes on, tripping accounts queue more hooks, and every request is answered
        for i in range(20):
            account = f"other{i}"
            self.assertEqual(self.ask(d, account, net(1)), "DUNNO")
            self.assertEqual(self.ask(d, account, net(2)), DEFER)
        self.assertEqual(self.ask(d, "ivan", net(1)), "DUNNO")
        # ... all while the first hook is still running
        self.assertEqual([f for f in os.listdir(tmp) if f.startswith("done.")], [])


class TestCtlAccountForms(RelayChecks, unittest.TestCase):
    def test_relay_show_and_reset_forms(self):
        d = sh.Spamtrapd(sh.merge(RELAY, {"relay": {"keys": ["sasl_username", "sender"],
                                                    "sender_domains": ["example.com"]}}))
        self.addCleanup(d.cleanup)
        d.start()
        # a login that is an address (common), from one network
        self.assertEqual(self.ask(d, "Mia@Example.com", net(1)), "DUNNO")
        # the same address as an unauthenticated sender of a sender domain, from two others
        for i in (2, 3):
            self.assertEqual(self.client(d, "trap").check(sender="mia@example.com", recipient="x@example.org",
                                                          client_address=net(i)), "DUNNO")
        # a bare address is the login and, in a sender domain, the sender's account too
        out = d.ctl("relay", "show", "mia@example.com").stdout
        self.assertIn("account sasl:mia@example.com: 1 network(s)", out)
        self.assertIn("account mia@example.com: 2 network(s)", out)
        out = d.ctl("relay", "show", "SASL:mia@example.com").stdout
        self.assertIn("account sasl:mia@example.com: 1 network(s)", out)
        self.assertNotIn("account mia@example.com:", out)
        out = d.ctl("relay", "show", "sender:<Mia@Example.COM>").stdout
        self.assertIn("account mia@example.com: 2 network(s)", out)
        self.assertNotIn("sasl:", out)
        self.assertEqual(d.ctl("relay", "reset", "sender:mia@example.com").stdout,
                         "account mia@example.com: networks forgotten\n")
        self.assertIn("account sasl:mia@example.com: 1 network(s)", d.ctl("relay", "show", "mia@example.com").stdout)
        # forms that name no account: a clear error, exit 1
        for arg, why in (("helo:mail.example.com", "unknown account form 'helo:'"),
                         ("relay:sasl:mia", "not its store set"),
                         ("sender:mia@example.net", "not one of relay.sender_domains"),
                         ("sender:not an address", "not an address"),
                         ("sasl:", "makes no account")):
            r = d.ctl("relay", "show", arg, check=False)
            self.assertEqual(r.returncode, 1, arg)
            self.assertIn(why, r.stderr, arg)

    def test_login_that_is_an_address(self):
        # with the default keys a bare address is the login (it once named a sender set never counted)
        d = sh.Spamtrapd(RELAY)
        self.addCleanup(d.cleanup)
        d.start()
        self.assertEqual(self.ask(d, "nora@example.com", net(1)), "DUNNO")
        self.assertIn("account sasl:nora@example.com: 1 network(s)", d.ctl("relay", "show", "nora@example.com").stdout)
        self.assertEqual(d.ctl("relay", "reset", "Nora@example.com").stdout,
                         "account sasl:nora@example.com: networks forgotten\n")


class TripOnce(RelayChecks):
    """A trip blocks and notifies once a window, on each store (the subclasses give the store)."""

    store = {}

    def test_blocks_and_notifies_once_a_window(self):
        tmp = tempfile.mkdtemp(prefix="spamtrapd-relay-once.")
        self.addCleanup(shutil.rmtree, tmp, True)
        os.chmod(tmp, 0o777)  # the daemon may run as another user
        d = sh.Spamtrapd(sh.merge(sh.merge(RELAY, self.store), {"relay": {
            "max_networks": 1, "block_account": True,
            "notify": ["/bin/sh", "-c", 'touch "$0/$1.$$"', tmp, "%{account}"]}}))
        self.addCleanup(d.cleanup)
        d.start()
        self.assertEqual(self.ask(d, "olga", net(1)), "DUNNO")
        mark = d.log_mark()
        self.assertEqual(self.ask(d, "olga", net(2)), DEFER)
        d.wait_for_log(r"tempfail: relay account=sasl:olga network=198\.18\.2\.0/24 .* trip=first", since=mark)
        for i in range(3, 8):
            mark = d.log_mark()
            self.assertEqual(self.ask(d, "olga", net(i)), DEFER)
            d.wait_for_log(r"tempfail: relay account=sasl:olga network=198\.18\.%d\.0/24 .* trip=repeat" % i,
                           since=mark)
        # hooks start in order: once olga's first and the next account's hooks have run, any
        # further hook of olga's has been started too
        self.assertEqual(self.ask(d, "pete", net(1)), "DUNNO")
        self.assertEqual(self.ask(d, "pete", net(2)), DEFER)
        deadline = time.monotonic() + 30
        for who in ("sasl:olga.", "sasl:pete."):
            while not [f for f in os.listdir(tmp) if f.startswith(who)]:
                self.assertLess(time.monotonic(), deadline, "the hook never ran")
                time.sleep(0.05)
        self.assertEqual(len([f for f in os.listdir(tmp) if f.startswith("sasl:olga.")]), 1, os.listdir(tmp))
        self.assertRegex(d.ctl("lookup", "sasl:olga").stdout, r"\n  hits: +1\n")
        # relay reset forgets the trip too: the next one notifies again
        d.ctl("relay", "reset", "olga")
        self.assertEqual(self.ask(d, "olga", net(20)), "DUNNO")
        mark = d.log_mark()
        self.assertEqual(self.ask(d, "olga", net(21)), DEFER)
        d.wait_for_log(r"tempfail: relay account=sasl:olga network=198\.18\.21\.0/24 .* trip=first", since=mark)


class TestTripOnceSqlite(TripOnce, unittest.TestCase):
    pass


class TestTripOnceRedis(TripOnce, unittest.TestCase):
    def setUp(self):
        self.store = redis_store(start_redis(self))


class TestModes(RelayChecks, unittest.TestCase):
    def test_shadow_defers_nothing_and_says_so(self):
        d = sh.Spamtrapd(sh.merge(RELAY, {"relay": {"mode": "shadow", "max_networks": 2}}))
        self.addCleanup(d.cleanup)
        d.start()
        self.assertEqual(self.ask(d, "gina", net(1)), "DUNNO")
        self.assertEqual(self.ask(d, "gina", net(2)), "DUNNO")
        mark = d.log_mark()
        self.assertEqual(self.ask(d, "gina", net(3)), "DUNNO")
        d.wait_for_log(r"shadow, would tempfail: relay account=sasl:gina network=198\.18\.3\.0/24", since=mark)
        # shadow goes on counting past max_networks: relay show says how far the account went
        self.assertEqual(self.ask(d, "gina", net(4)), "DUNNO")
        self.assertIn("account sasl:gina: 4 network(s)", d.ctl("relay", "show", "gina").stdout)

    def test_hold_and_discard(self):
        for action, want in (("hold", "HOLD Too many client networks for this account"),
                             ("discard", "DISCARD Too many client networks for this account")):
            d = sh.Spamtrapd(sh.merge(RELAY, {"relay": {"max_networks": 1, "action": action}}))
            self.addCleanup(d.cleanup)
            d.start()
            self.assertEqual(self.ask(d, "jane", net(1)), "DUNNO")
            self.assertEqual(self.ask(d, "jane", net(2)), want)

    def test_store_outage_continues(self):
        redis = start_redis(self)
        d = sh.Spamtrapd(sh.merge(sh.merge(RELAY, redis_store(redis)), {"relay": {"max_networks": 1}}))
        self.addCleanup(d.cleanup)
        d.start()
        self.assertEqual(self.ask(d, "hank", net(1)), "DUNNO")
        self.assertEqual(self.ask(d, "hank", net(2)), DEFER)
        redis.stop()
        mark = d.log_mark()
        self.assertEqual(self.ask(d, "hank", net(3)), "DUNNO")
        d.wait_for_log(r"continue: store-error check=relay account=sasl:hank", since=mark)


if __name__ == "__main__":
    unittest.main(verbosity=2)
