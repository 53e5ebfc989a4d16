"""A throwaway real Postfix for end-to-end tests (Python 3 stdlib only).

PostfixInstance runs a private Postfix from its own short temporary folder
(/tmp/stpf.XXXXXXXX): config in DIR/etc, queue in DIR/queue, data in
DIR/data, log in DIR/log/maillog, delivered mail in Maildirs under DIR/mail.
It never touches /etc/postfix, listens only on 127.0.0.1, uses no DNS and
sends nothing off the box (every transport but the virtual sink is error:).

    import postfix_harness as ph
    ph.require_postfix()                       # exit 77 if not root / no postfix
    pf = ph.PostfixInstance(
        mailboxes=["alice@sink.test"],
        params={"smtpd_recipient_restrictions":
                "check_policy_service inet:127.0.0.1:10666, reject_unauth_destination"},
        services={"nodelay": {"smtpd_delay_reject": "no"}})
    pf.start()
    r = pf.smtp("a@sender.test", ["alice@sink.test"], client="192.0.2.10")
    assert r.rcpt["alice@sink.test"].code == 250, r
    pf.wait_delivered("alice@sink.test", 1)
    pf.cleanup()                               # stop + remove DIR

Facts this relies on (see shared TESTING.md): chroot is off for every
service; `postlog` + maillog_file replace syslog; XCLIENT from 127.0.0.0/8
lets one test pose as any IPv4/IPv6 client; delivery is asynchronous, so a
"not delivered" assertion is only valid once the queue is empty
(wait_queue_empty); after `postfix stop` the master may stay a zombie
(PID 1 here need not reap), so liveness is judged by /proc state.

Milter tests: pass params={"smtpd_milters": "inet:127.0.0.1:PORT",
"milter_default_action": "tempfail"}; the milter timeouts are already short.
"""

import email
import email.policy
import email.utils
import grp
import json
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from typing import NamedTuple

POSTFIX = "/usr/sbin/postfix"
POSTQUEUE = "/usr/sbin/postqueue"
SKIP = 77

# Postfix keeps unix sockets under the queue folder: its path must stay short.
MAX_DIR_LEN = 70

# Settings every instance gets; the caller's params override them.
BASE_PARAMS = {
    "compatibility_level": "3.6",
    "myhostname": "mx.spamtrapd.test",
    "mydomain": "spamtrapd.test",
    "myorigin": "$myhostname",
    "mydestination": "",
    "inet_interfaces": "127.0.0.1",
    # Listen on 127.0.0.1 only (inet_interfaces and master.cf), but keep
    # IPv6 address support on: with "ipv4" smtpd refuses XCLIENT
    # ADDR=IPV6:... with "501 5.5.4 Bad ADDR syntax".
    "inet_protocols": "all",
    "mynetworks": "127.0.0.0/8",
    "smtp_dns_support_level": "disabled",
    "smtpd_peername_lookup": "no",
    "alias_maps": "",
    "alias_database": "",
    "append_dot_mydomain": "no",
    "biff": "no",
    "default_transport": "error:outbound mail is disabled in tests",
    "relay_transport": "error:outbound mail is disabled in tests",
    "local_transport": "error:local delivery is disabled in tests",
    "smtpd_authorized_xclient_hosts": "127.0.0.0/8",
    "smtpd_error_sleep_time": "0",
    "smtpd_soft_error_limit": "100",
    "smtpd_hard_error_limit": "200",
    "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
    "smtpd_policy_service_timeout": "5s",
    "milter_connect_timeout": "5s",
    "milter_command_timeout": "5s",
    "milter_content_timeout": "10s",
    "queue_run_delay": "1s",
    "minimal_backoff_time": "1s",
    "maximal_backoff_time": "2s",
    "maximal_queue_lifetime": "1m",
    "bounce_queue_lifetime": "1m",
    "delay_warning_time": "0h",
}

