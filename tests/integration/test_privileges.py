"""Privileges and exposure (issue 7, hardening): what spamtrapd lets others reach or change.

- Listeners: the built-in defaults and the shipped conf/spamtrapd.json bind
  loopback only, every listener, the milter's too. Checked in a network
  namespace of its own (unshare --net), so the fixed default ports never
  meet another daemon on this host, and the sockets the kernel lists there
  are the daemon's alone.
- policy.allow: with the default list a listener on every address still
  refuses clients from other hosts (IPv4 and IPv6 addresses on the
  namespace's loopback pose as them), and logs it. test_policy.py covers
  a custom list and unix sockets.
- Warnings (config.warnings): a config, traps.files or whitelist.files file
  that someone other than root and the service user may change (writable
  by everyone, in a folder writable by everyone, or owned by another user)
  gives one line naming the file and its mode, printed by spamtrapd -t and
  logged at start and at every reload; so do a milter.listen on a
  non-loopback address (policy.allow does not guard the milter) and unix
  socket modes writable by everyone. A proper setup gives none.
- The milter's unix socket gets milter.socket_owner/group/mode as the policy
  sockets do (test_policy.py has those).
"""

import grp
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

import spamtrapd_harness as sh
from milter_client import MilterClient

TRAP = "trap@example.com"
IS_ROOT = os.geteuid() == 0
RUN_USER = sh.run_user()
IN_NETNS = os.environ.get("SPAMTRAPD_TEST_NETNS") == "1"
# Addresses the namespace's loopback gets, to pose as other hosts.
OTHER_V4, OTHER_V6 = "192.0.2.1", "2001:db8::1"


