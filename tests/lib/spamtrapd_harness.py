"""Run the real spamtrapd in integration and end-to-end tests (Python 3 stdlib only).

Spamtrapd starts the binary named by $SPAMTRAPD in the foreground with a
config written from a dict over test defaults (log to stderr at debug level,
SQLite store in a temporary folder, policy listeners on free loopback ports,
no milter unless asked), captures its stderr in a file, and stops it by PID.
PolicyClient speaks the Postfix policy protocol (SMTPD_POLICY_README) over one
persistent connection, filling in the attributes Postfix sends.

    import spamtrapd_harness as sh

    with sh.Spamtrapd({"traps": {"addresses": ["trap@example.com"]}}) as d:
        trap = sh.PolicyClient(d.policy_address("trap"))
        sender = sh.PolicyClient(d.policy_address("sender"))
        trap.check(sender="spam@bad.test", recipient="trap@example.com")
        assert sender.check(sender="spam@bad.test").startswith("550 5.7.1")
        d.wait_for_log(r"trap=trap@example.com")

Environment: SPAMTRAPD and SPAMTRAPCTL (binary paths; ctest sets them),
SPAMTRAPD_KEEP=1 keeps the temporary folders for a look after a failure.
SPAMTRAPD_WRAPPER (e.g. "valgrind --error-exitcode=99 ...") is put in front
of both programs (command()), SPAMTRAPD_TIMEOUT_SCALE stretches every
harness timeout for such slow runs, and SPAMTRAPD_REPORT_DIR is where
sanitizers and valgrind write their reports (tests/lib/run_checked.py sets
it): a report of a daemon or spamtrapctl run by the harness fails the step
and is quoted in the failure message (docs/testing.md).
"""

import copy
import itertools
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

SKIP = 77  # the exit code ctest reads as "skipped"

# How long a daemon may take to come up and to go down. Generous: a
# sanitizer build under a loaded CI machine is slow, and the policy front
# end drains requests in progress for up to 3 s on SIGTERM.
TIMEOUT_SCALE = float(os.environ.get("SPAMTRAPD_TIMEOUT_SCALE") or 1)
START_TIMEOUT = 20.0 * TIMEOUT_SCALE
STOP_TIMEOUT = 20.0 * TIMEOUT_SCALE


def scaled(seconds):
    """seconds stretched by $SPAMTRAPD_TIMEOUT_SCALE, for a timeout a test sets itself."""
    return seconds * TIMEOUT_SCALE


class HarnessError(AssertionError):
    """The daemon did not behave as a test harness can go on with (failed to start, to stop...)."""


def binary(name="SPAMTRAPD"):
    """Path of the binary in environment variable name (SPAMTRAPD, SPAMTRAPCTL)."""
    path = os.environ.get(name)
    if not path:
        raise HarnessError(f"${name} is not set: run the tests through ctest, or export it")
    if not os.access(path, os.X_OK):
        raise HarnessError(f"${name}={path} is not an executable file")
    return path


def command(name="SPAMTRAPD"):
    """The argv that runs binary(name): $SPAMTRAPD_WRAPPER's words (valgrind ...) in front, when set."""
    return shlex.split(os.environ.get("SPAMTRAPD_WRAPPER", "")) + [binary(name)]


def project_version():
    """The version CMake gives the programs (project(... VERSION x.y.z) in the top CMakeLists.txt)."""
    source = os.environ.get("SPAMTRAPD_SOURCE_DIR") or os.path.join(os.path.dirname(__file__), "..", "..")
    with open(os.path.join(source, "CMakeLists.txt")) as f:
        m = re.search(r"project\(spamtrapd VERSION (\S+)", f.read())
    if not m:
        raise HarnessError("no project(spamtrapd VERSION ...) in CMakeLists.txt")
    return m.group(1)


