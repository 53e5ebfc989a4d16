"""Faults of the SQLite store under a running spamtrapd (issue 7, hardening).

Only real faults, made the way they happen on a mail host:

- files made unwritable: chmod/chown (no effect on the files spamtrapd has
  open; at the next start they matter), and chattr +i on the database and
  its -wal, which makes the kernel refuse writes through descriptors that
  are already open (EPERM);
- a full disk: a real 2 MiB tmpfs mounted under the test folder holds the
  database, and a filler file takes the rest;
- a file size limit (RLIMIT_FSIZE, set on the running daemon with prlimit):
  writes past it must fail (EFBIG), not kill the daemon with SIGXFSZ;
- another process holding SQLite's locks: the sqlite3 tool left in a
  BEGIN EXCLUSIVE transaction (in WAL mode readers go on), and one in
  PRAGMA locking_mode=EXCLUSIVE, which shuts readers out too.

For each, with store.on_error accept and with tempfail: trap hits get the
fallback (the trap's own reply, or 450 4.7.1) and lookups keep working
where SQLite lets them (a sender blocklisted before the fault is still
rejected); no reply takes longer than the store's wait (2 s) plus slack,
so Postfix never hangs; one error line per 10 s, not one per request; the
daemon neither crashes nor needs a restart: once the fault is gone new trap
hits are recorded again and a "works again" line is logged; it stops with
exit 0 (a sanitizer report would make it non-zero). And what a start in
each fault state does: exit 1 with a message naming the file and the
cause, or, where SQLite can still read (a write lock), start and fall back.

The daemon runs as the harness's run_user() ("nobody" under root), so
permissions bite as they do for the real service user. Mounting, chattr
and chown need root: those tests are skipped without it.
"""

import os
import shutil
import subprocess
import tempfile
import threading
import time
import unittest

import spamtrapd_harness as sh
from milter_client import MilterClient

TRAP = "trap@example.com"
REJECT_TEXT = "550 5.7.1 Sender is blocklisted here (spamtrapd faults test)"
# The policy reply to a trap hit (traps.action discard, on_mixed deliver-others).
TRAP_REPLY = "550 5.1.1 User unknown"
TEMPFAIL = "450 4.7.1 "
SCALE = getattr(sh, "TIMEOUT_SCALE", 1.0)
# store_sqlite.c waits at most WAIT_MS (2 s) in all per call; Postfix's own
# timeouts are far longer. Anything much over it is a hang in the making.
STORE_WAIT = 2.0
BOUND = (STORE_WAIT + 1.5) * SCALE
# Back-off after a lock timeout (1 s) plus polling slack.
RECOVERY = 6.0 * SCALE
IS_ROOT = os.geteuid() == 0
RUN_USER = sh.run_user()


def as_run_user():
    """subprocess keywords that run a helper as the daemon's user, so that files SQLite creates for it
    (-wal, -shm) belong to that user, and it may set the daemon's limits (prlimit)."""
    if not RUN_USER:
        return {"cwd": "/"}
    return {"cwd": "/", "user": RUN_USER, "group": "nogroup", "extra_groups": []}


