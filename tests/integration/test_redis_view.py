"""Integration tests of the Redis store's local view (store.redis.local_view,
docs/redis.md "The local view"): real daemons on one real redis-server.

The view answers lookups of keys that are not listed without a round trip;
it must never answer "not listed" for a key another writer listed more
than a moment ago. Each test first waits until the view answers (the
daemon logs how many lookups it answered alone at each purge, here once a
second: without that, every test below would pass with no view at all),
then writes from elsewhere (another daemon's trap hit, spamtrapctl) and
polls the daemon: it must block within 1 s of the write. That bound is
the view's promise (an invalidation is applied within milliseconds; the
view stops answering 500 ms after its last confirmation), not a speed
measure. Then the view's own connection is killed, and the server
restarted: lookups fall back to Redis at once, and the view is rebuilt.
"""

import re
import shutil
import socket
import tempfile
import threading
import time
import unittest

import redis_harness as rh
import spamtrapd_harness as sh

REJECT = "550 5.7.1 Blocked here after mail to a spamtrap (redis view test)"
TRAP = "trap@example.com"
TRAP_REPLY = "550 5.1.1 User unknown"
BOUND = 1.0  # a write elsewhere must block here within this (docs/redis.md)
VIEW_WAIT = 20.0  # a view is built within a second or two; the store's back-off is at most 5 s


class HangingProxy:
    """A TCP relay to a redis-server whose view connection (the one that sent CLIENT TRACKING)
    can be made to hang without breaking, as a network cut or a half-open connection does:
    its bytes stay unread both ways and its sockets stay open. Other connections pass, but
    while hold is set the answer to a lookup's HMGET is kept back (Redis has read the key) until
    it is cleared; held is set once one is."""

    def __init__(self, target_port):
        self.target = target_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.tracking = []  # [frozen] flags of the connections that asked for tracking
        self.socks = []
        self.hold = False
        self.held = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.target))
            state = [False, False, False]  # tracking, frozen, a lookup's answer to hold
            with self.lock:
                self.socks += [down, up]
            threading.Thread(target=self._pump, args=(down, up, state, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down, state, False), daemon=True).start()

    def _pump(self, src, dst, state, from_client):
        while True:
            if state[1]:
                time.sleep(0.05)  # hung: nothing read, nothing passed, nothing closed
                continue
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if state[1]:
                continue  # what came in as it froze is lost with the cut
            if not data:
                for sock in (src, dst):
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return
            if from_client and b"TRACKING" in data and not state[0]:
                state[0] = True
                with self.lock:
                    self.tracking.append(state)
            if from_client and self.hold and b"HMGET" in data and not state[0]:
                state[2] = True
            if not from_client and state[2]:
                self.held.set()
                while self.hold:
                    time.sleep(0.01)
                state[2] = False
            try:
                dst.sendall(data)
            except OSError:
                return

    def hang_views(self):
        """Hang every view connection made so far; how many."""
        with self.lock:
            for state in self.tracking:
                state[1] = True
            return len(self.tracking)

    def close(self):
        self.listener.close()
        with self.lock:
            for sock in self.socks:
                sock.close()