def reports(pid):
    """What sanitizers or valgrind reported about process pid: the non-empty files NAME.pid
    in $SPAMTRAPD_REPORT_DIR, as one text ("" when none or no folder)."""
    folder = os.environ.get("SPAMTRAPD_REPORT_DIR")
    if not folder or not os.path.isdir(folder):
        return ""
    out = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.endswith(f".{pid}") and os.path.getsize(path) > 0:
            with open(path, encoding="utf-8", errors="replace") as f:
                out.append(f"---- {path} ----\n{f.read()}")
    return "\n".join(out)


def free_port(host="127.0.0.1", family=socket.AF_INET):
    """A TCP port that nothing listens on right now (the kernel's pick)."""
    return free_ports(1, host, family)[0]


def free_ports(n, host="127.0.0.1", family=socket.AF_INET):
    """n different free TCP ports. All are held at once while picking: a port
    just released may be the kernel's next pick again."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(family, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def merge(base, override):
    """base with override merged in, recursively for dicts; lists and scalars are replaced."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def run_user():
    """The user the daemon switches to: spamtrapd refuses to serve as root, so
    tests run as root (CI) give it "nobody"; unprivileged runs need none."""
    return "nobody" if os.geteuid() == 0 else None


def give_to_run_user(path):
    """Let the daemon's user write in path (a temp folder of the test)."""
    user = run_user()
    if user:
        pw = pwd.getpwnam(user)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def make_config(workdir, overrides=None, roles=("trap", "sender"), milter=False):
    """A config dict for a daemon in workdir: test defaults, then overrides.

    roles: one policy listener on a free 127.0.0.1 port per role, unless
    overrides sets policy.listen itself. milter=True listens for the milter
    on a free port (inet:PORT@127.0.0.1); otherwise milter.listen is null.
    """
    ports = free_ports(len(roles) + 1)
    listen = [{"address": f"127.0.0.1:{port}", "role": role} for port, role in zip(ports, roles)]
    base = {
        "mode": "enforce",
        "milter": {"listen": f"inet:{ports[-1]}@127.0.0.1" if milter else None},
        "policy": {"listen": listen},
        "store": {"backend": "sqlite", "sqlite": {"path": os.path.join(workdir, "spamtrapd.db")}},
        "log": {"target": "stderr", "level": "debug"},
        "user": run_user(),
    }
    return merge(base, overrides)