class Locker:
    """Another process (the sqlite3 tool) holding a lock on a database file: it runs sql,
    answers "locked" once it holds it (with .bail on, a lock it could not take is an exit
    instead), and keeps its transaction until release()."""

    def __init__(self, path, sql, wait_ms=2000):
        self.proc = subprocess.Popen(["sqlite3", "-batch", "-bail", "-cmd", f".timeout {wait_ms}", path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, **as_run_user())
        self.proc.stdin.write(f"{sql}\nSELECT 'locked';\n")
        self.proc.stdin.flush()
        self.locked = False
        for line in self.proc.stdout:  # PRAGMA locking_mode answers "exclusive" first
            if line.strip() == "locked":
                self.locked = True
                break

    def release(self):
        """End the transaction (and the tool); returns what it printed on stderr. Again: no-op."""
        if self.proc.stdin.closed:
            return ""
        self.proc.stdin.close()
        self.proc.wait(10)
        err = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return err


class FaultChecks:
    """The checks every fault shares; ON_ERROR is set by the concrete classes below."""

    ON_ERROR = "accept"

    def daemon(self, db_path=None, milter=False, workdir=None, extra=None):
        cfg = {"traps": {"addresses": [TRAP]}, "blocklist": {"reject": REJECT_TEXT},
               "store": {"on_error": self.ON_ERROR}}
        if db_path:
            cfg["store"]["sqlite"] = {"path": db_path}
        d = sh.Spamtrapd(sh.merge(cfg, extra), milter=milter, workdir=workdir)
        self.addCleanup(d.cleanup)
        return d

    def db(self, d):
        return d.config["store"]["sqlite"]["path"]

    def client(self, d, role):
        c = sh.PolicyClient(d.policy_address(role), timeout=30)
        self.addCleanup(c.close)
        return c

    def timed(self, fn, *args, **kw):
        """fn(...), failing the test when it takes longer than Postfix should ever wait for spamtrapd."""
        start = time.monotonic()
        out = fn(*args, **kw)
        secs = time.monotonic() - start
        self.assertLess(secs, BOUND, f"an answer took {secs:.2f} s under a store fault")
        return out

    def assert_trap_fallback(self, answer):
        """A trap hit the store could not record: accept keeps the trap's own reply (the mail
        to the trap is still refused), tempfail defers it so the hit comes back."""
        if self.ON_ERROR == "accept":
            self.assertEqual(answer, TRAP_REPLY)
        else:
            self.assertTrue(answer.startswith(TEMPFAIL), answer)

    def listed(self, sender_client, sender):
        return sender_client.check(sender=sender, client_address="198.51.100.9") == REJECT_TEXT

    def list_before(self, d):
        """A sender blocklisted before the fault: lookups must keep rejecting it."""
        trap = self.client(d, "trap")
        self.assertEqual(trap.check(sender="before@bad.test", recipient=TRAP, client_address="192.0.2.1"),
                         TRAP_REPLY)
        self.assertTrue(self.listed(self.client(d, "sender"), "before@bad.test"))

    def check_writes_fail(self, d, error, n=10, mark=None):
        """With the fault on: n trap hits get the fallback in bounded time, reads still work,
        the error is logged once (not n times) since mark (default: now). Returns the mark."""
        mark = d.log_mark() if mark is None else mark
        hits_before = d.count_log(r"blocklisted=none \(store error\)", since=mark)
        trap, sender = self.client(d, "trap"), self.client(d, "sender")
        for i in range(n):
            self.assert_trap_fallback(
                self.timed(trap.check, sender=f"during{i}@bad.test", recipient=TRAP, client_address="192.0.2.2"))
            self.assertEqual(self.timed(sender.check, sender="before@bad.test", client_address="198.51.100.1"),
                             REJECT_TEXT)
        self.assertEqual(self.timed(sender.check, sender="during0@bad.test", client_address="198.51.100.2"),
                         "DUNNO", "a hit the store could not record must not blocklist")
        # The purge at start-up may be the write that meets the fault first; it may also queue
        # behind a trap hit's write that holds the writer's turn while it waits on the fault, and
        # give up on that turn: either way that is the one error line the rate limit lets out.
        d.wait_for_log(r"error: store (update|purge) failed: sqlite \S+: (record|purge).*(" + error +
                       r"|gave up after \d+ ms waiting for the write in progress)", since=mark)
        self.assertEqual(d.count_log(r"blocklisted=none \(store error\)", since=mark) - hits_before, n)
        self.assertLessEqual(d.count_log(r"store (update|purge) failed", since=mark), 2,
                             "the error line is rate-limited")
        self.assertEqual(d.count_log(r"store lookups? failed", since=mark), 0, "lookups kept working")
        return mark

    def check_recovers(self, d, mark):
        """The fault is gone: new trap hits are recorded again, with no restart, and the log says so."""
        pid = d.proc.pid
        trap, sender = self.client(d, "trap"), self.client(d, "sender")
        deadline = time.monotonic() + RECOVERY
        for k in range(1000):
            trap.check(sender=f"after{k}@bad.test", recipient=TRAP, client_address="192.0.2.3")
            if self.listed(sender, f"after{k}@bad.test"):
                break
            self.assertLess(time.monotonic(), deadline, "trap hits were not recorded again:\n" + d.log_tail())
            time.sleep(0.1)
        d.wait_for_log(r"notice: store updates work again after \d+ failed call", since=mark)
        self.assertTrue(self.listed(sender, "before@bad.test"))
        self.assertEqual(d.proc.pid, pid)

    def stop_cleanly(self, d):
        self.assertTrue(d.running(), "the daemon died under the fault:\n" + d.log_tail())
        d.stop()  # raises unless it exits 0 in time (a sanitizer report makes it non-zero)
        self.assertNotIn("AddressSanitizer", d.log())
        self.assertNotIn("runtime error", d.log())


# ---- files made unwritable ------------------------------------------------------------------------


class UnwritableFiles(FaultChecks):
    @unittest.skipUnless(IS_ROOT and shutil.which("chattr"), "chattr +i needs root")
    def test_database_and_wal_immutable_while_running(self):
        d = self.daemon().start()
        self.list_before(d)
        files = [self.db(d), self.db(d) + "-wal"]
        r = subprocess.run(["chattr", "+i", *files], capture_output=True, text=True)
        if r.returncode != 0:
            self.skipTest(f"this file system has no immutable flag: {r.stderr.strip()}")
        self.addCleanup(subprocess.run, ["chattr", "-i", *files], capture_output=True)
        mark = self.check_writes_fail(d, "disk I/O error")
        subprocess.run(["chattr", "-i", *files], check=True)
        self.check_recovers(d, mark)
        self.stop_cleanly(d)

    @unittest.skipUnless(IS_ROOT, "needs root: the daemon must run as another user than the files' owner")
    def test_chmod_while_running_then_restart(self):
        """Permissions are checked at open: files spamtrapd holds open stay writable for it, and
        the next start refuses clearly; with the file writable again it starts with every entry."""
        d = self.daemon().start()
        self.list_before(d)
        db, folder = self.db(d), d.dir
        files = (db, db + "-wal", db + "-shm")
        for path in files:
            os.chmod(path, 0o400)
        os.chmod(folder, 0o500)
        self.addCleanup(os.chmod, folder, 0o700)
        trap, sender = self.client(d, "trap"), self.client(d, "sender")
        self.assertEqual(trap.check(sender="chmod@bad.test", recipient=TRAP, client_address="192.0.2.4"), TRAP_REPLY)
        self.assertTrue(self.listed(sender, "chmod@bad.test"), "open files stay writable")
        trap.close()
        sender.close()
        self.stop_cleanly(d)
        self.assertEqual(d.run_until_exit(), 1)
        self.assertRegex(d.log(), r"cannot start: sqlite %s: cannot open the database for writing "
                         r"\(user %s cannot write %s: Permission denied\)" % (db, RUN_USER, db))
        # The folder stays read-only: -wal and -shm are still there (not removed at the stop), which is enough.
        self.assertTrue(all(os.path.exists(path) for path in files))
        for path in files:
            os.chmod(path, 0o640)
        d.start()
        self.assertTrue(self.listed(self.client(d, "sender"), "chmod@bad.test"), "entries survive")
        self.stop_cleanly(d)

    @unittest.skipUnless(IS_ROOT, "needs root: the daemon must run as another user than the folder's owner")
    def test_folder_not_writable_at_start(self):
        """SQLite creates -wal and -shm beside the file (and spamtrapd the file itself)."""
        d = self.daemon()
        folder = os.path.join(d.dir, "store")
        os.mkdir(folder, 0o755)  # root's: the daemon's user may not create files in it
        d.rewrite_config({"store": {"sqlite": {"path": os.path.join(folder, "st.db")}}})
        self.assertEqual(d.run_until_exit(), 1)
        self.assertIn(f"sqlite {folder}/st.db: cannot create the database: Permission denied "
                      f"(user {RUN_USER} cannot create files in {folder}: Permission denied)", d.log())
        # A database made elsewhere (its -wal and -shm are gone after a clean stop) still needs them.
        sh.give_to_run_user(folder)
        d.start()
        self.list_before(d)
        self.stop_cleanly(d)
        self.assertEqual(sorted(os.listdir(folder)), ["st.db"])
        os.chown(folder, 0, 0)
        mark = d.log_mark()
        self.assertEqual(d.run_until_exit(), 1)
        self.assertRegex(d.log_since(mark), r"cannot start: sqlite %s/st.db: .*\(user %s cannot create files in "
                         r"%s: Permission denied\)" % (folder, RUN_USER, folder))


# ---- a full disk --------------------------------------------------------------------------------


class DiskFull(FaultChecks):
    """The database on a real, small file system (tmpfs) that a filler file fills up."""

    def setUp(self):
        if not IS_ROOT:
            self.skipTest("mounting a tmpfs needs root")
        self.workdir = tempfile.mkdtemp(prefix="spamtrapd-test.")
        self.addCleanup(shutil.rmtree, self.workdir, ignore_errors=True)
        sh.give_to_run_user(self.workdir)
        self.mnt = os.path.join(self.workdir, "store")
        os.mkdir(self.mnt)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", self.mnt],
                           capture_output=True, text=True)
        if r.returncode != 0:
            self.skipTest(f"cannot mount a tmpfs here ({r.stderr.strip()}); FileSizeLimit makes writes fail "
                          "for real instead")
        self.addCleanup(subprocess.run, ["umount", "-l", self.mnt], capture_output=True)
        sh.give_to_run_user(self.mnt)
        self.filler = os.path.join(self.mnt, "filler")

    def fill(self):
        subprocess.run(["dd", "if=/dev/zero", f"of={self.filler}", "bs=64k"], capture_output=True)
        st = os.statvfs(self.mnt)
        self.assertEqual(st.f_bavail, 0, "the file system is full")

    def empty_wal(self, d, timeout=30.0):
        """An empty WAL: the next write must grow a file (a WAL reused from its start would not). A
        TRUNCATE checkpoint gives up while a reader of the daemon (the absent-key filter's build, say:
        slow under valgrind) still needs the log, so try until it has really emptied it."""
        wal = self.db(d) + "-wal"
        deadline = time.monotonic() + timeout
        while True:
            r = subprocess.run(["sqlite3", "-batch", "-bail", self.db(d), "PRAGMA wal_checkpoint(TRUNCATE);"],
                               check=True, capture_output=True, text=True, **as_run_user())
            if r.stdout.startswith("0|") and os.path.getsize(wal) == 0:
                return
            if time.monotonic() > deadline:
                self.fail(f"the WAL could not be emptied: {r.stdout.strip()}, {os.path.getsize(wal)} bytes")
            time.sleep(0.1)

    def test_full_while_running(self):
        d = self.daemon(os.path.join(self.mnt, "st.db"), workdir=self.workdir).start()
        self.list_before(d)
        self.empty_wal(d)
        self.fill()
        mark = self.check_writes_fail(d, "database or disk is full")
        os.unlink(self.filler)
        self.check_recovers(d, mark)
        self.stop_cleanly(d)

    def test_full_at_start(self):
        d = self.daemon(os.path.join(self.mnt, "st.db"), workdir=self.workdir).start()
        self.list_before(d)
        self.stop_cleanly(d)
        self.fill()
        mark = d.log_mark()
        self.assertEqual(d.run_until_exit(), 1)
        self.assertIn(f"cannot start: sqlite {self.mnt}/st.db: ", d.log_since(mark))
        self.assertIn(f"(the file system of {self.mnt} is full)", d.log_since(mark))
        os.unlink(self.filler)
        d.start()
        self.assertTrue(self.listed(self.client(d, "sender"), "before@bad.test"), "entries survive")
        self.stop_cleanly(d)