class ViewCase(rh.RecoveryChecks, unittest.TestCase):
    REJECT_TEXT = REJECT

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="spamtrapd-redis.")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.redis = rh.RedisServer(self.dir).start()
        self.addCleanup(self.redis.kill)
        self.n = 0

    def daemon(self, port=None, db=0, prefix="site:", purge="1s", local_view=True, command_timeout=500):
        config = {
            "traps": {"addresses": [TRAP]},
            "blocklist": {"reject": REJECT},
            "log": {"level": "debug"},
            "store": {"backend": "redis", "purge_interval": purge,
                      "redis": {"host": "127.0.0.1", "port": port or self.redis.port, "prefix": prefix,
                                "db": db, "local_view": local_view,
                                "command_timeout": command_timeout}},
        }
        d = sh.Spamtrapd(config)
        self.addCleanup(d.cleanup)
        return d.start()

    def answers(self, d):
        """Lookups d's view answered alone, as of its latest purge (0 before the first)."""
        counts = re.findall(r"absent-key filter answered (\d+) lookups without asking redis", d.log())
        return int(counts[-1]) if counts else 0

    def purges(self, d):
        return len(re.findall(r"absent-key filter answered", d.log()))

    def wait_view(self, d):
        """Lookups of unlisted senders until d's log shows its view answering more than before.
        Counted from a purge logged after this call began: answers made before it (by a view
        since broken) and logged at the next purge must not pass for the view answering now."""
        purges = self.purges(d)
        rh.wait_until(lambda: self.purges(d) > purges, VIEW_WAIT, "a purge")
        before = self.answers(d)

        def answering():
            self.n += 1
            self.assertEqual(self.sender_check(d, f"warm{self.n}@example.org", "198.51.100.200"), "DUNNO")
            return self.answers(d) > before
        rh.wait_until(answering, VIEW_WAIT, "the local view answering", interval=0.05)

    def calls(self):
        """Commands a lookup may send (the script, HMGET): unchanged by a lookup the view answered."""
        stats = self.redis.info("commandstats")
        return sum(int(re.search(r"calls=(\d+)", stats.get(c, "calls=0")).group(1))
                   for c in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_hmget"))

    def wait_answering(self, d):
        """wait_view for a daemon that does not purge: a lookup of an unlisted sender that sends
        nothing to Redis."""
        def answering():
            self.n += 1
            before = self.calls()
            self.assertEqual(self.sender_check(d, f"warm{self.n}@example.org", "198.51.100.200"), "DUNNO")
            return self.calls() == before
        rh.wait_until(answering, VIEW_WAIT, "the local view answering", interval=0.05)

    def blocks_within_bound(self, d, sender, client, since):
        """Poll d until sender is rejected; fail unless it is within BOUND of since (the write's end)."""
        while True:
            answer = self.sender_check(d, sender, client)
            took = time.monotonic() - since
            if answer == REJECT:
                return took
            self.assertEqual(answer, "DUNNO")
            self.assertLess(took, BOUND, f"{sender} from {client} not blocked {took:.2f} s after the write")
            time.sleep(0.02)

    def subscriber_ids(self):
        """The ids of the subscribed clients in broadcast tracking mode (the views' connections; a
        daemon's hot copies' connection tracks too, but subscribes to nothing)."""
        listing = self.redis.command("CLIENT", "LIST")
        if isinstance(listing, bytes):
            listing = listing.decode()
        return [re.search(r"\bid=(\d+)", line).group(1) for line in listing.splitlines()
                if re.search(r"\bflags=\S*B", line) and re.search(r"\bsub=[1-9]", line)]


class TestView(ViewCase):
    def test_trap_hit_at_one_host_blocks_at_the_other_within_a_second(self):
        a, b = self.daemon(), self.daemon()
        self.wait_view(b)
        for i in range(3):
            sender, client = f"spam{i}@bad{i}.test", f"192.0.2.{50 + i}"
            self.assertEqual(self.sender_check(b, sender, "203.0.113.5"), "DUNNO")
            self.assertEqual(self.trap_hit(a, sender, client), TRAP_REPLY)
            done = time.monotonic()
            self.blocks_within_bound(b, sender, "203.0.113.5", done)
            # by the client address too, whoever the sender
            self.blocks_within_bound(b, f"innocent{i}@other.test", client, done)
            self.assertEqual(self.sender_check(b, f"innocent{i}@other.test", f"192.0.2.{150 + i}"), "DUNNO")
        self.wait_view(b)  # and the view still answers after all those writes

    def test_spamtrapctl_add_and_remove_reach_a_running_daemon(self):
        d = self.daemon()
        self.wait_view(d)
        for key, sender, client in (("listed@example.net", "listed@example.net", "203.0.113.9"),
                                    ("@spammy.test", "any@spammy.test", "203.0.113.9"),
                                    ("198.18.0.0/16", "someone@example.org", "198.18.7.7")):
            self.assertEqual(self.sender_check(d, sender, client), "DUNNO")
            d.ctl("add", key)
            self.blocks_within_bound(d, sender, client, time.monotonic())
            d.ctl("remove", key)
            self.assertEqual(self.sender_check(d, sender, client), "DUNNO")
        self.wait_view(d)

    def lookups_sent(self):
        """Entries Redis read for lookups: HMGET, sent alone for a lookup of one key (the tests'
        sender, the only key of its lookups the view may hold) and called by the lookup script for
        the entry it finds; purges, spamtrapctl add and remove send none."""
        stats = self.redis.info("commandstats").get("cmdstat_hmget", "calls=0")
        return int(re.search(r"calls=(\d+)", stats).group(1))

    def test_listed_sender_answered_from_memory_until_removed(self):
        """A listed key's entry, once read, is answered from the view's memory (a blocked sender's
        next recipients cost no round trip), and forgotten when another process removes it."""
        d = self.daemon()
        self.wait_view(d)
        for i in range(3):
            sender, client = f"listed{i}@example.net", "203.0.113.9"
            d.ctl("add", sender)
            self.blocks_within_bound(d, sender, client, time.monotonic())
            before = self.lookups_sent()
            for _ in range(20):
                self.assertEqual(self.sender_check(d, sender, client), REJECT)
            # one more trip if a write of the key overtook the first (its answer is not remembered)
            self.assertLessEqual(self.lookups_sent() - before, 2, "lookups of a listed sender sent to Redis")
            self.redis.command("DEL", "site:bl:" + sender)  # by hand: no message of this daemon's own
            done = time.monotonic()
            while self.sender_check(d, sender, client) == REJECT:
                self.assertLess(time.monotonic() - done, BOUND, f"{sender} still refused after its removal")
                time.sleep(0.02)
        self.wait_view(d)

    def test_unlisted_key_remembered_then_listed_elsewhere_blocks_within_a_second(self):
        """A key the view may hold (removed, so its name stays in the filter) is answered "not
        listed" from memory after one trip; another host's trap hit must end that within the bound."""
        a, b = self.daemon(), self.daemon()
        self.wait_view(b)
        for i in range(3):
            sender, client = f"again{i}@example.net", "203.0.113.30"
            b.ctl("add", sender)
            self.blocks_within_bound(b, sender, client, time.monotonic())
            b.ctl("remove", sender)
            before = self.lookups_sent()
            for _ in range(20):
                self.assertEqual(self.sender_check(b, sender, client), "DUNNO")
            self.assertLessEqual(self.lookups_sent() - before, 2, "lookups of a removed sender sent to Redis")
            self.assertEqual(self.trap_hit(a, sender, f"192.0.2.{80 + i}"), TRAP_REPLY)
            self.blocks_within_bound(b, sender, client, time.monotonic())
        self.wait_view(b)

    def hset_entry(self, sender, expires, **fields):
        """An entry written around spamtrapd (redis-cli, another tool): no EXPIREAT, so Redis never
        deletes it and sends no invalidation when it expires."""
        args = {"expires": str(expires), "first": "1", "last": "1", "hits": "1", "trap": TRAP,
                "reason": "trap", **fields}
        self.redis.command("HSET", "site:bl:" + sender, *[x for kv in args.items() for x in kv])

    def test_remembered_entry_not_answered_past_its_expiry(self):
        """A listed sender answered from memory is "not listed" once its expires is past by this
        host's clock, though Redis never deletes the hash (no TTL) and so never says so."""
        d = self.daemon(purge="1h")  # a purge would delete the entry: an invalidation
        self.wait_answering(d)
        sender, client = "expiring@example.net", "203.0.113.40"
        expires = int(time.time()) + 3
        self.hset_entry(sender, expires)
        self.blocks_within_bound(d, sender, client, time.monotonic())
        before = self.lookups_sent()
        for _ in range(5):
            self.assertEqual(self.sender_check(d, sender, client), REJECT)
        self.assertLessEqual(self.lookups_sent() - before, 1, "the entry was not remembered")
        while time.time() < expires + 1.2:
            time.sleep(0.1)
        self.assertEqual(self.sender_check(d, sender, client), "DUNNO")
        self.assertEqual(self.redis.command("EXISTS", "site:bl:" + sender), 1)

    def test_one_key_lookup_answers_as_the_script(self):
        """A lookup of one key the view may hold is an HMGET, not the script: for entries written
        around spamtrapd (expired but not deleted, without expires, an expires that is not a
        number, a key of another type) it must answer as the script does for a daemon without
        the view, and remember nothing wrong for the next lookup."""
        daemons = []
        for local_view in (False, True):  # each purges at its start, then not for an hour
            canary = f"site:bl:canary{local_view}@example.net"
            self.hset_entry(canary[len("site:bl:"):], 1)
            daemons.append(self.daemon(purge="1h", local_view=local_view))
            rh.wait_until(lambda: self.redis.command("EXISTS", canary) == 0, VIEW_WAIT, "the first purge")
        plain, view = daemons
        self.wait_answering(view)
        now = int(time.time())
        cases = {
            "live@example.net": {"expires": now + 3600},
            "past@example.net": {"expires": now - 10},
            "noexp@example.net": None,
            "text@example.net": {"expires": "never"},
            "ws@example.net": {"expires": f" {now + 3600}"},
        }
        for sender, fields in cases.items():
            if fields is None:
                self.redis.command("HSET", "site:bl:" + sender, "trap", TRAP, "reason", "trap")
            else:
                self.hset_entry(sender, **fields)
        self.redis.command("SET", "site:bl:string@example.net", "1")
        cases["string@example.net"] = None
        for sender in cases:
            self.assertEqual(self.redis.command("EXISTS", "site:bl:" + sender), 1, sender)
            want = self.sender_check(plain, sender, "203.0.113.41")
            before = self.lookups_sent()
            for _ in range(3):
                self.assertEqual(self.sender_check(view, sender, "203.0.113.41"), want, sender)
            self.assertGreater(self.lookups_sent(), before, f"{sender}: the view did not ask Redis")

    def test_answer_overtaken_by_a_write_elsewhere_is_not_remembered(self):
        """Redis has read a key ("not listed") for a lookup; before the answer reaches the daemon,
        another host lists the key and the view applies its invalidation. That lookup says "not
        listed" (it was, when read), but its answer must not be remembered: the next lookup
        blocks."""
        proxy = HangingProxy(self.redis.port)
        self.addCleanup(proxy.close)
        d = self.daemon(port=proxy.port, command_timeout=10000)
        self.wait_view(d)
        sender, client = "race@example.net", "203.0.113.50"
        # a name in the view that no lookup has asked about (listed, then removed, around spamtrapd)
        self.hset_entry(sender, int(time.time()) + 3600)
        self.redis.command("DEL", "site:bl:" + sender)
        self.hset_entry("after-race@example.net", int(time.time()) + 3600)
        self.blocks_within_bound(d, "after-race@example.net", client, time.monotonic())  # both applied
        proxy.hold = True
        answers = []
        lookup = threading.Thread(target=lambda: answers.append(self.sender_check(d, sender, client)))
        lookup.start()
        self.assertTrue(proxy.held.wait(VIEW_WAIT), "no lookup of the key sent to Redis")
        self.hset_entry(sender, int(time.time()) + 3600)
        time.sleep(0.5)  # its invalidation applied (later would only make this test pass)
        proxy.hold = False
        lookup.join()
        self.assertEqual(answers, ["DUNNO"])
        self.assertEqual(self.sender_check(d, sender, client), REJECT)

    def test_killed_subscription_falls_back_then_rebuilds(self):
        d = self.daemon()
        self.wait_view(d)
        for i in range(3):
            ids = self.subscriber_ids()
            self.assertEqual(len(ids), 1, "one view connection")
            self.redis.command("CLIENT", "KILL", "ID", ids[0])
            sender = f"late{i}@example.net"
            d.ctl("add", sender)
            self.blocks_within_bound(d, sender, "203.0.113.20", time.monotonic())
            rh.wait_until(lambda: len(self.subscriber_ids()) == 1, VIEW_WAIT, "the view connected again")
            self.wait_view(d)
            self.assertEqual(self.sender_check(d, sender, "203.0.113.20"), REJECT)

    def test_restarted_server_with_other_keys_falls_back_then_rebuilds(self):
        """A server that comes back with keys the view never heard of (loaded from a file, as a
        restart with persistence or a failover brings): they block at once, and the rebuilt view
        knows them."""
        d = self.daemon()
        self.wait_view(d)
        other = rh.RedisServer(self.dir, name="other").start()
        self.addCleanup(other.kill)
        key = "site:bl:ghost@example.net"
        expires = str(int(time.time()) + 3600)
        other.command("HSET", key, "expires", expires, "first", expires, "last", expires, "hits", "1",
                      "trap", TRAP, "reason", "trap")
        other.command("EXPIREAT", key, expires)
        other.command("SAVE")
        other.stop()
        self.redis.stop()
        shutil.copy(f"{other.dir}/dump.rdb", f"{self.redis.dir}/dump.rdb")
        self.redis.start()
        self.wait_rejected(d, "ghost@example.net", "203.0.113.30")
        self.wait_view(d)
        self.assertEqual(self.sender_check(d, "ghost@example.net", "203.0.113.30"), REJECT)
        d.ctl("add", "after@example.net")
        self.blocks_within_bound(d, "after@example.net", "203.0.113.30", time.monotonic())

    def test_flushdb_rebuilds(self):
        d = self.daemon()
        self.wait_view(d)
        d.ctl("add", "before@example.net")
        self.redis.command("FLUSHDB")
        self.assertEqual(self.sender_check(d, "before@example.net", "203.0.113.30"), "DUNNO")
        d.ctl("add", "after@example.net")
        self.blocks_within_bound(d, "after@example.net", "203.0.113.30", time.monotonic())
        self.wait_view(d)

    def test_swapdb_with_other_keys_falls_back_then_rebuilds(self):
        """SWAPDB brings in a whole database the view never scanned, and Redis sends no
        invalidation for it: its entries block within the bound all the same."""
        key = "site:bl:swapped@example.net"
        expires = str(int(time.time()) + 3600)
        self.redis.command("HSET", key, "expires", expires, "first", expires, "last", expires, "hits", "1",
                           "trap", TRAP, "reason", "trap")
        self.redis.command("SWAPDB", "0", "1")  # the entry waits in db 1
        d = self.daemon()
        self.wait_view(d)
        self.assertEqual(self.sender_check(d, "swapped@example.net", "203.0.113.60"), "DUNNO")
        self.redis.command("SWAPDB", "0", "1")
        self.blocks_within_bound(d, "swapped@example.net", "203.0.113.60", time.monotonic())
        self.wait_view(d)
        self.assertEqual(self.sender_check(d, "swapped@example.net", "203.0.113.60"), REJECT)

    def test_other_database(self):
        """store.redis.db 3: the view's connections SELECT it (tracking names keys of every
        database: a write to db 0 only makes the view say "may exist" once more)."""
        d = self.daemon(db=3)
        self.wait_view(d)
        expires = str(int(time.time()) + 3600)
        self.redis.command("HSET", "site:bl:db0@example.net", "expires", expires, "trap", TRAP)
        self.assertEqual(self.sender_check(d, "db0@example.net", "203.0.113.70"), "DUNNO")
        d.ctl("add", "db3@example.net")
        self.blocks_within_bound(d, "db3@example.net", "203.0.113.70", time.monotonic())
        self.redis.command("FLUSHDB")  # db 0's: the view rebuilds, harmlessly
        d.ctl("add", "db3b@example.net")
        self.blocks_within_bound(d, "db3b@example.net", "203.0.113.70", time.monotonic())
        self.wait_view(d)
        self.assertEqual(self.sender_check(d, "db3@example.net", "203.0.113.70"), REJECT)

    def test_prefix_with_glob_characters(self):
        """CLIENT TRACKING's PREFIX is literal and the SCAN's pattern escaped: a prefix like a
        pattern neither misses its own keys nor takes in another site's."""
        d = self.daemon(prefix="s*[ab]?:")
        self.wait_view(d)
        expires = str(int(time.time()) + 3600)
        self.redis.command("HSET", "sa1:bl:other-site@example.net", "expires", expires, "trap", TRAP)
        self.assertEqual(self.sender_check(d, "other-site@example.net", "203.0.113.80"), "DUNNO")
        d.ctl("add", "glob@example.net")
        self.blocks_within_bound(d, "glob@example.net", "203.0.113.80", time.monotonic())
        self.wait_view(d)
        self.assertEqual(self.sender_check(d, "glob@example.net", "203.0.113.80"), REJECT)

    def test_hanging_view_connection_falls_back_then_rebuilds(self):
        """A view connection that hangs without breaking (no answer, no reset): lookups go to
        Redis, and the view connects again instead of waiting for TCP to give up (it waited for
        good: the unanswered PING was never sent again, so nothing ever failed)."""
        proxy = HangingProxy(self.redis.port)
        self.addCleanup(proxy.close)
        d = self.daemon(port=proxy.port)
        self.wait_view(d)
        # the view's connection, and the hot copies' (it asks for tracking too): both hang
        self.assertEqual(proxy.hang_views(), 2)
        d.ctl("add", "cut@example.net")
        self.blocks_within_bound(d, "cut@example.net", "203.0.113.40", time.monotonic())
        # The count of answers logged at the next purge may still grow with lookups made before the
        # view went silent (500 ms after the cut): start from one logged a purge later than that.
        purges = self.purges(d)
        rh.wait_until(lambda: self.purges(d) >= purges + 2, VIEW_WAIT, "two more purges")
        self.wait_view(d)
        self.assertEqual(self.sender_check(d, "cut@example.net", "203.0.113.40"), REJECT)
        d.ctl("add", "after-cut@example.net")
        self.blocks_within_bound(d, "after-cut@example.net", "203.0.113.40", time.monotonic())

    def test_acl_without_client_tracking_falls_back_and_says_so_once(self):
        """An ACL user without CLIENT TRACKING (docs/redis.md lists the commands): the daemon
        works as without the view, and its log says why once, with the server's words."""
        self.redis.command("ACL", "SETUSER", "default", "-client|tracking")
        d = self.daemon()
        said = re.compile(r"local view: CLIENT TRACKING refused: NOPERM.*lookups ask redis")
        self.assertEqual(self.sender_check(d, "first@example.net", "203.0.113.50"), "DUNNO")  # starts the view
        rh.wait_until(lambda: said.search(d.log()), VIEW_WAIT, "the view's refusal in the log")
        for i in range(3):
            sender = f"acl{i}@example.net"
            self.assertEqual(self.sender_check(d, sender, "203.0.113.50"), "DUNNO")
            d.ctl("add", sender)
            self.assertEqual(self.sender_check(d, sender, "203.0.113.50"), REJECT)
        self.assertEqual(self.answers(d), 0)
        self.assertEqual(len(said.findall(d.log())), 1)


if __name__ == "__main__":
    unittest.main()