# chroot "n" everywhere: a chrooted smtpd would need copies of system files.
# Only what a virtual-sink instance uses; no smtp/local (transports are error:).
MASTER_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def skip_reason():
    """Why Postfix tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "not root: a private Postfix instance must be started as root"
    for prog in (POSTFIX, POSTQUEUE, "/usr/sbin/postconf"):
        if not os.access(prog, os.X_OK):
            return "Postfix is not installed (%s missing; scripts/install-deps.sh test)" % prog
    return None


def require_postfix():
    """Exit 77 (ctest: skipped) with the reason when Postfix cannot run."""
    reason = skip_reason()
    if reason:
        print("SKIP: " + reason, flush=True)
        sys.exit(SKIP)


def free_port(host="127.0.0.1"):
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class PostfixError(AssertionError):
    """A Postfix command or wait failed; the text carries the log tail."""


class Reply(NamedTuple):
    """One SMTP reply: code (-1 when the connection failed) and text
    (multi-line replies joined by newlines, without the code)."""

    code: int
    text: str


class SmtpResult:
    """What happened in one SMTP transaction, step by step.

    steps: list of (name, Reply) in order; names are connect, ehlo, xclient,
    xclient-ehlo, mail, rcpt, data, data-end. Shortcuts: connect, ehlo,
    xclient, mail, data, data_end (Reply or None when not reached) and
    rcpt, a dict recipient -> Reply in RCPT order.
    """

    def __init__(self, sender, recipients, message_id):
        self.sender = sender
        self.recipients = list(recipients)
        self.message_id = message_id
        self.steps = []
        self.rcpt = {}
        self.connect = self.ehlo = self.xclient = None
        self.mail = self.data = self.data_end = None

    def add(self, name, reply, rcpt=None):
        self.steps.append((name if rcpt is None else "rcpt " + rcpt, reply))
        if rcpt is not None:
            self.rcpt[rcpt] = reply
        elif name != "xclient-ehlo":
            setattr(self, name.replace("-", "_"), reply)

    @property
    def accepted(self):
        """True when the message was queued (250 after the final dot)."""
        return self.data_end is not None and self.data_end.code == 250

    @property
    def queue_id(self):
        """Postfix queue id from "250 2.0.0 Ok: queued as ID", else None."""
        if not self.accepted or "queued as " not in self.data_end.text:
            return None
        return self.data_end.text.rsplit("queued as ", 1)[1].strip()

    def rejected_at(self):
        """Name of the first step answered with 4xx/5xx (or -1), else None."""
        for name, reply in self.steps:
            if reply.code < 0 or reply.code >= 400:
                return name
        return None

    def __str__(self):
        lines = ["SMTP %s -> %s" % (self.sender, ", ".join(self.recipients))]
        for name, reply in self.steps:
            lines.append("  %-28s %d %s" % (name, reply.code, reply.text.replace("\n", " / ")))
        return "\n".join(lines)

    __repr__ = __str__


def _reply(pair):
    code, msg = pair
    if isinstance(msg, bytes):
        msg = msg.decode("utf-8", "replace")
    return Reply(code, msg)


def _xtext(value):
    """RFC 3461 xtext, as XCLIENT wants its attribute values."""
    out = []
    for ch in value:
        o = ord(ch)
        out.append("+%02X" % o if ch in "+=" or o < 33 or o > 126 else ch)
    return "".join(out)


def xclient_addr(address):
    """XCLIENT ADDR value: IPv6 addresses get the IPV6: prefix Postfix wants."""
    if ":" in address and not address.upper().startswith("IPV6:"):
        return "IPV6:" + address
    return address


def dot_stuff(text):
    """text as SMTP DATA bytes: CRLF line ends, leading dots doubled,
    ending in CRLF (the caller adds the final ".")."""
    lines = text.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return "".join(("." + l if l.startswith(".") else l) + "\r\n" for l in lines).encode("utf-8")


def build_message(sender, recipients, message_id, subject="spamtrapd e2e test", body=None):
    """A small RFC 5322 message (CRLF line ends) carrying message_id."""
    body = body if body is not None else "Test message %s.\r\n" % message_id
    headers = [
        "From: <%s>" % sender,
        "To: %s" % ", ".join("<%s>" % r for r in recipients),
        "Subject: %s" % subject,
        "Message-ID: %s" % message_id,
        "Date: %s" % email.utils.formatdate(localtime=False),
    ]
    return "\r\n".join(headers) + "\r\n\r\n" + body


class PostfixInstance:
    """One private Postfix instance in a temporary folder.

    mailboxes: addresses delivered by virtual(8) into Maildirs under
        DIR/mail/<domain>/<local>/ (their domains become
        virtual_mailbox_domains).
    params: extra main.cf parameters (override BASE_PARAMS), e.g.
        smtpd_recipient_restrictions, smtpd_sender_restrictions,
        smtpd_milters, milter_default_action, smtpd_delay_reject.
    services: extra smtpd listeners, name -> {param: value} overrides given
        with -o in master.cf, each on its own port (ports[name]); the main
        listener is ports["default"]. Lets one instance offer e.g. both
        smtpd_delay_reject=yes and =no without a reload.
    """

    def __init__(self, mailboxes=(), params=None, services=None, root="/tmp", prefix="stpf."):
        self.mailboxes = [m.lower() for m in mailboxes]
        self.params = dict(params or {})
        self.services = {k: dict(v) for k, v in (services or {}).items()}
        self.dir = tempfile.mkdtemp(prefix=prefix, dir=root)
        if len(self.dir) > MAX_DIR_LEN:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise PostfixError("instance dir %r longer than %d characters" % (self.dir, MAX_DIR_LEN))
        os.chmod(self.dir, 0o755)  # virtual(8) delivers as nobody: parents must be searchable
        self.etc = os.path.join(self.dir, "etc")
        self.queue_dir = os.path.join(self.dir, "queue")
        self.data_dir = os.path.join(self.dir, "data")
        self.log_dir = os.path.join(self.dir, "log")
        self.mail_dir = os.path.join(self.dir, "mail")
        self.maillog_path = os.path.join(self.log_dir, "maillog")
        self.ports = {"default": free_port()}
        for name in self.services:
            self.ports[name] = free_port()
        self.running = False
        self._make_dirs()
        self.write_config()

    # ----------------------------------------------------------- config
    @property
    def port(self):
        """Port of the main smtpd listener."""
        return self.ports["default"]

    def _make_dirs(self):
        for d in (self.etc, self.queue_dir, self.data_dir, self.log_dir):
            os.makedirs(d, mode=0o755, exist_ok=True)
        os.makedirs(self.mail_dir, mode=0o755, exist_ok=True)
        nobody = pwd.getpwnam("nobody").pw_uid
        nogroup = grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_gid
        os.chown(self.mail_dir, nobody, nogroup)
        # The data folder belongs to the mail owner (postfix check insists).
        pf = pwd.getpwnam("postfix")
        os.chown(self.data_dir, pf.pw_uid, pf.pw_gid)

    def _main_params(self):
        nobody = pwd.getpwnam("nobody")
        p = dict(BASE_PARAMS)
        p.update({
            "queue_directory": self.queue_dir,
            "data_directory": self.data_dir,
            "maillog_file": self.maillog_path,
            "maillog_file_prefixes": self.log_dir,
            "virtual_mailbox_base": self.mail_dir,
            "virtual_mailbox_maps": "texthash:" + os.path.join(self.etc, "vmailbox"),
            "virtual_mailbox_domains": " ".join(sorted({m.split("@", 1)[1] for m in self.mailboxes})),
            "virtual_transport": "virtual",
            "virtual_uid_maps": "static:%d" % nobody.pw_uid,
            "virtual_gid_maps": "static:%d" % nobody.pw_gid,
        })
        p.update(self.params)
        return p

    def write_config(self):
        """(Re)write main.cf, master.cf and the mailbox map from the current
        mailboxes, params and services."""
        lines = ["# spamtrapd e2e test instance; generated by postfix_harness.py"]
        lines += ["%s = %s" % (k, v) for k, v in self._main_params().items()]
        self._write(os.path.join(self.etc, "main.cf"), "\n".join(lines) + "\n")
        master = ["127.0.0.1:%d inet n - n - - smtpd" % self.port]
        for name, overrides in self.services.items():
            master.append("127.0.0.1:%d inet n - n - - smtpd" % self.ports[name])
            master.append("  -o syslog_name=postfix/%s" % name)
            master += ["  -o { %s = %s }" % (k, v) for k, v in overrides.items()]
        self._write(os.path.join(self.etc, "master.cf"), "\n".join(master) + "\n" + MASTER_SERVICES)
        vmail = ["%s %s/" % (m, self._mailbox_rel(m)) for m in self.mailboxes]
        self._write(os.path.join(self.etc, "vmailbox"), "\n".join(vmail) + "\n")

    @staticmethod
    def _write(path, text):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)

    @staticmethod
    def _mailbox_rel(mailbox):
        local, domain = mailbox.lower().split("@", 1)
        return "%s/%s" % (domain, local)

    def maildir(self, mailbox):
        """Path of mailbox's Maildir (exists only after a first delivery)."""
        return os.path.join(self.mail_dir, self._mailbox_rel(mailbox))

    # ---------------------------------------------------- run Postfix
    def _postfix(self, *args, timeout=30):
        cmd = [POSTFIX, "-c", self.etc] + list(args)
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            raise PostfixError("%s failed (%d): %s%s\n%s" % (" ".join(cmd), p.returncode, p.stdout, p.stderr,
                                                           self.log_tail()))
        return p

    def start(self, timeout=20):
        """postfix start, then wait until every smtpd port accepts."""
        self._postfix("start", timeout=timeout)
        self.running = True
        deadline = time.monotonic() + timeout
        for name, port in self.ports.items():
            while not self._port_open(port):
                if time.monotonic() > deadline:
                    raise PostfixError("smtpd %s not listening on 127.0.0.1:%d\n%s" % (name, port, self.log_tail()))
                time.sleep(0.05)

    @staticmethod
    def _port_open(port):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    def master_pid(self):
        """PID in DIR/queue/pid/master.pid, or None."""
        try:
            with open(os.path.join(self.queue_dir, "pid", "master.pid")) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def processes(self):
        """PIDs of live (not zombie) processes of this instance: the master
        and every child it started carry MAIL_CONFIG=DIR/etc."""
        tag = ("MAIL_CONFIG=" + self.etc).encode()
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or not _alive(int(entry)):
                continue
            try:
                with open("/proc/%s/environ" % entry, "rb") as f:
                    env = f.read().split(b"\0")
            except OSError:
                continue
            if tag in env:
                pids.append(int(entry))
        master = self.master_pid()
        if master and _alive(master) and master not in pids and _is_master(master):
            pids.append(master)
        return sorted(pids)

    def stop(self, timeout=15):
        """postfix stop; then wait until no live process of this instance
        is left (SIGKILL stragglers after timeout, and say so)."""
        if self.running:
            try:
                self._postfix("stop", timeout=timeout)
            finally:
                self.running = False
        deadline = time.monotonic() + timeout
        while self.processes():
            if time.monotonic() > deadline:
                left = self.processes()
                for pid in left:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                raise PostfixError("Postfix processes still alive after stop: %s" % left)
            time.sleep(0.05)

    def reload(self, params=None, services=None, timeout=20):
        """Apply changed params/services (merged into the current ones; a
        value of None removes a param) with `postfix reload`.

        `postfix reload` itself sleeps until main.cf is a few seconds old
        (measured here: ~1.8 s right after an edit, instant otherwise), so
        a reload costs about 2 s. Then wait for the master's "reload" log
        line and a short grace for old idle smtpd processes to exit, so
        the next connection meets the new settings.
        """
        for k, v in (params or {}).items():
            if v is None:
                self.params.pop(k, None)
            else:
                self.params[k] = v
        if services:
            for name, overrides in services.items():
                self.services[name] = dict(overrides)
                self.ports.setdefault(name, free_port())
        self.write_config()
        mark = self.log_mark()
        self._postfix("reload", timeout=timeout)
        deadline = time.monotonic() + timeout
        while "reload -- version" not in self.maillog(since=mark):
            if time.monotonic() > deadline:
                raise PostfixError("no reload logged\n" + self.log_tail())
            time.sleep(0.05)
        time.sleep(0.3)
        for port in self.ports.values():
            while not self._port_open(port):
                if time.monotonic() > deadline:
                    raise PostfixError("port %d closed after reload\n%s" % (port, self.log_tail()))
                time.sleep(0.05)

    def cleanup(self):
        """Stop (if running) and remove the instance folder."""
        try:
            if self.running or self.processes():
                self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.cleanup()

    # ------------------------------------------------------------- SMTP
    def smtp(self, sender, recipients, client=None, client_name=None, helo="client.example.test",
             xclient=None, service="default", subject="spamtrapd e2e test", body=None, timeout=30):
        """Run one SMTP transaction and return an SmtpResult; never raises
        on a 4xx/5xx reply or a dropped connection (code -1).

        client: pose as this client address with XCLIENT ADDR= (IPv6
            addresses get the IPV6: prefix); client_name: XCLIENT NAME=;
            xclient: more XCLIENT attributes {name: value}. After XCLIENT's
            new 220 greeting the client says EHLO again (helo).
        Stops after a MAIL rejection, skips DATA when no RCPT was accepted.
        """
        recipients = [recipients] if isinstance(recipients, str) else list(recipients)
        message_id = "<%s@e2e.spamtrapd.test>" % uuid.uuid4().hex
        result = SmtpResult(sender, recipients, message_id)
        conn = smtplib.SMTP(timeout=timeout)
        try:
            self._transaction(conn, result, client, client_name, helo, xclient, service, subject, body)
        except (smtplib.SMTPException, OSError) as e:
            code = getattr(e, "smtp_code", -1)
            text = getattr(e, "smtp_error", str(e))
            result.steps.append(("error", _reply((code, text or str(e)))))
        finally:
            try:
                conn.quit()
            except (smtplib.SMTPException, OSError):
                conn.close()
        return result

    def _transaction(self, conn, result, client, client_name, helo, xclient, service, subject, body):
        result.add("connect", _reply(conn.connect("127.0.0.1", self.ports[service])))
        if result.connect.code != 220:
            return
        result.add("ehlo", _reply(conn.ehlo(helo)))
        attrs = dict(xclient or {})
        if client:
            attrs["ADDR"] = xclient_addr(client)
        if client_name:
            attrs["NAME"] = client_name
        if attrs:
            arg = " ".join("%s=%s" % (k, _xtext(v)) for k, v in attrs.items())
            result.add("xclient", _reply(conn.docmd("XCLIENT", arg)))
            if result.xclient.code != 220:
                return
            result.add("xclient-ehlo", _reply(conn.ehlo(helo)))
        result.add("mail", _reply(conn.mail(result.sender)))
        if result.mail.code != 250:
            return
        for rcpt in result.recipients:
            result.add("rcpt", _reply(conn.rcpt(rcpt)), rcpt=rcpt)
        if not any(r.code in (250, 251) for r in result.rcpt.values()):
            conn.rset()
            return
        self._data(conn, result, subject, body)

    @staticmethod
    def _data(conn, result, subject, body):
        code, msg = conn.docmd("DATA")
        result.add("data", _reply((code, msg)))
        if code != 354:
            return
        text = build_message(result.sender, result.recipients, result.message_id, subject, body)
        # DATA was sent by hand to record its reply: send the body the same way.
        conn.send(dot_stuff(text) + b".\r\n")
        result.add("data-end", _reply(conn.getreply()))

    # --------------------------------------------------- queue & mail
    def queue(self):
        """Messages in the queue (incoming, active, deferred, hold, maildrop)
        as dicts from `postqueue -j`."""
        p = subprocess.run([POSTQUEUE, "-c", self.etc, "-j"], capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            raise PostfixError("postqueue -j failed: %s%s" % (p.stdout, p.stderr))
        return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]

    def wait_queue_empty(self, timeout=15):
        """Wait until the queue is empty: every accepted message has been
        delivered, bounced or discarded. Only then is "not delivered" true."""
        deadline = time.monotonic() + timeout
        while True:
            q = self.queue()
            if not q:
                return
            if time.monotonic() > deadline:
                raise PostfixError("queue not empty after %ss: %s\n%s" % (timeout, q, self.log_tail()))
            time.sleep(0.1)

    def delivered(self, mailbox):
        """Messages delivered to mailbox so far (Maildir new/ and cur/),
        oldest first, as email.message.Message objects."""
        files = []
        for sub in ("new", "cur"):
            d = os.path.join(self.maildir(mailbox), sub)
            if os.path.isdir(d):
                files += [os.path.join(d, n) for n in os.listdir(d)]
        files.sort(key=lambda p: (os.stat(p).st_mtime, p))
        msgs = []
        for path in files:
            with open(path, "rb") as f:
                msgs.append(email.message_from_bytes(f.read(), policy=email.policy.compat32))
        return msgs

    def delivered_ids(self, mailbox):
        """Message-IDs delivered to mailbox so far."""
        return [m.get("Message-ID") for m in self.delivered(mailbox)]

    def wait_delivered(self, mailbox, count=1, timeout=15, message_id=None):
        """Poll mailbox's Maildir until it holds at least count messages
        (and, if given, the one with message_id, e.g. SmtpResult.message_id);
        returns them all. Raises PostfixError (with the log tail) on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            msgs = self.delivered(mailbox)
            ids = [m.get("Message-ID") for m in msgs]
            if len(msgs) >= count and (message_id is None or message_id in ids):
                return msgs
            if time.monotonic() > deadline:
                raise PostfixError("%s: %d of %d messages%s after %ss; queue: %s\n%s" % (
                    mailbox, len(msgs), count, "" if message_id is None else " (waiting for %s)" % message_id,
                    timeout, self.queue(), self.log_tail()))
            time.sleep(0.05)

    # --------------------------------------------------------------- log
    def maillog(self, since=0):
        """Postfix's log (DIR/log/maillog) from byte offset since."""
        try:
            with open(self.maillog_path, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_mark(self):
        """Current end of the maillog: pass to maillog(since=...) later."""
        try:
            return os.path.getsize(self.maillog_path)
        except OSError:
            return 0

    def wait_log(self, pattern, since=0, timeout=10):
        """Wait until regex pattern shows in the maillog after offset since
        (postlogd writes asynchronously); returns the match."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.maillog(since))
            if m:
                return m
            if time.monotonic() > deadline:
                raise PostfixError("no maillog line matching %r after %ss\n%s" % (pattern, timeout,
                                                                                  self.log_tail(since=since)))
            time.sleep(0.05)

    def log_tail(self, lines=40, since=0):
        """Last lines of the maillog (from since), for failure messages."""
        text = self.maillog(since).splitlines()[-lines:]
        return "--- maillog %s (last %d lines) ---\n%s" % (self.maillog_path, len(text), "\n".join(text))


def _proc_state(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _alive(pid):
    """True when pid exists and is not a zombie (a zombie is already dead:
    its parent, possibly a non-reaping PID 1, has just not collected it)."""
    state = _proc_state(pid)
    return state is not None and state not in ("Z", "X")


def _is_master(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return b"master" in f.read().split(b"\0")[0]
    except OSError:
        return False