def write_config(path, config):
    """Write config (a dict) as JSON to path; returns path."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    return path


def _tcp_target(address):
    """("127.0.0.1", 10666) from "127.0.0.1:10666", ("::1", 10666) from "[::1]:10666"."""
    host, _, port = address.rpartition(":")
    if host.startswith("["):
        return socket.AF_INET6, (host[1:-1], int(port))
    return socket.AF_INET, (host, int(port))


def connect(address, timeout=10.0):
    """A connected socket to a listener address as written in the config (host:port, [v6]:port, unix:PATH)."""
    if address.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target = address[5:]
    else:
        family, target = _tcp_target(address)
        s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout * TIMEOUT_SCALE)
    try:
        s.connect(target)
    except OSError:
        s.close()
        raise
    return s


class Spamtrapd:
    """One spamtrapd process with its own temporary folder, config and log.

    config: a dict merged over make_config()'s defaults. The process is
    started by start() (or by `with`), and stopped by stop(), which fails
    loudly if it does not exit cleanly in time (a sanitizer report also
    makes the exit code non-zero).
    """

    def __init__(self, config=None, roles=("trap", "sender"), milter=False, workdir=None):
        self.dir = workdir or tempfile.mkdtemp(prefix="spamtrapd-test.")
        give_to_run_user(self.dir)
        self.config = make_config(self.dir, config, roles, milter)
        self.config_path = write_config(os.path.join(self.dir, "spamtrapd.json"), self.config)
        self.log_path = os.path.join(self.dir, "spamtrapd.log")
        self.proc = None

    # ---- life cycle ----

    def start(self, timeout=START_TIMEOUT):
        """Start the daemon and wait until every policy listener accepts connections."""
        if self.running():
            raise HarnessError("spamtrapd is already running")
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen([*command(), "-f", "-c", self.config_path], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, cwd=self.dir)
        finally:
            log.close()
        self._wait_ready(time.monotonic() + timeout)
        return self

    def _wait_ready(self, deadline):
        pending = [l["address"] for l in self.config["policy"]["listen"] or []]
        while pending:
            if self.proc.poll() is not None:
                raise HarnessError(f"spamtrapd exited with {self.proc.returncode} while starting:\n"
                                   + self.failure_text(self.proc.pid))
            try:
                connect(pending[0], timeout=1.0).close()
                pending.pop(0)
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise HarnessError(f"spamtrapd did not listen on {pending[0]} in time:\n" + self.log_tail())
                time.sleep(0.05)

    def run_until_exit(self, *args, timeout=START_TIMEOUT):
        """Run the daemon (-f -c CONFIG args...) expecting it to exit by itself, as it does
        with -t or when it cannot start; returns the exit code (its output goes to the log)."""
        if self.running():
            raise HarnessError("spamtrapd is already running")
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen([*command(), "-f", "-c", self.config_path, *args], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, cwd=self.dir)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise HarnessError(f"spamtrapd did not exit within {timeout}s:\n"
                               + self.failure_text(proc.pid)) from None
        self.check_reports(proc.pid, f"spamtrapd exited with {proc.returncode}")
        return proc.returncode

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=STOP_TIMEOUT, expect_code=0):
        """SIGTERM, then wait for the PID. Kills with SIGKILL and raises if it takes
        longer than timeout; raises if the exit code is not expect_code."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise HarnessError(f"spamtrapd (pid {proc.pid}) did not stop within {timeout}s of SIGTERM; "
                                   "killed:\n" + self.failure_text(proc.pid))
        if expect_code is not None and proc.returncode != expect_code:
            raise HarnessError(f"spamtrapd exited with {proc.returncode}, expected {expect_code}:\n"
                               + self.failure_text(proc.pid))
        self.check_reports(proc.pid, f"spamtrapd exited with {proc.returncode}")
        return proc.returncode

    def kill(self):
        """SIGKILL without questions (clean-up after a failure)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def failure_text(self, pid):
        """The end of the log, and the sanitizer or valgrind reports of process pid if any."""
        report = reports(pid)
        tail = self.log_tail()
        return f"{tail}\n{report}" if report else tail

    def check_reports(self, pid, what):
        """Raise when a sanitizer or valgrind reported something about process pid."""
        report = reports(pid)
        if report:
            raise HarnessError(f"{what}, and left a sanitizer or valgrind report:\n{self.log_tail()}\n{report}")

    def restart(self):
        self.stop()
        return self.start()

    def rewrite_config(self, overrides=None, replace=None):
        """Write a new config file: the current one with overrides merged in, or replace as is
        (a dict, or a str written verbatim: e.g. broken JSON). Takes effect at reload() or restart()."""
        if isinstance(replace, str):
            with open(self.config_path, "w", encoding="utf-8") as f:
                f.write(replace)
            return
        self.config = replace if replace is not None else merge(self.config, overrides)
        write_config(self.config_path, self.config)

    def reload(self, overrides=None, replace=None, timeout=10.0):
        """Optionally rewrite the config (see rewrite_config), send SIGHUP, and wait for the
        daemon's verdict in the log. True: reloaded; False: the old config stays in force."""
        if overrides is not None or replace is not None:
            self.rewrite_config(overrides, replace)
        mark = self.log_mark()
        self.proc.send_signal(signal.SIGHUP)
        m = self.wait_for_log(r"configuration reloaded|reload failed", since=mark, timeout=timeout)
        return m.group(0) == "configuration reloaded"

    def cleanup(self):
        """Stop (or kill) the daemon and remove its folder, unless SPAMTRAPD_KEEP=1. A daemon
        that exited by itself is not judged by its exit code here, only by its reports."""
        try:
            if self.running():
                self.stop()
            elif self.proc is not None:
                self.check_reports(self.proc.pid, f"spamtrapd exited with {self.proc.returncode}")
        finally:
            self.kill()
            if os.environ.get("SPAMTRAPD_KEEP") != "1":
                shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        if not self.running():
            self.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.cleanup()
        else:  # keep the original failure; still never leave a process behind
            note = None
            if self.proc is not None and self.proc.poll() is not None:  # e.g. a closed connection: say why
                note = f"spamtrapd had exited with {self.proc.returncode}:\n" + self.failure_text(self.proc.pid)
            try:
                self.cleanup()
            except HarnessError as e:
                note = note or f"and at clean-up: {e}"
            if note and hasattr(exc, "add_note"):
                exc.add_note(note)
            elif note:
                print(note, file=sys.stderr)
        return False

    # ---- addresses ----

    def policy_address(self, role):
        """The address of the first policy listener with this role."""
        for l in self.config["policy"]["listen"]:
            if l.get("role", "full") == role:
                return l["address"]
        raise KeyError(f"no policy listener with role {role}")

    def policy_port(self, role):
        return _tcp_target(self.policy_address(role))[1][1]

    def milter_port(self):
        spec = self.config["milter"]["listen"]
        return int(spec.split(":", 1)[1].split("@", 1)[0])

    # ---- the log ----

    def log(self):
        """Everything the daemon (all its runs in this folder) wrote to stderr."""
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def log_mark(self):
        """A position in the log, for log(since=...) and wait_for_log(since=...)."""
        return os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0

    def log_since(self, mark):
        with open(self.log_path, "rb") as f:
            f.seek(mark)
            return f.read().decode("utf-8", errors="replace")

    def log_tail(self, lines=40):
        try:
            return "\n".join(self.log().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def count_log(self, pattern, since=0):
        return len(re.findall(pattern, self.log_since(since)))

    def wait_for_log(self, pattern, since=0, timeout=10.0):
        """The first match of regex pattern in the log after since; raises after timeout."""
        deadline = time.monotonic() + timeout * TIMEOUT_SCALE
        while True:
            m = re.search(pattern, self.log_since(since))
            if m:
                return m
            if time.monotonic() > deadline:
                raise HarnessError(f"no log line matching {pattern!r} within {timeout}s:\n" + self.log_tail())
            time.sleep(0.05)

    # ---- spamtrapctl ----

    def ctl(self, *args, check=True, timeout=30):
        """Run spamtrapctl -c CONFIG args...; returns the CompletedProcess (text). Raises when
        check and it exits non-zero, and always when it left a sanitizer or valgrind report."""
        argv = [*command("SPAMTRAPCTL"), "-c", self.config_path, *args]
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
            try:
                out, err = proc.communicate(timeout=timeout * TIMEOUT_SCALE)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
                raise HarnessError(f"spamtrapctl {' '.join(args)}: no exit within {timeout}s\n{err}") from None
        report = reports(proc.pid)
        if report or (check and proc.returncode != 0):
            raise HarnessError(f"spamtrapctl {' '.join(args)} exited with {proc.returncode}:\n{out}{err}{report}")
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)


