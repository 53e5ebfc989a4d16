"""Real redis-server processes for integration tests (Python 3 stdlib only).

RedisServer starts redis-server on a free loopback port with no persistence
(--save "" --appendonly no) in a folder of its own, waits until it answers
PING, and stops it by PID (SIGTERM, SIGKILL, or SIGSTOP/SIGCONT to make it
hang). start() again brings it back on the same port, empty. A replica is a
RedisServer with replicaof=(host, port); RedisSentinel runs
`redis-server sentinel.conf --sentinel` monitoring one master;
FakeSentinel answers SENTINEL get-master-addr-by-name with whatever a test
wants (an out-of-date or malformed answer a real Sentinel will not give on
cue). command() speaks just enough RESP to send a command and read its
answer.

A missing redis-server is a failure, not a skip: the tests need real Redis
and CI installs it.

    import redis_harness as rh

    with rh.RedisServer(workdir) as r:
        r.command("SET", "k", "v")
        r.stop(signal.SIGKILL)
        r.start()  # same port, no data
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import spamtrapd_harness as sh

START_TIMEOUT = 10.0


class RedisError(Exception):
    """An error reply (-ERR ...) from Redis."""


def server_binary():
    path = shutil.which("redis-server")
    if not path:
        raise AssertionError("redis-server is not installed (Debian: apt-get install redis-server)")
    return path


def _encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class _Reader:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("redis closed the connection")
        self.buf += chunk

    def line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exact(self, n):
        while len(self.buf) < n + 2:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def reply(self):
        line = self.line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.exact(n).decode("utf-8", "replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise ConnectionError(f"unexpected RESP line {line!r}")


def command(port, *args, host="127.0.0.1", timeout=2.0):
    """Send one command on a new connection and return the answer: str, int, None or a list.
    Raises RedisError for an error reply, OSError when nothing answers."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(_encode(args))
        r = _Reader(s).reply()
    if isinstance(r, RedisError):
        raise r
    return r


def ping(port, timeout=0.5):
    try:
        return command(port, "PING", timeout=timeout) == "PONG"
    except (OSError, RedisError):
        return False


