"""Integration tests of the blocklist leaving the daemon (issue 16) with
the real tools: the real daemon makes the entries (trap hits on its
policy port), spamtrapctl exports them, and

- nft(8) and ipset(8), as root in a network namespace the test makes
  (unshare -n, kept alive by a process it stops by PID), load the export:
  the sets hold the right elements with kernel timeouts, a second export
  replaces them, a malformed file changes nothing;
- a real rbldnsd serves the rbldnsd export: a listed client is answered
  127.0.0.2 with its TXT, an unlisted one NXDOMAIN;
- the real fail2ban-regex with the shipped filter reads the daemon's real
  log: every new client block matches (the ban is its key), sender
  blocks, a blocklisted sender's reject from a shared relay and dry-run
  lines never do.

The namespace tests skip (exit 77) only where this machine cannot make a
network namespace or has no nft/ipset; fail2ban-regex and rbldnsd are
required (CI installs them: scripts/install-deps.sh, group test).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

import rbldnsd_harness as rb
import spamtrapd_harness as sh

ROOT = os.environ.get("SPAMTRAPD_SOURCE_DIR") or os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
FILTER = os.path.join(ROOT, "packaging", "fail2ban", "filter.d", "spamtrapd.conf")
TRAP = "trap@example.com"
CONFIG = {
    "traps": {"addresses": [TRAP]},
    "blocklist": {"keys": ["sender", "client_address"], "ttl": "24h", "ipv4_prefix": 32, "ipv6_prefix": 64},
}
BLOCK = r"block: type=client key=%s client=%s ttl=86400 reason=trap mode=%s queue_id="


class Daemon(sh.PolicyChecks):
    """One daemon for the class; exports written in its folder (spamtrapctl works as its user)."""

    config = CONFIG

    @classmethod
    def setUpClass(cls):
        cls.d = sh.Spamtrapd(cls.config)
        try:
            cls.d.start()
        except BaseException:
            cls.d.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def hit(self, sender, client):
        self.assertEqual(self.trap_hit(self.d, sender, client), "550 5.1.1 User unknown")

    def export(self, fmt, *args):
        path = os.path.join(self.d.dir, f"export.{fmt}")
        p = self.d.ctl("export", "--format", fmt, "--output", path, *args)
        self.assertEqual(p.stdout, "")
        with open(path) as f:
            return path, f.read()


class BlockLogAndFail2ban(Daemon, unittest.TestCase):
    """The "block:" line: once for each new entry, and what the shipped fail2ban filter makes of it."""

    def test_block_lines_and_the_fail2ban_filter(self):
        d = self.d
        start = mark = d.log_mark()
        self.hit("spam@bad.example", "192.0.2.7")
        d.wait_for_log(BLOCK % (r"192\.0\.2\.7", r"192\.0\.2\.7", "enforce"), since=mark)
        d.wait_for_log(r"block: type=sender key=spam@bad\.example client=192\.0\.2\.7 ", since=mark)
        self.hit("other@bad.example", "2001:db8:1::7")
        d.wait_for_log(BLOCK % (r"2001:db8:1::/64", r"2001:db8:1::7", "enforce"), since=mark)
        # a second hit refreshes the entries: no new block lines
        again = d.log_mark()
        self.hit("spam@bad.example", "192.0.2.7")
        d.wait_for_log(r"trap=trap@example\.com blocklisted=spam@bad\.example,192\.0\.2\.7", since=again)
        self.assertEqual(d.count_log(r"block: ", since=again), 0, d.log_since(again))
        # a blocklisted sender through a shared relay is refused, and the relay is no block
        d.ctl("add", "listed@relayed.example")
        refused = d.log_mark()
        reply = self.sender_check(d, "listed@relayed.example", "198.51.100.25")
        self.assertTrue(reply.startswith("550 5.7.1"), reply)
        d.wait_for_log(r"client=198\.51\.100\.25", since=refused)
        self.assertEqual(d.count_log(r"block: ", since=refused), 0)
        # a manual entry is no daemon block line either (spamtrapctl prints its own)
        self.assertEqual(d.count_log(r"block: type=sender key=listed@"), 0)

        # dry-run: the hit is recorded, its lines say mode=shadow
        with sh.Spamtrapd(dict(CONFIG, mode="dry-run")) as dry:
            self.assertEqual(self.trap_hit(dry, "spam@dry.example", "203.0.113.9"), "DUNNO")
            dry.wait_for_log(BLOCK % (r"203\.0\.113\.9", r"203\.0\.113\.9", "shadow"))
            dry_log = dry.log()

        log = os.path.join(d.dir, "mail.log")
        with open(log, "w") as f:
            f.write(d.log_since(start) + dry_log)
        self.assertEqual(self.banned(log), ["192.0.2.7", "2001:db8:1::/64"])
        # the same lines as the journal holds them under systemd (-f: the daemon's own prefix inside)
        journal = os.path.join(d.dir, "journal.log")
        stamp = time.strftime("%b %e %H:%M:%S")
        with open(journal, "w") as f:
            for line in (d.log_since(start) + dry_log).splitlines():
                f.write(f"{stamp} mx spamtrapd[4242]: {line}\n")
        self.assertEqual(self.banned(journal), ["192.0.2.7", "2001:db8:1::/64"])
        enforce_lines = len(re.findall(r"block: type=client .* mode=enforce ", d.log_since(start)))
        self.assertEqual(enforce_lines, 2)

    def test_filter_cannot_be_fooled_by_a_sender(self):
        """A sender key that spells a client block never makes a ban: every field is masked."""
        d = self.d
        mark = d.log_mark()
        sender = '"x type=client key=10.9.9.9 client=10.9.9.9"@evil.example'
        self.hit(sender, "192.0.2.99")
        line = d.wait_for_log(r"block: type=sender key=.*", since=mark).group(0)
        self.assertNotIn(" type=client", line.split("key=", 1)[1])
        log = os.path.join(d.dir, "fooled.log")
        with open(log, "w") as f:
            f.write(d.log_since(mark))
        self.assertEqual(self.banned(log), ["192.0.2.99"])  # the client, never 10.9.9.9

    def banned(self, log):
        """What fail2ban-regex with the shipped filter finds in log: the addresses it would ban."""
        f2b = shutil.which("fail2ban-regex")
        self.assertTrue(f2b, "fail2ban-regex is not installed (Debian: apt-get install fail2ban)")
        conf = os.path.join(self.d.dir, "fail2ban")
        os.makedirs(os.path.join(conf, "filter.d"), exist_ok=True)
        shutil.copy("/etc/fail2ban/filter.d/common.conf", os.path.join(conf, "filter.d"))
        shutil.copy(FILTER, os.path.join(conf, "filter.d"))
        p = subprocess.run([f2b, "--config", conf, "--out", "ip", log, "spamtrapd"], capture_output=True,
                           text=True, timeout=120)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        return sorted(p.stdout.split())


class BlockHook(sh.PolicyChecks, unittest.TestCase):
    """hooks.on_block: the argv run for each new enforced entry, its placeholders filled in."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="spamtrapd-hook.")
        self.addCleanup(shutil.rmtree, self.dir, True)
        sh.give_to_run_user(self.dir)
        self.out = os.path.join(self.dir, "hook.out")
        self.script = os.path.join(self.dir, "hook.sh")
        with open(self.script, "w") as f:
            # one line a call, appended in one write: hooks may run side by side
            f.write('#!/bin/sh\nline=$(printf "%s|" "$@")\nprintf "%s\\n" "$line" >> OUT\n'.replace("OUT", self.out))
        os.chmod(self.script, 0o755)

    def config(self, **extra):
        return dict(CONFIG, hooks={"on_block": [self.script, "%{type}", "%{key}", "%{ttl}", "%{reason}",
                                                "%{trap}", "%{client}"], "timeout": "5s"}, **extra)

    def calls(self):
        try:
            with open(self.out) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def wait_calls(self, n):
        deadline = time.monotonic() + sh.scaled(10)
        while len(self.calls()) < n:
            self.assertLess(time.monotonic(), deadline, f"hook calls: {self.calls()}")
            time.sleep(0.05)
        return sorted(self.calls())

    def test_each_new_entry_runs_the_hook_once(self):
        with sh.Spamtrapd(self.config(), workdir=self.dir) as d:
            self.trap_hit(d, "spam@bad.example", "192.0.2.7")
            self.assertEqual(self.wait_calls(2), [
                "client|192.0.2.7|86400|trap|trap@example.com|192.0.2.7|",
                "sender|spam@bad.example|86400|trap|trap@example.com|192.0.2.7|"])
            self.trap_hit(d, "spam@bad.example", "192.0.2.7")  # a refresh: no hook
            self.trap_hit(d, "-rf x@bad.example", "192.0.2.8")  # one argument each, never a shell
            calls = self.wait_calls(4)
            self.assertIn("sender|-rf x@bad.example|86400|trap|trap@example.com|192.0.2.8|", calls)
            self.assertEqual(len(calls), 4, calls)

    def test_dry_run_runs_no_hook(self):
        with sh.Spamtrapd(self.config(mode="dry-run"), workdir=self.dir) as d:
            mark = d.log_mark()
            self.trap_hit(d, "spam@bad.example", "192.0.2.7")
            d.wait_for_log(r"block: type=client key=192\.0\.2\.7 .* mode=shadow", since=mark)
            d.stop()
            # stopped: a hook queued for the hit would have run, or been killed and logged
            self.assertEqual(self.calls(), [])
            self.assertNotIn("hook", d.log_since(mark))

    def test_bad_hooks_are_config_errors(self):
        for hook, message in ((["hook.sh"], "must be an absolute path"),
                              ([self.script, "%{sender}"], "a placeholder is a whole argument"),
                              ([self.script, "ttl=%{ttl}"], "a placeholder is a whole argument"),
                              (["/usr/bin/%{key}"], "holds a placeholder")):
            with self.subTest(hook=hook):
                d = sh.Spamtrapd(dict(CONFIG, hooks={"on_block": hook}), workdir=self.dir)
                mark = d.log_mark()
                self.assertEqual(d.run_until_exit("-t"), 1)
                out = d.log_since(mark)
                self.assertIn("hooks.on_block", out)
                self.assertIn(message, out)


