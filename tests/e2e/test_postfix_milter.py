"""End to end: a real Postfix with smtpd_milters in front of a real spamtrapd.

One private Postfix instance (tests/lib/postfix_harness.py) and one
spamtrapd (tests/lib/spamtrapd_harness.py, built with ASan in `make test`:
its clean exit is checked at the end) are shared by the tests, which use
different client addresses (XCLIENT) and senders so that they cannot see
each other's blocklist entries. Extra smtpd services on their own ports
offer milter_default_action=accept, Postfix's own SASL (dovecot protocol,
served by a small fake auth server here), and a milter reached over a
unix socket.

Trap: trap@sink.test, a real mailbox, so that "the trap copy is gone" is a
Maildir that stays empty while the other mailboxes get the message.
"""

import base64
import grp
import os
import re
import shutil
import smtplib
import socket
import stat
import sys
import tempfile
import threading
import time
import unittest
import uuid

import postfix_harness as ph
import spamtrapd_harness as sh

BLOCKED = "5.7.1 Sender is blocklisted after mail to a spamtrap"
ALICE, BOB, CAROL, TRAP = "alice@sink.test", "bob@sink.test", "carol@sink.test", "trap@sink.test"
SASL_PASSWORD = "secret"

CONFIG = {
    "traps": {"addresses": [TRAP]},
    "whitelist": {"domains": ["example.org"]},
    "blocklist": {"keys": ["sender", "client_address", "sasl_username"]},
}