def wait_until(check, timeout, what, interval=0.1):
    """Poll check() until it returns something true; returns that, raises AssertionError after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class RedisServer:
    """One redis-server on 127.0.0.1:port (a free one unless given), files under workdir/name."""

    def __init__(self, workdir, name="redis", port=None, replicaof=None, extra=()):
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.name = name
        self.port = port or sh.free_port()
        self.replicaof = replicaof
        self.extra = list(extra)
        self.log_path = os.path.join(self.dir, "redis.log")
        self.proc = None

    def argv(self):
        # A replica syncs at once, not after the default 5 s wait for more replicas.
        argv = [server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.dir, "--repl-diskless-sync-delay", "0"]
        if self.replicaof:
            argv += ["--replicaof", self.replicaof[0], str(self.replicaof[1])]
        return argv + self.extra

    def start(self, timeout=START_TIMEOUT):
        """Start (again, on the same port) and wait until it answers PING."""
        if self.running():
            raise AssertionError(f"{self.name} is already running")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         cwd=self.dir)
        deadline = time.monotonic() + timeout
        while not ping(self.port):
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode} while starting:\n"
                                     + self.log_tail())
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"{self.name} did not answer on port {self.port}:\n" + self.log_tail())
            time.sleep(0.05)
        # The port was free when picked, not when the server bound it: another test's server may
        # have taken it meanwhile (ours then exits, EADDRINUSE), and its PONG would make this test
        # run against a server it does not own (whose test may flush it, or stop it mid-test).
        pid, ours = self.info("server").get("process_id"), str(self.proc.pid)
        if pid != ours:
            self.kill()
            raise AssertionError(f"{self.name}: port {self.port} is answered by another server (pid {pid}, "
                                 f"ours {ours}): a port race with another test; run it again")
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        """Send sig (SIGTERM, SIGKILL) to the PID and wait for it to exit."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill(self):
        self.stop(signal.SIGKILL)

    def pause(self):
        """SIGSTOP: the server keeps its sockets but answers nothing (a hung Redis)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def command(self, *args, timeout=2.0):
        return command(self.port, *args, timeout=timeout)

    def info(self, section):
        """INFO section as a dict."""
        out = {}
        for line in self.command("INFO", section).splitlines():
            key, sep, value = line.partition(":")
            if sep:
                out[key] = value
        return out

    def log_tail(self, lines=30):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self):
        if not self.running():
            self.start()
        return self

    def __exit__(self, *exc):
        self.kill()
        return False


class RedisSentinel(RedisServer):
    """A Sentinel watching one master (quorum 1), with short timeouts so that a test fails over in seconds."""

    def __init__(self, workdir, master_port, master_name="mymaster", name="sentinel", down_after_ms=1000,
                 failover_timeout_ms=6000):
        super().__init__(workdir, name=name)
        self.master_name = master_name
        self.conf = os.path.join(self.dir, "sentinel.conf")
        with open(self.conf, "w", encoding="utf-8") as f:
            f.write(f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
                    f"sentinel monitor {master_name} 127.0.0.1 {master_port} 1\n"
                    f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
                    f"sentinel failover-timeout {master_name} {failover_timeout_ms}\n"
                    f"sentinel parallel-syncs {master_name} 1\n")

    def argv(self):
        return [server_binary(), self.conf, "--sentinel"]

    def master_addr(self):
        """(host, port) the Sentinel names for its master, or None."""
        try:
            r = self.command("SENTINEL", "get-master-addr-by-name", self.master_name)
        except (OSError, RedisError):
            return None
        return (r[0], int(r[1])) if r else None

    def replicas(self):
        """The replicas the Sentinel knows, each a dict of its fields."""
        rows = self.command("SENTINEL", "replicas", self.master_name)
        return [dict(zip(row[0::2], row[1::2])) for row in rows]


class FakeSentinel:
    """A loopback server answering every SENTINEL command with answer, PING with PONG.

    answer: ("host", port) for an address, None for "no such master", a str
    for an error reply, or bytes sent as they are. asked counts the SENTINEL
    commands received.
    """

    def __init__(self, answer):
        self.answer = answer
        self.asked = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _reply(self):
        a = self.answer
        if a is None:
            return b"*-1\r\n"
        if isinstance(a, bytes):
            return a
        if isinstance(a, str):
            return b"-" + a.encode() + b"\r\n"
        return _encode([a[0], str(a[1])])

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with conn:
                conn.settimeout(5)
                reader = _Reader(conn)
                try:
                    while True:
                        cmd = reader.reply()
                        if isinstance(cmd, list) and cmd and cmd[0].upper() == "SENTINEL":
                            self.asked += 1
                            conn.sendall(self._reply())
                        else:
                            conn.sendall(b"+PONG\r\n")
                except (OSError, ConnectionError, ValueError):
                    pass

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() in the thread
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)


class RecoveryChecks(sh.PolicyChecks):
    """unittest.TestCase mixin for tests where the store comes and goes:
    retry until a trap hit is recorded, or until a sender is rejected.
    Subclasses set REJECT_TEXT (their blocklist.reject) and RECOVERY_TIMEOUT."""

    REJECT_TEXT = None
    RECOVERY_TIMEOUT = 20.0

    def wait_recorded(self, d, sender, client_address, since):
        """Trap hits at d until its log says the store recorded one (the store may still be backing off)."""
        def recorded():
            self.trap_hit(d, sender, client_address)
            return d.count_log(r"blocklisted=" + sender.replace(".", r"\."), since) > 0
        wait_until(recorded, self.RECOVERY_TIMEOUT, f"a recorded trap hit of {sender}", interval=0.2)

    def wait_rejected(self, d, sender, client_address):
        wait_until(lambda: self.sender_check(d, sender, client_address) == self.REJECT_TEXT,
                   self.RECOVERY_TIMEOUT, f"{sender} rejected", interval=0.2)


def store_override(server, prefix):
    """spamtrapd's store section on server, keys under prefix: sh.merge it into a config."""
    return {"store": {"backend": "redis", "redis": {"host": "127.0.0.1", "port": server.port, "prefix": prefix}}}


def start_server(case=None):
    """A redis-server in a folder of its own, started. With a TestCase, stopped and removed at the
    end of its test; without one (a class's), the caller stops it and removes the folder.
    Returns (server, folder)."""
    folder = tempfile.mkdtemp(prefix="spamtrapd-redis.")
    server = RedisServer(folder).start()
    if case is not None:
        case.addCleanup(shutil.rmtree, folder, True)
        case.addCleanup(server.kill)
    return server, folder


class ClassRedis:
    """Mixin for a unittest.TestCase: one redis-server for the whole class (cls.server, cls.port),
    and store_settings() with a fresh key prefix for each test, which keeps them apart on it."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.rdir = tempfile.mkdtemp(prefix="spamtrapd-redis.")
        cls.server = RedisServer(cls.rdir).start()
        cls.port = cls.server.port

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.rdir, True)
        super().tearDownClass()

    def store_settings(self):
        return {"backend": "redis",
                "redis": {"host": "127.0.0.1", "port": self.port, "prefix": f"t{id(self)}:{time.monotonic()}:"}}