def other_user():
    """A user that is neither root nor the service user, to own files."""
    service = pwd.getpwnam(RUN_USER).pw_uid if RUN_USER else os.geteuid()
    for name in ("daemon", "bin", "sys", "games", "man"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        if pw.pw_uid not in (0, service):
            return pw
    raise unittest.SkipTest("no system user other than root and the service user")


class Warnings(unittest.TestCase):
    def setUp(self):
        self.d = sh.Spamtrapd({"traps": {"addresses": [TRAP]}})
        self.addCleanup(self.d.cleanup)

    def check(self):
        """spamtrapd -t: (exit code, warning lines on stderr)."""
        r = subprocess.run([*sh.command(), "-t", "-c", self.d.config_path], capture_output=True, text=True, timeout=30)
        self.assertIn("is valid", r.stdout)
        return r.returncode, re.findall(r"(?m)^spamtrapd: warning: (.*)$", r.stderr)

    def list_file(self, name, text, folder=None):
        folder = folder or self.d.dir
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(path, 0o644)
        return path

    def test_a_proper_setup_gives_none(self):
        self.list_file("traps.txt", "trap2@example.com\n")
        self.list_file("white.txt", "example.org\n")
        self.d.rewrite_config({"traps": {"files": ["traps.txt"]}, "whitelist": {"files": ["white.txt"]}})
        self.assertEqual(self.check(), (0, []))
        self.d.start()
        self.d.stop()
        self.assertNotIn("warning:", self.d.log())

    def test_world_writable_config_file(self):
        path = os.path.realpath(self.d.config_path)
        os.chmod(path, 0o666)
        line = f"config file {path} is writable by everyone (mode 0666)"
        self.assertEqual(self.check(), (0, [line]))
        self.d.start()
        self.d.wait_for_log(r"warning: " + re.escape(line))
        self.assertEqual(self.d.count_log(re.escape(line)), 1)
        mark = self.d.log_mark()
        self.assertTrue(self.d.reload())  # every reload says it again, while it is true
        self.assertEqual(self.d.count_log(re.escape(line), since=mark), 1)
        os.chmod(path, 0o644)
        mark = self.d.log_mark()
        self.assertTrue(self.d.reload())
        self.assertNotIn("warning:", self.d.log_since(mark))
        self.d.stop()

    def test_world_writable_list_files_and_folders(self):
        traps = self.list_file("traps.txt", "trap2@example.com\n")
        os.chmod(traps, 0o646)
        open_dir = os.path.join(self.d.dir, "open")
        white = self.list_file("white.txt", "example.org\n", open_dir)
        os.chmod(open_dir, 0o777)
        sticky = os.path.join(self.d.dir, "sticky")
        self.list_file("white2.txt", "example.net\n", sticky)
        os.chmod(sticky, 0o1777)  # like /tmp: others cannot replace a file that is not theirs
        self.d.rewrite_config({"traps": {"files": ["traps.txt"]},
                               "whitelist": {"files": ["open/white.txt", "sticky/white2.txt"]}})
        real = os.path.realpath
        self.assertEqual(sorted(self.check()[1]), sorted([
            f"traps.files {real(traps)} is writable by everyone (mode 0646)",
            f"whitelist.files {real(white)}: its folder {real(open_dir)} is writable by everyone (mode 0777)",
        ]))

    @unittest.skipUnless(IS_ROOT, "chown needs root")
    def test_list_file_owned_by_another_user(self):
        pw = other_user()
        traps = self.list_file("traps.txt", "trap2@example.com\n")
        os.chown(traps, pw.pw_uid, pw.pw_gid)
        # Owned by the service user (the harness gives it the test folder) or by root: fine.
        white = self.list_file("white.txt", "example.org\n")
        sh.give_to_run_user(white)
        self.d.rewrite_config({"traps": {"files": ["traps.txt"]}, "whitelist": {"files": ["white.txt"]}})
        line = (f"traps.files {os.path.realpath(traps)} is owned by user {pw.pw_name}, neither root nor the user "
                "spamtrapd runs as (mode 0644)")
        self.assertEqual(self.check(), (0, [line]))
        self.d.start()
        self.d.wait_for_log(r"warning: " + re.escape(line))
        self.d.stop()

    @unittest.skipUnless(IS_ROOT, "chown needs root")
    def test_folder_owned_by_another_user(self):
        pw = other_user()
        folder = os.path.join(self.d.dir, "theirs")
        traps = self.list_file("traps.txt", "trap2@example.com\n", folder)
        os.chown(folder, pw.pw_uid, pw.pw_gid)
        self.d.rewrite_config({"traps": {"files": ["theirs/traps.txt"]}})
        self.assertEqual(self.check()[1], [
            f"traps.files {os.path.realpath(traps)}: its folder {os.path.realpath(folder)} is owned by user "
            f"{pw.pw_name}, neither root nor the user spamtrapd runs as (mode 0755)"])

    def test_milter_on_other_addresses(self):
        for spec, warned in (("inet:8890", True), ("inet:8890@0.0.0.0", True), ("inet6:8890@::", True),
                             ("inet:8890@mx.example.com", True), ("inet:8890@127.0.0.1", False),
                             ("inet:8890@localhost", False), ("inet6:8890@::1", False)):
            with self.subTest(spec=spec):
                self.d.rewrite_config({"milter": {"listen": spec}})
                want = [f"milter.listen {spec} can be reached from other hosts, and policy.allow does not apply "
                        "to the milter: listen on 127.0.0.1 or a unix socket, or firewall the port"]
                self.assertEqual(self.check(), (0, want if warned else []))

    def test_unix_socket_modes_for_everyone(self):
        sock = os.path.join(self.d.dir, "p.sock")
        self.d.rewrite_config({"policy": {"listen": [{"address": f"unix:{sock}"}], "socket_mode": "0666"},
                               "milter": {"listen": f"unix:{self.d.dir}/m.sock", "socket_mode": "0662"}})
        self.assertEqual(sorted(self.check()[1]), [
            "milter.socket_mode 0662 lets every local user connect to the milter",
            "policy.socket_mode 0666 lets every local user connect to the policy service"])
        self.d.rewrite_config({"policy": {"socket_mode": "0660"}, "milter": {"socket_mode": "0660"}})
        self.assertEqual(self.check(), (0, []))


class MilterUnixSocket(unittest.TestCase):
    """milter.socket_owner, socket_group and socket_mode, as test_policy.py checks them for policy sockets."""

    @unittest.skipUnless(IS_ROOT, "chown to another user needs root")
    def test_owner_group_mode(self):
        workdir = tempfile.mkdtemp(prefix="spamtrapd-test.")
        path = os.path.join(workdir, "milter.sock")
        d = sh.Spamtrapd({"traps": {"addresses": [TRAP]},
                          "milter": {"listen": f"unix:{path}", "socket_owner": "nobody", "socket_group": "nogroup",
                                     "socket_mode": "0660"}}, workdir=workdir)
        self.addCleanup(d.cleanup)
        d.start()
        deadline = time.monotonic() + 10
        while not os.path.exists(path):  # libmilter binds on its own thread
            self.assertLess(time.monotonic(), deadline, d.log_tail())
            time.sleep(0.05)
        st = os.stat(path)
        self.assertEqual((st.st_uid, st.st_gid, st.st_mode & 0o777),
                         (pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid, 0o660))
        with MilterClient.open(f"unix:{path}") as m:
            m.negotiate()
            m.connect("client.example", "192.0.2.30")
            m.helo("client.example")
            self.assertEqual(m.mail("<someone@example.net>").action, "continue")
        d.stop()


# ---- in a network namespace of its own -----------------------------------------------------------


def listening(proc_pid):
    """The TCP sockets in LISTEN state in this network namespace, as {(address, port)}."""
    out = set()
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        with open(f"/proc/{proc_pid}/net/{name}", encoding="ascii") as f:
            next(f)
            for line in f:
                local, state = line.split()[1], line.split()[3]
                if state != "0A":
                    continue
                hexaddr, hexport = local.split(":")
                raw = bytes.fromhex(hexaddr)
                # /proc writes each 32-bit word in host (little-endian) order
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                out.add((socket.inet_ntop(family, raw), int(hexport, 16)))
    return out


def is_loopback(address):
    return address == "::1" or address.startswith("127.")


@unittest.skipUnless(IN_NETNS, "runs inside the namespace that InNetworkNamespace makes")
class NetnsChecks(unittest.TestCase):
    def run_daemon(self, config_path, *overrides):
        """spamtrapd -f -c config_path -o ... as a bare process (the harness would look for its listeners
        in the config, which is what is under test here)."""
        self.workdir = tempfile.mkdtemp(prefix="spamtrapd-test.")
        sh.give_to_run_user(self.workdir)
        log = open(os.path.join(self.workdir, "log"), "wb")
        self.addCleanup(log.close)
        args = [*sh.command(), "-f", "-c", config_path, "-o", f"store.sqlite.path={self.workdir}/st.db",
                "-o", f"user={RUN_USER}" if RUN_USER else "user=null"]
        for o in overrides:
            args += ["-o", o]
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.workdir)
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait()))
        return proc

    def log(self):
        with open(os.path.join(self.workdir, "log"), encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_listening(self, proc, want):
        deadline = time.monotonic() + sh.START_TIMEOUT
        while listening(proc.pid) != want:
            self.assertIsNone(proc.poll(), "spamtrapd exited:\n" + self.log())
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        got = listening(proc.pid)
        self.assertEqual([a for a in got if not is_loopback(a[0])], [], "bound beyond loopback")
        self.assertEqual(got, want)

    def stop(self, proc):
        # Not before "ready" and a moment after it: until the main thread waits for signals,
        # libmilter's own signal thread may take the SIGTERM (spamtrapd(8) SIGNALS),
        # a window that valgrind (make valgrind) widens to tens of milliseconds.
        deadline = time.monotonic() + sh.START_TIMEOUT
        while "notice: ready" not in self.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(sh.STOP_TIMEOUT), 0, self.log())

    def test_builtin_defaults_bind_loopback_only(self):
        path = os.path.join(tempfile.mkdtemp(prefix="spamtrapd-test."), "empty.json")
        sh.write_config(path, {"traps": {"addresses": [TRAP]}})
        proc = self.run_daemon(path)
        self.wait_listening(proc, {("127.0.0.1", 10666), ("127.0.0.1", 10667)})  # and no milter
        self.stop(proc)

    def test_shipped_config_binds_loopback_only(self):
        shipped = os.path.join(os.environ["SPAMTRAPD_SOURCE_DIR"], "conf", "spamtrapd.json")
        proc = self.run_daemon(shipped)
        self.wait_listening(proc, {("127.0.0.1", 8890), ("127.0.0.1", 10666), ("127.0.0.1", 10667)})
        self.stop(proc)

    def refused(self, source, port):
        """Connect from source to its own address (the listener takes every address) and send a request:
        True when the server closes the connection without an answer."""
        family = socket.AF_INET6 if ":" in source else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.bind((source, 0))
            s.connect((source, port))
            try:
                s.sendall(sh.PolicyClient.encode())
                return s.recv(4096) == b""
            except ConnectionResetError:
                return True
            except socket.timeout:
                return False

    def test_default_allow_refuses_other_hosts(self):
        """Listening on every address, the default policy.allow (loopback) still keeps other hosts out."""
        with sh.Spamtrapd({"traps": {"addresses": [TRAP]},
                           "policy": {"listen": [{"address": "0.0.0.0:10666", "role": "full"},
                                                 {"address": "[::]:10666", "role": "full"}]}}) as d:
            for source in (OTHER_V4, OTHER_V6):
                with self.subTest(source=source):
                    time.sleep(1.1)  # refusals are logged at most once a second
                    mark = d.log_mark()
                    self.assertTrue(self.refused(source, 10666), "a client of another host was served")
                    d.wait_for_log(r"refused connection from %s on \S+: not in policy\.allow" % re.escape(source),
                                   since=mark)
            for address in ("127.0.0.1:10666", "[::1]:10666"):
                with sh.PolicyClient(address) as c:
                    self.assertEqual(c.check(sender="a@good.test"), "DUNNO")


class InNetworkNamespace(unittest.TestCase):
    """Runs NetnsChecks in a new network namespace with only a loopback, which also carries
    OTHER_V4 and OTHER_V6 to pose as other hosts."""

    @unittest.skipUnless(IS_ROOT, "a network namespace needs root")
    def test_in_own_network_namespace(self):
        setup = (f"ip link set lo up && ip addr add {OTHER_V4}/32 dev lo && "
                 f"ip -6 addr add {OTHER_V6}/128 dev lo nodad && exec \"$0\" \"$@\"")
        probe = subprocess.run(["unshare", "--net", "--", "true"], capture_output=True, text=True)
        if probe.returncode != 0:
            self.skipTest(f"no network namespaces here: {probe.stderr.strip()}")
        r = subprocess.run(["unshare", "--net", "--", "sh", "-c", setup, sys.executable, os.path.abspath(__file__),
                            "-v", "NetnsChecks"], capture_output=True, text=True, timeout=240,
                           env=dict(os.environ, SPAMTRAPD_TEST_NETNS="1"))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertRegex(r.stderr, r"Ran 3 tests")
        self.assertNotIn("skipped", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