class ConnectionClosed(Exception):
    """The policy server closed the connection instead of answering."""


_instances = itertools.count(1)


def new_instance():
    """A message identifier as Postfix's "instance" attribute: one per message."""
    return f"{os.getpid():x}.{int(time.time()):x}.{next(_instances):x}.0"


class PolicyClient:
    """One persistent connection to a policy listener, speaking as Postfix smtpd does.

    check(**attrs) sends one request and returns the action ("DUNNO",
    "550 5.7.1 ..."). Attributes not given get the realistic values below;
    an attribute given as None is left out. Each call is a new message (a
    new "instance") unless instance= is passed: pass the same instance to
    send several recipients of one message.
    """

    # What Postfix 3.7 sends at RCPT time, in its order (SMTPD_POLICY_README).
    DEFAULTS = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "protocol_name": "ESMTP",
        "helo_name": "mail.sender.test",
        "queue_id": "",
        "sender": "someone@sender.test",
        "recipient": "user@example.com",
        "recipient_count": "0",
        "client_address": "192.0.2.10",
        "client_name": "unknown",
        "reverse_client_name": "unknown",
        "instance": None,  # filled per call
        "sasl_method": "",
        "sasl_username": "",
        "sasl_sender": "",
        "size": "0",
        "ccert_subject": "",
        "ccert_issuer": "",
        "ccert_fingerprint": "",
        "ccert_pubkey_fingerprint": "",
        "encryption_protocol": "",
        "encryption_cipher": "",
        "encryption_keysize": "0",
        "etrn_domain": "",
        "stress": "",
        "client_port": "40000",
        "policy_context": "",
        "server_address": "127.0.0.1",
        "server_port": "25",
    }

    def __init__(self, address, timeout=10.0):
        self.address = address
        self.sock = connect(address, timeout)
        self.buf = b""

    @classmethod
    def encode(cls, attrs=None, **kw):
        """The request bytes for attrs over DEFAULTS (None drops an attribute)."""
        values = dict(cls.DEFAULTS)
        values["instance"] = new_instance()
        values.update(attrs or {})
        values.update(kw)
        lines = []
        for name, value in values.items():
            if value is None:
                continue
            value = str(value)
            if "\n" in value or "\n" in name:
                raise ValueError(f"a newline in attribute {name!r}: use send_raw() for malformed requests")
            lines.append(f"{name}={value}\n")
        return ("".join(lines) + "\n").encode("utf-8")

    def check(self, attrs=None, **kw):
        """Send one request, return the action: "DUNNO", "550 5.7.1 text", "DISCARD text"."""
        self.send_raw(self.encode(attrs, **kw))
        return self.read_action()

    def send_raw(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode("utf-8"))

    def read_reply(self):
        """The attributes of one reply (a dict); raises ConnectionClosed when the server closes."""
        while b"\n\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise ConnectionClosed(f"{self.address} closed the connection" +
                                       (f" after {self.buf!r}" if self.buf else ""))
            self.buf += chunk
        reply, self.buf = self.buf.split(b"\n\n", 1)
        out = {}
        for line in reply.decode("utf-8").split("\n"):
            name, sep, value = line.partition("=")
            if not sep:
                raise AssertionError(f"malformed reply line {line!r} from {self.address}")
            out[name] = value
        return out

    def read_action(self):
        reply = self.read_reply()
        if "action" not in reply:
            raise AssertionError(f"reply without action from {self.address}: {reply}")
        return reply["action"]

    def is_closed(self, timeout=5.0):
        """True when the server closes the connection within timeout (no reply comes first)."""
        old = self.sock.gettimeout()
        self.sock.settimeout(timeout * TIMEOUT_SCALE)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        finally:
            self.sock.settimeout(old)
        if data:
            self.buf += data
            return False
        return True

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class PolicyChecks:
    """unittest.TestCase mixin: policy clients closed at the end of the test,
    a trap hit on a daemon's trap listener, a check on its sender listener."""

    TRAP = "trap@example.com"

    def client(self, d, role):
        c = PolicyClient(d.policy_address(role))
        self.addCleanup(c.close)
        return c

    def trap_hit(self, d, sender, client_address):
        return self.client(d, "trap").check(sender=sender, recipient=self.TRAP, client_address=client_address)

    def sender_check(self, d, sender, client_address):
        return self.client(d, "sender").check(sender=sender, client_address=client_address)