class FakeDovecotAuth:
    """A Dovecot auth server (protocol 1.x, as Postfix's smtpd_sasl_type =
    dovecot speaks it) that accepts PLAIN with SASL_PASSWORD for any user.
    Postfix does the real SMTP AUTH work; only the password check is fake."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.logins = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn):
        with conn:
            conn.sendall(b"VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nSPID\t1\nCUID\t1\n"
                         b"COOKIE\t0123456789abcdef0123456789abcdef\nDONE\n")
            buf = b""
            while True:
                try:
                    data = conn.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    reply = self._answer(line.decode("utf-8", "replace").split("\t"))
                    if reply:
                        conn.sendall(reply.encode() + b"\n")

    def _answer(self, fields):
        if fields[0] != "AUTH" or len(fields) < 3:
            return None
        req_id, params = fields[1], dict(f.split("=", 1) for f in fields[3:] if "=" in f)
        if fields[2].upper() != "PLAIN" or "resp" not in params:
            return "FAIL\t%s\treason=PLAIN with an initial response only" % req_id
        try:
            _, user, password = base64.b64decode(params["resp"]).decode().split("\0")
        except ValueError:
            return "FAIL\t%s" % req_id
        if password != SASL_PASSWORD:
            return "FAIL\t%s\tuser=%s" % (req_id, user)
        self.logins.append(user)
        return "OK\t%s\tuser=%s" % (req_id, user)

    def close(self):
        self.sock.close()


def wait_milter_port(daemon, timeout=sh.START_TIMEOUT):
    port = daemon.milter_port()
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if not daemon.running() or time.monotonic() > deadline:
                raise sh.HarnessError("milter not listening:\n" + daemon.log_tail())
            time.sleep(0.05)


def wait_unix_socket(path, daemon, timeout=sh.START_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if not daemon.running() or time.monotonic() > deadline:
            raise sh.HarnessError("no milter socket %s:\n%s" % (path, daemon.log_tail()))
        time.sleep(0.05)


def blocklist(daemon):
    p = daemon.ctl("list")
    return {line.split("\t", 1)[0] for line in p.stdout.splitlines() if line.strip()}


class PostfixMilter(unittest.TestCase):
    """Tests run in name order; the daemon-down test is last."""

    @classmethod
    def setUpClass(cls):
        ph.require_postfix()
        cls.auth = FakeDovecotAuth()
        cls.d = sh.Spamtrapd(CONFIG, roles=(), milter=True)
        cls.d.start()
        wait_milter_port(cls.d)
        # A second daemon on a unix socket, as Postfix (user postfix) reaches it in production.
        cls.sockdir = tempfile.mkdtemp(prefix="stm.", dir="/tmp")
        os.chmod(cls.sockdir, 0o755)
        cls.sock_path = os.path.join(cls.sockdir, "spamtrapd.sock")
        cls.du = sh.Spamtrapd(dict(CONFIG, milter={"listen": "unix:" + cls.sock_path, "socket_group": "postfix",
                                                    "socket_mode": "0660"}), roles=())
        cls.du.start()
        wait_unix_socket(cls.sock_path, cls.du)
        milter = "inet:127.0.0.1:%d" % cls.d.milter_port()
        cls.pf = ph.PostfixInstance(
            mailboxes=[ALICE, BOB, CAROL, TRAP],
            params={"smtpd_milters": milter, "milter_default_action": "tempfail"},
            services={
                "accept": {"milter_default_action": "accept"},
                "sasl": {"smtpd_sasl_auth_enable": "yes", "smtpd_sasl_type": "dovecot",
                         "smtpd_sasl_path": "inet:127.0.0.1:%d" % cls.auth.port},
                "unix": {"smtpd_milters": "unix:" + cls.sock_path},
            })
        cls.pf.start()

    @classmethod
    def tearDownClass(cls):
        try:
            problems = re.findall(r".*(?:warning|error|fatal).*milter.*", cls.pf.maillog())
            allowed = [l for l in problems if cls.allowed_milter_warning(l)]
            if set(problems) - set(allowed):
                raise AssertionError("Postfix complained about the milter:\n" + "\n".join(problems))
        finally:
            try:
                cls.pf.cleanup()
            finally:
                cls.auth.close()
                for d in (cls.d, cls.du):
                    d.stop()  # raises on a non-zero exit (an ASan report, a crash)
                    log = d.log()
                    d.cleanup()
                    # Every milter connection Postfix opened was closed through xxfi_close.
                    if "connection(s) open" in log:
                        raise AssertionError("milter contexts left open at stop:\n" + log[-2000:])
                shutil.rmtree(cls.sockdir, ignore_errors=True)

    # The daemon-down test stops the milter on purpose.
    down_since = None

    @classmethod
    def allowed_milter_warning(cls, line):
        return cls.down_since is not None and ("connect to Milter service" in line or "Connection refused" in line)

    # ---------------------------------------------------------- helpers
    def smtp(self, sender, rcpts, client, service="default", helo="client.example.test"):
        return self.pf.smtp(sender, rcpts, client=client, service=service, helo=helo)

    def assert_rejected_at_mail(self, r):
        self.assertEqual(r.mail.code, 550, r)
        self.assertIn(BLOCKED, r.mail.text, r)

    def assert_delivered(self, r, mailboxes, not_to=()):
        self.assertTrue(r.accepted, r)
        for mb in mailboxes:
            self.pf.wait_delivered(mb, message_id=r.message_id)
        self.pf.wait_queue_empty()
        for mb in not_to:
            self.assertNotIn(r.message_id, self.pf.delivered_ids(mb), "%s got %s" % (mb, r))

    # ------------------------------------------------------------ tests
    def test_10_trap_hit_then_rejected_at_mail_from(self):
        r = self.smtp("spam10@bad.test", [TRAP], client="192.0.2.10")
        self.assertTrue(r.accepted, r)  # the sender learns nothing
        self.pf.wait_queue_empty()
        self.assertNotIn(r.message_id, self.pf.delivered_ids(TRAP))
        self.pf.wait_log(r"milter-discard: END-OF-MESSAGE from \S+\[192\.0\.2\.10\]")
        keys = blocklist(self.d)
        self.assertIn("spam10@bad.test", keys)
        self.assertIn("192.0.2.10", keys)
        self.assertNotIn("127.0.0.1", keys)  # Postfix's first milter connection, before XCLIENT
        # The same client with another sender, and the sender from another client.
        self.assert_rejected_at_mail(self.smtp("other10@good.test", [ALICE], client="192.0.2.10"))
        self.assert_rejected_at_mail(self.smtp("spam10@bad.test", [ALICE], client="192.0.2.110"))
        # The entry explains itself, with Postfix's queue id when Postfix had one at RCPT.
        out = self.d.ctl("lookup", "192.0.2.10").stdout
        self.assertIn(TRAP, out)

    def test_20_whitelisted_sender(self):
        """Not authenticated, a whitelisted sender may be forged: its own key is spared, the client is not."""
        r = self.smtp("boss@example.org", [TRAP, ALICE], client="192.0.2.20")
        self.assert_delivered(r, [ALICE], not_to=[TRAP])
        keys = blocklist(self.d)
        self.assertIn("192.0.2.20", keys)
        self.assertNotIn("boss@example.org", keys)
        self.assert_rejected_at_mail(self.smtp("boss@example.org", [ALICE], client="192.0.2.20"))
        self.assertEqual(self.smtp("boss@example.org", [ALICE], client="192.0.2.120").mail.code, 250)

    def test_21_authenticated_whitelisted_sender(self):
        """Authenticated, the whitelisted sender is verified: its client and address are not judged,
        but the account that verified it is. A stolen password writing a whitelisted MAIL FROM to
        a trap gets the account blocklisted, and the account stays stopped whatever it writes."""
        r = self.sasl_smtp("boss21", "boss21@example.org", [TRAP, CAROL], client="192.0.2.21")
        self.assertEqual(r["data-end"][0], 250, r)
        self.pf.wait_delivered(CAROL, message_id=r["message_id"])
        keys = blocklist(self.d)
        self.assertIn("sasl:boss21", keys)
        self.assertFalse({"boss21@example.org", "@example.org", "192.0.2.21"} & keys)
        r2 = self.sasl_smtp("boss21", "boss21@example.org", [CAROL], client="192.0.2.121")
        self.assertEqual(r2["mail"][0], 550, r2)
        self.assertIn(BLOCKED, r2["mail"][1])
        # the sender, from its client, without that account
        self.assertEqual(self.smtp("boss21@example.org", [ALICE], client="192.0.2.21").mail.code, 250)

    def test_30_one_trap_two_real_recipients(self):
        r = self.smtp("spam30@bad.test", [ALICE, TRAP, BOB], client="192.0.2.30")
        self.assertEqual({k: v.code for k, v in r.rcpt.items()}, {ALICE: 250, TRAP: 250, BOB: 250}, r)
        self.assert_delivered(r, [ALICE, BOB], not_to=[TRAP])
        self.assert_rejected_at_mail(self.smtp("spam30@bad.test", [ALICE], client="192.0.2.130"))

    def test_40_ipv6_client_via_xclient(self):
        r = self.smtp("spam40@bad.test", [TRAP], client="2001:db8:40::10")
        self.assertTrue(r.accepted, r)
        self.assertIn("2001:db8:40::/64", blocklist(self.d))
        # Another host of the same /64, with a sender never seen before.
        self.assert_rejected_at_mail(self.smtp("fresh40@new.test", [ALICE], client="2001:db8:40::99"))
        self.assertEqual(self.smtp("fresh40@new.test", [ALICE], client="2001:db8:41::99").mail.code, 250)

    def test_50_null_sender_hits_trap(self):
        """traps.null_sender ignore (the default): a bounce to a trap is dropped and records nothing."""
        r = self.smtp("", [TRAP], client="192.0.2.50")
        self.assertTrue(r.accepted, r)
        keys = blocklist(self.d)
        self.assertNotIn("192.0.2.50", keys)
        self.assertFalse({"", "<>"} & keys)
        self.assert_delivered(self.smtp("", [ALICE], client="192.0.2.50"), [ALICE])
        self.assertNotIn(r.message_id, self.pf.delivered_ids(TRAP))

    def test_60_sasl_authenticated_client(self):
        """Real Postfix SASL: the account is blocklisted, not the shared client address."""
        r = self.sasl_smtp("alice60", "alice60@good.test", [TRAP, CAROL], client="192.0.2.60")
        self.assertEqual(r["data-end"][0], 250, r)
        self.assertIn("alice60", self.auth.logins)
        self.pf.wait_delivered(CAROL, message_id=r["message_id"])
        keys = blocklist(self.d)
        self.assertIn("sasl:alice60", keys)
        self.assertIn("alice60@good.test", keys)
        self.assertNotIn("192.0.2.60", keys)
        # Others on the same submission host go on; the account is stopped everywhere.
        self.assertEqual(self.smtp("bob60@good.test", [ALICE], client="192.0.2.60").mail.code, 250)
        r2 = self.sasl_smtp("alice60", "new60@good.test", [ALICE], client="192.0.2.160")
        self.assertEqual(r2["mail"][0], 550, r2)
        self.assertIn(BLOCKED, r2["mail"][1])

    def sasl_smtp(self, user, sender, rcpts, client):
        """XCLIENT, EHLO, AUTH PLAIN on the sasl service, then one message. Returns {step: (code, text)}."""
        out = {"message_id": "<%s@e2e.spamtrapd.test>" % uuid.uuid4().hex}
        conn = smtplib.SMTP("127.0.0.1", self.pf.ports["sasl"], timeout=30)
        try:
            conn.ehlo("submission.test")
            self.assertEqual(conn.docmd("XCLIENT", "ADDR=%s" % client)[0], 220)
            conn.ehlo("submission.test")
            conn.login(user, SASL_PASSWORD)
            code, text = conn.mail(sender)
            out["mail"] = (code, text.decode())
            if code != 250:
                return out
            for rcpt in rcpts:
                self.assertEqual(conn.rcpt(rcpt)[0], 250)
            msg = ph.build_message(sender, rcpts, out["message_id"])
            code, text = conn.data(msg.encode())
            out["data-end"] = (code, text.decode())
            return out
        finally:
            conn.quit()

    def test_70_dry_run_delivers_everything_but_records(self):
        self.assertTrue(self.d.reload({"mode": "dry-run"}))
        try:
            mark = self.d.log_mark()
            r = self.smtp("spam70@bad.test", [TRAP, ALICE], client="192.0.2.70")
            self.assert_delivered(r, [TRAP, ALICE])
            self.d.wait_for_log(r"dry-run, would drop-copy: trap.*192\.0\.2\.70", since=mark)
            self.assertIn("192.0.2.70", blocklist(self.d))
            self.assertEqual(self.smtp("spam70@bad.test", [ALICE], client="192.0.2.70").mail.code, 250)
        finally:
            self.assertTrue(self.d.reload({"mode": "enforce"}))
        self.assert_rejected_at_mail(self.smtp("spam70@bad.test", [ALICE], client="192.0.2.70"))

    def test_80_sighup_reload_keeps_the_milter_serving(self):
        pid = self.d.proc.pid
        self.assertTrue(self.d.reload())  # SIGHUP, same config
        self.assertTrue(self.d.running())
        self.assertEqual(self.d.proc.pid, pid)
        r = self.smtp("spam80@bad.test", [TRAP], client="192.0.2.80")
        self.assertTrue(r.accepted, r)
        self.assert_rejected_at_mail(self.smtp("spam80@bad.test", [ALICE], client="192.0.2.180"))
        # A reload that changes the rules: on_mixed discard-all.
        self.assertTrue(self.d.reload({"traps": {"on_mixed": "discard-all"}}))
        try:
            r = self.smtp("spam81@bad.test", [ALICE, TRAP, BOB], client="192.0.2.81")
            self.assertTrue(r.accepted, r)
            self.pf.wait_queue_empty()
            for mb in (ALICE, BOB, TRAP):
                self.assertNotIn(r.message_id, self.pf.delivered_ids(mb), mb)
        finally:
            self.assertTrue(self.d.reload({"traps": {"on_mixed": "deliver-others"}}))

    def test_85_unix_socket_for_postfix(self):
        st = os.stat(self.sock_path)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o660)
        self.assertEqual(st.st_gid, grp.getgrnam("postfix").gr_gid)
        r = self.smtp("spam85@bad.test", [ALICE, TRAP], client="192.0.2.85", service="unix")
        self.assert_delivered(r, [ALICE], not_to=[TRAP])
        self.assertIn("192.0.2.85", blocklist(self.du))
        r = self.smtp("other85@good.test", [ALICE], client="192.0.2.85", service="unix")
        self.assert_rejected_at_mail(r)

    def test_90_daemon_down_postfix_follows_milter_default_action(self):
        self.d.stop()
        type(self).down_since = self.pf.log_mark()
        try:
            r = self.smtp("someone90@good.test", [ALICE], client="192.0.2.90")
            self.assertEqual(r.mail.code, 451, r)
            self.assertIn("4.7.1", r.mail.text)
            r = self.smtp("someone90@good.test", [ALICE], client="192.0.2.90", service="accept")
            self.assert_delivered(r, [ALICE])
        finally:
            self.d.start()
            wait_milter_port(self.d)
        # Back: the blocklist survived the restart.
        self.assert_rejected_at_mail(self.smtp("other@good.test", [ALICE], client="192.0.2.10"))


if __name__ == "__main__":
    unittest.main(verbosity=2, argv=[sys.argv[0]] + sys.argv[1:])