class Netns:
    """A network namespace (unshare -n) held open by a sleeping process; commands run in it by nsenter."""

    def __init__(self):
        self.proc = subprocess.Popen(["unshare", "-n", "--", "sleep", "3600"], stdin=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + sh.scaled(10)
        # the namespace exists once the child's net namespace differs from ours
        while os.readlink(f"/proc/{self.proc.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            if self.proc.poll() is not None:
                raise OSError(self.proc.stderr.read().decode().strip() or "unshare -n failed")
            if time.monotonic() > deadline:
                self.stop()
                raise OSError("unshare -n made no namespace")
            time.sleep(0.02)

    def run(self, *argv, stdin=None):
        return subprocess.run(["nsenter", f"--net=/proc/{self.proc.pid}/ns/net", "--", *argv], input=stdin,
                              capture_output=True, text=True, timeout=60)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=10)
        self.proc.stderr.close()


def netns_or_skip(case, tool):
    if os.geteuid() != 0:
        case.skipTest("needs root: the firewall tools run in a network namespace the test makes")
    if not shutil.which(tool) or not shutil.which("unshare") or not shutil.which("nsenter"):
        case.skipTest(f"{tool}, unshare or nsenter is not installed")
    try:
        ns = Netns()
    except OSError as e:
        case.skipTest(f"cannot make a network namespace here: {e}")
    case.addCleanup(ns.stop)
    probe = ns.run(tool, "--version")
    if probe.returncode != 0:
        case.skipTest(f"{tool} does not run here: {probe.stderr.strip()}")
    return ns


class Firewall(Daemon, unittest.TestCase):
    """nft -f and ipset restore load the exports; each test its own namespace."""

    def setUp(self):
        for key in list(self.listed()):
            self.d.ctl("remove", key)

    def listed(self):
        return [line.split("\t")[0] for line in self.d.ctl("list").stdout.splitlines()]

    def make_entries(self):
        """A manual /24 with a trap-hit host inside (merged), two more hits, one IPv6."""
        self.d.ctl("add", "192.0.2.0/24", "--ttl", "1h")
        self.hit("a@bad.example", "192.0.2.7")  # 24h: the /24 takes the longer time
        self.hit("b@bad.example", "198.51.100.7")
        self.hit("c@bad.example", "2001:db8:5::9")

    def nft_elements(self, ns, family):
        p = ns.run("nft", "-j", "list", "set", "inet", "spamtrapd", family)
        self.assertEqual(p.returncode, 0, p.stderr)
        out = {}
        for item in json.loads(p.stdout)["nftables"]:
            for e in item.get("set", {}).get("elem", []):
                e = e["elem"]
                val = e["val"]
                key = f"{val['prefix']['addr']}/{val['prefix']['len']}" if isinstance(val, dict) else val
                out[key] = e["timeout"]
        return out

    def test_nft_loads_replaces_and_keeps_on_error(self):
        ns = netns_or_skip(self, "nft")
        self.make_entries()
        path, text = self.export("nft")
        self.assertIn("flags interval, timeout", text)
        p = ns.run("nft", "-f", path)
        self.assertEqual(p.returncode, 0, p.stderr + text)
        v4 = self.nft_elements(ns, "v4")
        self.assertEqual(sorted(v4), ["192.0.2.0/24", "198.51.100.7"])
        self.assertAlmostEqual(v4["192.0.2.0/24"], 86400, delta=120)  # the host's 24h, not the /24's 1h
        self.assertAlmostEqual(v4["198.51.100.7"], 86400, delta=120)
        self.assertEqual(list(self.nft_elements(ns, "v6")), ["2001:db8:5::/64"])

        # a second export replaces the content: an entry removed, one added, an empty v6 set
        self.d.ctl("remove", "198.51.100.7")
        self.d.ctl("remove", "2001:db8:5::/64")
        self.hit("d@bad.example", "203.0.113.7")
        path, text = self.export("nft")
        self.assertNotIn("{ }", text)
        p = ns.run("nft", "-f", path)
        self.assertEqual(p.returncode, 0, p.stderr + text)
        self.assertEqual(sorted(self.nft_elements(ns, "v4")), ["192.0.2.0/24", "203.0.113.7"])
        self.assertEqual(self.nft_elements(ns, "v6"), {})

        # a malformed file (its flush would empty the sets) changes nothing
        before = self.nft_elements(ns, "v4")
        bad = path + ".bad"
        with open(bad, "w") as f:
            f.write(text + "add element inet spamtrapd v4 { 192.0.2.300 timeout 5s }\n")
        p = ns.run("nft", "-f", bad)
        self.assertNotEqual(p.returncode, 0)
        self.assertEqual(sorted(self.nft_elements(ns, "v4")), sorted(before))
        # and a chain of the administrator's in the table survives a reload
        p = ns.run("nft", "add chain inet spamtrapd input { type filter hook input priority -10; }")
        self.assertEqual(p.returncode, 0, p.stderr)
        p = ns.run("nft", "add rule inet spamtrapd input ip saddr @v4 tcp dport 25 drop")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(ns.run("nft", "-f", path).returncode, 0)
        self.assertIn("@v4", ns.run("nft", "list", "chain", "inet", "spamtrapd", "input").stdout)

    def ipset_members(self, ns, name):
        p = ns.run("ipset", "save", name)
        self.assertEqual(p.returncode, 0, p.stderr)
        return {m.group(1): int(m.group(2)) for m in re.finditer(r"^add \S+ (\S+) timeout (\d+)$", p.stdout, re.M)}

    def test_ipset_restores_swaps_and_keeps_on_error(self):
        ns = netns_or_skip(self, "ipset")
        self.make_entries()
        path, text = self.export("ipset")
        with open(path) as f:
            p = ns.run("ipset", "restore", stdin=f.read())
        self.assertEqual(p.returncode, 0, p.stderr + text)
        v4 = self.ipset_members(ns, "spamtrapd-v4")
        self.assertEqual(sorted(v4), ["192.0.2.0/24", "198.51.100.7"])
        self.assertAlmostEqual(v4["192.0.2.0/24"], 86400, delta=120)
        self.assertEqual(list(self.ipset_members(ns, "spamtrapd-v6")), ["2001:db8:5::/64"])
        self.assertNotIn("spamtrapd-v4-new", ns.run("ipset", "list", "-n").stdout)

        # the second load swaps into the existing sets
        self.d.ctl("remove", "198.51.100.7")
        self.hit("d@bad.example", "203.0.113.7")
        path, text = self.export("ipset")
        p = ns.run("ipset", "restore", stdin=text)
        self.assertEqual(p.returncode, 0, p.stderr + text)
        self.assertEqual(sorted(self.ipset_members(ns, "spamtrapd-v4")), ["192.0.2.0/24", "203.0.113.7"])

        # an error before the swap leaves the live set as it was
        before = self.ipset_members(ns, "spamtrapd-v4")
        bad = text.replace("flush spamtrapd-v4-new\n", "flush spamtrapd-v4-new\nadd spamtrapd-v4-new 192.0.2.300\n")
        self.assertNotEqual(bad, text)
        p = ns.run("ipset", "restore", stdin=bad)
        self.assertNotEqual(p.returncode, 0)
        self.assertEqual(sorted(self.ipset_members(ns, "spamtrapd-v4")), sorted(before))


class FirewallUnits(Daemon, unittest.TestCase):
    """The root-owned pair the package ships: systemd accepts it, its loader loads only the sets."""

    LOADER = os.path.join(ROOT, "packaging", "firewall", "spamtrapd-firewall-load")

    def test_units_verify(self):
        analyze = shutil.which("systemd-analyze")
        if not analyze:
            self.skipTest("systemd-analyze is not installed")
        units = os.path.join(self.d.dir, "units")
        os.makedirs(units, exist_ok=True)
        for kind in ("path", "service"):
            with open(os.path.join(ROOT, "packaging", "debian", f"spamtrapd.spamtrapd-firewall.{kind}")) as f:
                text = f.read()
            if kind == "service":
                self.assertIn("ExecStart=/usr/libexec/spamtrapd/spamtrapd-firewall-load /var/lib/spamtrapd/"
                              "blocklist.nft\n", text)
                text = text.replace("/usr/libexec/spamtrapd/spamtrapd-firewall-load", self.LOADER)
            else:
                self.assertIn("PathChanged=/var/lib/spamtrapd/blocklist.nft\n", text)
            with open(os.path.join(units, f"spamtrapd-firewall.{kind}"), "w") as f:
                f.write(text)
        p = subprocess.run([analyze, "verify", "--man=no", os.path.join(units, "spamtrapd-firewall.path"),
                            os.path.join(units, "spamtrapd-firewall.service")], capture_output=True, text=True,
                           timeout=120)
        self.assertEqual((p.returncode, p.stderr), (0, ""))

    def test_loader_loads_the_export_and_nothing_else(self):
        ns = netns_or_skip(self, "nft")
        self.hit("a@bad.example", "192.0.2.7")
        path, text = self.export("nft")
        p = ns.run(self.LOADER, path)
        self.assertEqual((p.returncode, p.stderr), (0, ""))
        self.assertIn("192.0.2.7", ns.run("nft", "list", "set", "inet", "spamtrapd", "v4").stdout)
        # what a compromised spamtrapd user might write: refused whole, the ruleset untouched
        for extra in ("flush ruleset\n", "include \"/etc/shadow\"\n",
                      "table inet spamtrapd {\n\tchain input {\n\t\ttype filter hook input priority 0; policy drop;\n"
                      "\t}\n}\n",
                      "add element inet spamtrapd v4 { 198.51.100.1 timeout 5s }; flush ruleset\n"):
            with self.subTest(extra=extra):
                bad = os.path.join(self.d.dir, "bad.nft")
                with open(bad, "w") as f:
                    f.write(text.replace("flush set inet spamtrapd v4\n", "flush set inet spamtrapd v4\n" + extra))
                p = ns.run(self.LOADER, bad)
                self.assertEqual(p.returncode, 1)
                self.assertIn("not loaded: lines an export never writes", p.stderr)
                ruleset = ns.run("nft", "list", "ruleset").stdout
                self.assertIn("192.0.2.7", ruleset)
                self.assertNotIn("chain", ruleset)


class ExportRbldnsd(rb.Rbldnsd):
    """rbldnsd serving one export file as ZONE:combined:FILE."""

    def __init__(self, workdir, zone, export_path):
        super().__init__(workdir, {zone: rb.Zone()}, name="rbldnsd-export")
        self.zone, self.export_path = zone, export_path

    def _write_zones(self):
        shutil.copy(self.export_path, os.path.join(self.dir, "blocklist.rbl"))
        return [f"{self.zone}:combined:blocklist.rbl"]


def txt_of(port, name):
    r = rb.query(port, name, 16)
    if not r:
        return None
    return [rd[1:1 + rd[0]].decode() for rd in r[1]]


class Rbldnsd(Daemon, unittest.TestCase):
    """Other mail hosts query the blocklist as a DNSBL."""

    def test_rbldnsd_serves_the_export(self):
        self.hit("a@bad.example", "192.0.2.7")
        self.hit("b@bad.example", "2001:db8:5::9")
        self.d.ctl("add", "198.51.100.0/24")
        self.d.ctl("add", "@spam.example")
        path, text = self.export("rbldnsd", "--keys", "client,domain")
        self.assertRegex(text, r"(?m)^\$SOA \d+ \S+\. hostmaster\.\S+\. \d+ ")
        zone = "bl.example.net"
        with ExportRbldnsd(self.d.dir, zone, path) as dns:
            self.assertEqual(rb.query_a(dns.port, "7.2.0.192." + zone), ["127.0.0.2"])
            self.assertEqual(txt_of(dns.port, "7.2.0.192." + zone), ["192.0.2.7 sent mail to a spamtrap"])
            self.assertEqual(rb.query_a(dns.port, "9.100.51.198." + zone), ["127.0.0.3"])  # added by hand
            nibbles = ".".join(reversed("20010db8000500000000000000000009"))
            self.assertEqual(rb.query_a(dns.port, f"{nibbles}.{zone}"), ["127.0.0.2"])
            self.assertEqual(rb.query_a(dns.port, "spam.example.domains." + zone), ["127.0.0.3"])
            # unlisted: NXDOMAIN, never an answer
            r = rb.query(dns.port, "8.2.0.192." + zone)
            self.assertEqual(r[0], 3, r)
            self.assertEqual(r[1], [])
            self.assertEqual(rb.query(dns.port, "ham.example.domains." + zone)[0], 3)
            self.assertEqual(rb.query(dns.port, "bad.example.domains." + zone)[0], 3)  # senders are no domains


if __name__ == "__main__":
    unittest.main()
