"""Smoke run of the benchmark's load generators (bench/): do they speak the protocols?

A second or so of each load tool against the references and against the real
daemon, asserting that every request got a well-formed reply and that the
replies are the right ones (all DUNNO from the bare responder, every trap
recipient refused by spamtrapd, the no-op filter's negotiation honoured,
every request of the greylisting load a new triplet for the real postgrey).
Never timing: speed is measured by `make bench`, not by tests.

The tools live in the build tree next to the daemon (BUILD/bench/); when the
build has no bench/ (SPAMTRAPD_BENCH=OFF) the test is skipped.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import unittest

import postgrey_harness as ph
import spamtrapd_harness as sh

BENCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(os.environ.get("SPAMTRAPD", "")))),
                         "bench")

# libmilter's protocol flags a filter sends back (mfdef.h).
SMFIP_NOHDRS, SMFIP_NOEOH, SMFIP_NOBODY = 0x20, 0x40, 0x10
SMFIP_NOUNKNOWN, SMFIP_NODATA = 0x100, 0x200


def tool(name):
    return os.path.join(BENCH_DIR, name)


def run_load(name, *args):
    """Run a load tool for a bounded number of requests; its JSON result."""
    proc = subprocess.run([tool(name), *args], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise AssertionError(f"{name} {' '.join(args)} exited {proc.returncode}: {proc.stderr}{proc.stdout}")
    return json.loads(proc.stdout)


def wait_port(port, proc, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


class Reference:
    """A reference server from bench/ on a free port, stopped by PID."""

    def __init__(self, name, *args):
        self.port = sh.free_port()
        self.proc = subprocess.Popen([tool(name), "-p", str(self.port), *args], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        try:
            wait_port(self.port, self.proc)
        except AssertionError:
            self.stop()
            raise

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def total(replies):
    return sum(replies.values())


class BenchSmoke(unittest.TestCase):
    def test_policy_load_against_bare_responder(self):
        with Reference("policy_ref", "-t", "2") as ref:
            r = run_load("policy_load", "-p", str(ref.port), "-c", "4", "-w", "0", "-n", "400", "-t", "0.3")
        self.assertEqual(r["requests"], 400)
        self.assertEqual((r["malformed"], r["disconnects"], r["unanswered"]), (0, 0, 0))
        self.assertEqual(set(r["trap_replies"]) | set(r["other_replies"]), {"DUNNO"})
        self.assertGreater(total(r["trap_replies"]), 0, "a 30% trap fraction sent no trap recipient")

    def test_policy_load_unique_senders_against_postgrey(self):
        """-u: every request a sender of its own, each a new triplet for postgrey, even from one
        client and a pool of one sender (which -u replaces)."""
        with ph.Postgrey() as pg:
            r = run_load("policy_load", "-p", str(pg.port), "-c", "4", "-w", "0", "-n", "300", "-u", "grey",
                         "-t", "0", "-b", "0", "-S", "1", "-C", "1")
            r2 = run_load("policy_load", "-p", str(pg.port), "-c", "1", "-w", "0", "-n", "20", "-u", "grey",
                          "-t", "0", "-b", "0", "-S", "1", "-C", "1")
            log = pg.log()
        self.assertEqual((r["requests"], r["malformed"], r["disconnects"], r["unanswered"]), (300, 0, 0, 0))
        self.assertEqual(set(r["other_replies"]) | set(r2["other_replies"]), {"DEFER_IF_PERMIT"})
        senders = re.findall(r"action=greylist, reason=(\S+), .*sender=([^,]+),", log)
        self.assertEqual(len(senders), 320)
        self.assertEqual({reason for reason, _ in senders}, {"new"}, "a request of the load met an old triplet")
        self.assertEqual(len({s for _, s in senders}), 320, "two requests (also of two runs) shared a sender")

    def test_policy_load_refuses_a_prefix_that_normalises(self):
        for prefix in ("Grey", "grey1", "a-b", "abcdefghijklmnopq"):
            proc = subprocess.run([tool("policy_load"), "-p", "9", "-u", prefix], capture_output=True, timeout=30)
            self.assertEqual(proc.returncode, 2, prefix)

    def test_milter_load_against_noop_filter(self):
        with Reference("milter_ref") as ref:
            r = run_load("milter_load", "-p", str(ref.port), "-c", "2", "-w", "0", "-n", "60")
        self.assertEqual(r["sessions"], 60)
        self.assertEqual((r["malformed"], r["errors"], r["unfinished"]), (0, 0, 0))
        skipped = SMFIP_NOHDRS | SMFIP_NOEOH | SMFIP_NOBODY | SMFIP_NOUNKNOWN | SMFIP_NODATA
        self.assertEqual(int(r["filter_protocol"], 16), skipped)
        # Every envelope step is answered: option negotiation, CONNECT, HELO, MAIL, RCPT.
        self.assertEqual(r["replies_per_session"], 5.0)
        for step in ("connect", "helo", "mail"):
            self.assertEqual(set(r[step]), {"c"}, step)
            self.assertEqual(total(r[step]), 60, step)
        self.assertEqual(total(r["rcpt_trap"]) + total(r["rcpt_other"]), 60)

    def test_loads_against_spamtrapd(self):
        traps = {"traps": {"domains": ["traps.example"]}, "log": {"level": "warning"}}
        with sh.Spamtrapd(traps, roles=("full",), milter=True) as d:
            wait_port(d.milter_port(), d.proc)
            p = run_load("policy_load", "-p", str(d.policy_port("full")), "-c", "4", "-w", "0", "-n", "300",
                         "-t", "0.3", "-b", "0")
            m = run_load("milter_load", "-p", str(d.milter_port()), "-c", "2", "-w", "0", "-n", "40", "-t",
                         "0.5", "-b", "0")
        self.assertEqual(p["requests"], 300)
        self.assertEqual((p["malformed"], p["disconnects"], p["unanswered"]), (0, 0, 0))
        # Under on_mixed deliver-others the policy protocol refuses a trap copy as an unknown user.
        self.assertEqual(set(p["trap_replies"]), {"550"})
        self.assertIn("DUNNO", p["other_replies"])
        self.assertEqual(m["sessions"], 40)
        self.assertEqual((m["malformed"], m["errors"], m["unfinished"]), (0, 0, 0))
        self.assertGreater(total(m["rcpt_trap"]), 0)
        self.assertGreater(total(m["mail"]) + total(m["connect"]), 0, "the milter answered no step")


if __name__ == "__main__":
    if not os.access(tool("policy_load"), os.X_OK):
        print(f"bench tools not built in {BENCH_DIR} (SPAMTRAPD_BENCH=OFF): skipped")
        sys.exit(sh.SKIP)
    unittest.main()
