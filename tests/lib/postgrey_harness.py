"""Run Debian's real postgrey (1.37) in integration tests (Python 3 stdlib only).

Postgrey starts /usr/sbin/postgrey in the foreground on a free loopback
port, with its own temporary --dbdir and its own whitelist files (empty
unless given: the system's /etc/postgrey files are never read), as the
current user, or as spamtrapd_harness.run_user() ("nobody") when the test
runs as root, like the daemon under test. It waits until postgrey answers a
policy request, and stops it by PID. No --daemonize, so postgrey writes no
pid file; its log (stderr) is a file in its folder; the folder is removed
by cleanup() unless SPAMTRAPD_KEEP=1.

    import postgrey_harness as ph
    import spamtrapd_harness as sh

    with ph.Postgrey(delay=3, auto_whitelist_clients=1,
                     whitelist_clients=["192.0.2.7", "mx.example.org"]) as pg:
        c = sh.PolicyClient(pg.address)
        c.check(client_address="198.51.100.1")  # "DEFER_IF_PERMIT 4.2.0 Greylisted, ..."

The options are postgrey's own (man postgrey): delay in seconds, max_age
in days, retry_window as postgrey takes it ("2" days or "6h"). A missing
postgrey is a failure, not a skip: CI installs it (scripts/install-deps.sh
test).
"""

import grp
import os
import pwd
import re
import shutil
import signal
import sys
import subprocess
import tempfile
import time

import spamtrapd_harness as sh

START_TIMEOUT = 20.0 * sh.TIMEOUT_SCALE
STOP_TIMEOUT = 10.0 * sh.TIMEOUT_SCALE

# A request postgrey answers without touching its database: with an attribute
# missing, smtpd_access_policy warns "attribute missing" and says DUNNO.
_PROBE = b"request=smtpd_access_policy\n\n"


def binary():
    """The postgrey program (in /usr/sbin, which a non-root PATH may lack)."""
    path = shutil.which("postgrey") or ("/usr/sbin/postgrey" if os.access("/usr/sbin/postgrey", os.X_OK) else None)
    if not path:
        raise AssertionError("postgrey is not installed (Debian: scripts/install-deps.sh test)")
    return path


def version():
    """postgrey's version as it prints it ("1.37")."""
    out = subprocess.run([binary(), "--version"], capture_output=True, text=True, timeout=30).stdout
    m = re.match(r"postgrey (\S+)", out)
    if not m:
        raise AssertionError(f"postgrey --version printed {out!r}")
    return m.group(1)


def _user_and_group():
    """The user and group postgrey switches to (Net::Server --user/--group): never root."""
    user = sh.run_user()
    pw = pwd.getpwnam(user) if user else pwd.getpwuid(os.getuid())
    return pw.pw_name, grp.getgrgid(pw.pw_gid).gr_name, pw.pw_uid, pw.pw_gid


class Postgrey:
    """One postgrey process on 127.0.0.1:port, with its database and files under its own folder.

    whitelist_clients / whitelist_recipients: lists of files, each a list of
    lines (postgrey's syntax), written into the folder and passed with one
    --whitelist-clients / --whitelist-recipients each. extra: more argv.
    """

    def __init__(self, delay=None, max_age=None, retry_window=None, auto_whitelist_clients=None,
                 greylist_text=None, x_greylist_header=None, lookup_by_subnet=False, ipv4cidr=None,
                 ipv6cidr=None, whitelist_clients=((),), whitelist_recipients=((),), extra=(), workdir=None):
        self.dir = workdir or tempfile.mkdtemp(prefix="postgrey-test.")
        # world-searchable: postgrey re-reads its whitelists as its user on SIGHUP
        os.chmod(self.dir, 0o755)
        self.dbdir = os.path.join(self.dir, "db")
        os.makedirs(self.dbdir, exist_ok=True)
        self.user, self.group, uid, gid = _user_and_group()
        os.chown(self.dbdir, uid, gid)
        self.log_path = os.path.join(self.dir, "postgrey.log")
        self.port = None
        self.proc = None
        opts = []
        for flag, value in (("--delay", delay), ("--max-age", max_age), ("--retry-window", retry_window),
                            ("--greylist-text", greylist_text), ("--x-greylist-header", x_greylist_header),
                            ("--ipv4cidr", ipv4cidr), ("--ipv6cidr", ipv6cidr)):
            if value is not None:
                opts.append(f"{flag}={value}")
        if auto_whitelist_clients is not None:
            opts.append(f"--auto-whitelist-clients={auto_whitelist_clients}")
        if lookup_by_subnet:
            opts.append("--lookup-by-subnet")
        for kind, files in (("clients", whitelist_clients), ("recipients", whitelist_recipients)):
            for i, lines in enumerate(files):
                path = os.path.join(self.dir, f"whitelist_{kind}.{i}")
                with open(path, "w", encoding="utf-8") as f:
                    f.write("".join(line + "\n" for line in lines))
                os.chmod(path, 0o644)
                opts.append(f"--whitelist-{kind}={path}")
        self.options = opts + list(extra)

    @property
    def address(self):
        """host:port as spamtrapd_harness.PolicyClient takes it."""
        return f"127.0.0.1:{self.port}"

    def argv(self):
        return [binary(), f"--inet=127.0.0.1:{self.port}", f"--dbdir={self.dbdir}", f"--user={self.user}",
                f"--group={self.group}", *self.options]

    def start(self, timeout=START_TIMEOUT):
        """Start on a free port and wait until postgrey answers a request. Another program taking
        the port between the pick and postgrey's bind makes postgrey exit: then another port."""
        if self.running():
            raise AssertionError("postgrey is already running")
        for attempt in range(3):
            self.port = sh.free_port()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                             cwd=self.dir)
            if self._wait_ready(time.monotonic() + timeout):
                return self
            if attempt == 2 or "Address already in use" not in self.log_tail():
                raise AssertionError(f"postgrey exited with {self.proc.returncode} while starting:\n"
                                     + self.log_tail())
        return self

    def _wait_ready(self, deadline):
        """True once postgrey answers; False if it exited; raises after deadline."""
        while True:
            if self.proc.poll() is not None:
                return False
            if self._answers():
                return True
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"postgrey did not answer on {self.address} in time:\n" + self.log_tail())
            time.sleep(0.05)

    def _answers(self):
        try:
            s = sh.connect(self.address, timeout=1.0)
        except OSError:
            return False
        try:
            s.sendall(_PROBE)
            buf = b""
            while not buf.endswith(b"\n\n"):
                chunk = s.recv(4096)
                if not chunk:
                    return False
                buf += chunk
            return buf == b"action=DUNNO\n\n"
        except OSError:
            return False
        finally:
            s.close()

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM to the PID and wait; SIGKILL if it takes longer than timeout."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # postgrey is the reference, not what is tested: how fast it stops is not the
                # test's business (a loaded CI machine once kept it past the timeout).
                proc.kill()
                proc.wait()
                print(f"postgrey (pid {proc.pid}) did not stop within {timeout}s on SIGTERM; killed",
                      file=sys.stderr)
        return proc.returncode

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def log(self):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_tail(self, lines=30):
        return "\n".join(self.log().splitlines()[-lines:]) or "(no log)"

    def cleanup(self):
        """Stop (or kill) postgrey and remove its folder, unless SPAMTRAPD_KEEP=1."""
        try:
            self.stop()
        finally:
            self.kill()
            if os.environ.get("SPAMTRAPD_KEEP") != "1":
                shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        if not self.running():
            self.start()
        return self

    def __exit__(self, *exc):
        self.cleanup()
        return False