# ---- a file size limit --------------------------------------------------------------------------


class FileSizeLimit(FaultChecks):
    """RLIMIT_FSIZE (ulimit -f, systemd LimitFSIZE=) lowered under the running daemon. Without
    SIGXFSZ ignored, a write past it on a thread that does not block the signal (libmilter's, the
    purge's) kills the process."""

    def prlimit(self, d, fsize):
        subprocess.run(["prlimit", f"--pid={d.proc.pid}", f"--fsize={fsize}"], check=True, capture_output=True,
                       **as_run_user())

    def milter_trap_hit(self, d, sender):
        with MilterClient.open(d.config["milter"]["listen"]) as m:
            m.negotiate()
            m.connect("client.bad.test", "192.0.2.50")
            m.helo("client.bad.test")
            self.assertEqual(m.mail(f"<{sender}>").action, "continue")
            return self.timed(m.rcpt, f"<{TRAP}>")

    @unittest.skipUnless(shutil.which("prlimit"), "needs prlimit (util-linux)")
    def test_file_size_limit_while_running(self):
        d = self.daemon(milter=True).start()
        self.list_before(d)
        for i in range(4):
            self.client(d, "trap").check(sender=f"grow{i}@bad.test", recipient=TRAP, client_address="192.0.2.5")
        wal = self.db(d) + "-wal"
        self.assertGreater(os.path.getsize(wal), 8192, "the next WAL frame lies past the limit")
        self.prlimit(d, "8192:unlimited")  # soft limit only: the daemon's user may raise it again
        mark = d.log_mark()
        reply = self.milter_trap_hit(d, "milter@bad.test")
        self.assertTrue(d.running(), "a write past RLIMIT_FSIZE killed the daemon:\n" + d.log_tail())
        if self.ON_ERROR == "accept":
            self.assertEqual(reply.action, "continue", reply)  # the trap's copy is dropped at end of message
        else:
            self.assertEqual(reply.verdict, "tempfail", reply)
        self.check_writes_fail(d, "disk I/O error", n=4, mark=mark)
        self.prlimit(d, "unlimited:unlimited")
        self.check_recovers(d, mark)
        self.stop_cleanly(d)


# ---- another process's locks ----------------------------------------------------------------------


class Locked(FaultChecks):
    def locker(self, path, sql, **kw):
        lk = Locker(path, sql, **kw)
        self.addCleanup(lk.release)
        return lk

    def test_write_lock_while_running(self):
        """An sqlite3 shell left in a write transaction: in WAL mode lookups go on; trap hits
        wait at most 2 s, then fail at once until the lock is gone."""
        d = self.daemon(milter=True, extra={"policy": {"threads": 4}}).start()
        self.list_before(d)
        lk = self.locker(self.db(d), "BEGIN EXCLUSIVE;")
        if not lk.locked:
            self.fail("the sqlite3 tool did not get its lock: " + lk.release())
        mark = self.check_writes_fail(d, "database is locked")
        self.check_parallel_trap_hits(d)
        self.check_milter(d)
        lk.release()
        self.check_recovers(d, mark)
        self.stop_cleanly(d)

    def check_parallel_trap_hits(self, d):
        """More writers at once than the store has connections: each gets its answer within the one
        wait, none waits for the others' waits, and lookups are not held up by them."""
        time.sleep(1.2)  # past the back-off of the first timeout: one of these waits again, the others not
        answers, lookups = [], []

        def hit(i):
            with sh.PolicyClient(d.policy_address("trap"), timeout=30) as c:
                start = time.monotonic()
                answers.append((c.check(sender=f"par{i}@bad.test", recipient=TRAP, client_address="192.0.2.6"),
                                time.monotonic() - start))

        threads = [threading.Thread(target=hit, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        with sh.PolicyClient(d.policy_address("sender")) as s:
            for _ in range(5):
                start = time.monotonic()
                self.assertEqual(s.check(sender="before@bad.test", client_address="198.51.100.1"), REJECT_TEXT)
                lookups.append(time.monotonic() - start)
                time.sleep(0.1)
        for t in threads:
            t.join()
        self.assertEqual(len(answers), 6)
        for answer, secs in answers:
            self.assert_trap_fallback(answer)
            self.assertLess(secs, BOUND)
        self.assertLess(max(lookups), 0.5 * SCALE, "lookups waited behind writers stuck on the lock")

    def check_milter(self, d):
        """The milter front end gets the same: MAIL FROM lookups work, a trap RCPT falls back."""
        with MilterClient.open(d.config["milter"]["listen"]) as m:
            m.negotiate()
            m.connect("client.bad.test", "192.0.2.51")
            m.helo("client.bad.test")
            r = self.timed(m.mail, "<before@bad.test>")
            self.assertEqual((r.action, r.code), ("replycode", "550"), r)
        with MilterClient.open(d.config["milter"]["listen"]) as m:
            m.negotiate()
            m.connect("client.bad.test", "192.0.2.52")
            m.helo("client.bad.test")
            self.assertEqual(self.timed(m.mail, "<m2@bad.test>").action, "continue")
            r = self.timed(m.rcpt, f"<{TRAP}>")
            self.assertEqual(r.verdict, "continue" if self.ON_ERROR == "accept" else "tempfail", r)

    def test_write_lock_at_start(self):
        """A current database opens with reads only: spamtrapd starts under another process's
        write lock, serves lookups, and falls back for trap hits until the lock goes."""
        d = self.daemon().start()
        self.list_before(d)
        d.stop()
        lk = self.locker(self.db(d), "BEGIN EXCLUSIVE;")
        if not lk.locked:
            self.fail("the sqlite3 tool did not get its lock: " + lk.release())
        start = time.monotonic()
        d.start()
        self.assertLess(time.monotonic() - start, BOUND)
        mark = self.check_writes_fail(d, "database is locked", n=3)
        lk.release()
        self.check_recovers(d, mark)
        self.stop_cleanly(d)


class ExclusiveLockingMode(FaultChecks, unittest.TestCase):
    """PRAGMA locking_mode=EXCLUSIVE: in WAL mode the holder shuts readers out as well. It can only
    take that lock when no other connection has the file open, so it meets spamtrapd at start."""

    def test_exclusive_lock_at_start(self):
        d = self.daemon().start()
        self.list_before(d)
        d.stop()
        lk = Locker(self.db(d), "PRAGMA locking_mode=EXCLUSIVE;\nBEGIN EXCLUSIVE;")
        self.addCleanup(lk.release)
        if not lk.locked:
            self.fail("the sqlite3 tool did not get its lock: " + lk.release())
        mark = d.log_mark()
        start = time.monotonic()
        self.assertEqual(d.run_until_exit(), 1)
        self.assertLess(time.monotonic() - start, 5.0 + BOUND, "a locked store must not hold up the start for long")
        self.assertIn(f"cannot start: sqlite {self.db(d)}: database is locked (another process held a lock on it "
                      "for 5000 ms)", d.log_since(mark))
        lk.release()
        d.start()
        self.assertTrue(self.listed(self.client(d, "sender"), "before@bad.test"))
        self.stop_cleanly(d)

    def test_running_daemon_cannot_be_locked_out(self):
        """spamtrapd's connections hold SQLite's shared lock: the exclusive locker fails, the daemon
        goes on reading and writing."""
        d = self.daemon().start()
        self.list_before(d)
        lk = Locker(self.db(d), "PRAGMA locking_mode=EXCLUSIVE;\nBEGIN EXCLUSIVE;", wait_ms=500)
        self.addCleanup(lk.release)
        self.assertFalse(lk.locked)
        self.assertIn("database is locked", lk.release())
        trap = self.client(d, "trap")
        self.assertEqual(trap.check(sender="new@bad.test", recipient=TRAP, client_address="192.0.2.7"), TRAP_REPLY)
        self.assertTrue(self.listed(self.client(d, "sender"), "new@bad.test"))
        self.stop_cleanly(d)


# Every fault above with each store.on_error.
for _base in (UnwritableFiles, DiskFull, FileSizeLimit, Locked):
    for _on_error in ("accept", "tempfail"):
        _name = f"{_base.__name__}_{_on_error.capitalize()}"
        globals()[_name] = type(_name, (_base, unittest.TestCase), {"ON_ERROR": _on_error})
del _base, _on_error, _name


if __name__ == "__main__":
    unittest.main(verbosity=2)
