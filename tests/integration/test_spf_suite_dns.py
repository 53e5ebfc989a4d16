"""The OpenSPF RFC 7208 test suite (tests/data/spf/) through a real DNS path:
each scenario's zone data served by tests/lib/dns_server.py, resolved by
libunbound forwarding to it, the evaluator driven through the daemon's plan
runner (src/dns/dnsrun.c: the spf_resolver adapter, record conversion,
statuses, the deadline) by tests/tools/spf_dns_driver.c.

unit.test_spf_suite runs the same cases over a fake resolver: this one
proves what the fake cannot, that real answers (TXT character-strings,
MX and PTR names in wire form, CNAME chains, NXDOMAIN against no data,
timeouts) reach the evaluator as RFC 7208 expects. A case passes when its
result is one the suite accepts and, where the suite gives one, the
explanation matches (DEFAULT: none from exp=). Every case must pass; the
count is printed.
"""

import json
import os
import shutil
import subprocess
import tempfile
import unittest

import dns_server
import spamtrapd_harness as sh

SOURCE = os.environ.get("SPAMTRAPD_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
SUITE = os.path.join(SOURCE, "tests", "data", "spf", "rfc7208-tests.yml")
TIMEOUT_MS = 2000  # a TIMEOUT name: the deadline makes it temperror


def load_suite(workdir):
    out = os.path.join(workdir, "suite.json")
    subprocess.run([dns_server.DEBIAN_PYTHON, os.path.join(SOURCE, "tests", "data", "spf", "yaml2json.py"),
                    SUITE, out], check=True)
    with open(out) as f:
        return json.load(f)


def records_of(zone):
    """dns_server's records and behaviours from yaml2json.py's zone form."""
    records, behaviours = {}, {}
    for name, e in zone.items():
        recs = [["TXT", t] for t in e["TXT"]] + [["A", a] for a in e["A"]] + \
               [["AAAA", a] for a in e["AAAA"]] + [["MX", 0, m] for m in e["MX"]] + \
               [["PTR", p] for p in e["PTR"]] + [["CNAME", c] for c in e["CNAME"][:1]]
        records[name] = recs
        if e["timeout"]:
            behaviours[name] = {"drop_missing": True}
    return records, behaviours


def accepted(case, result, explanation):
    if result not in case["results"]:
        return False
    want = case.get("explanation")
    return want is None or want.lower() == explanation.lower()


class TestSpfSuiteOverDns(unittest.TestCase):
    def test_every_case(self):
        work = tempfile.mkdtemp(prefix="spamtrapd-spfdns.")
        if os.environ.get("SPAMTRAPD_KEEP") != "1":
            self.addCleanup(shutil.rmtree, work, True)
        passed, failures = 0, []
        for i, scenario in enumerate(load_suite(work)):
            records, behaviours = records_of(scenario["zone"])
            with dns_server.DnsServer(os.path.join(work, str(i)), records, behaviours) as server:
                lines = "".join("%s\t%s\t%s\n" % (c["host"], c["mailfrom"] or "-", c["helo"] or "-")
                                for c in scenario["tests"])
                out = subprocess.run([*sh.command("SPF_DNS_DRIVER"), server.forwarder, str(TIMEOUT_MS)],
                                     input=lines, capture_output=True, text=True, timeout=600, check=True)
            answers = out.stdout.splitlines()
            self.assertEqual(len(answers), len(scenario["tests"]), out.stderr)
            for case, answer in zip(scenario["tests"], answers):
                result, explanation, reason = (answer.split("\t") + ["", ""])[:3]
                if accepted(case, result, explanation):
                    passed += 1
                else:
                    failures.append("%s: %s: got %s (%s) explanation %r; want %s explanation %r" % (
                        scenario["description"], case["name"], result, reason, explanation,
                        "/".join(case["results"]), case.get("explanation")))
        total = passed + len(failures)
        print("RFC 7208 suite over a real DNS server: %d of %d cases pass" % (passed, total))
        self.assertEqual(failures, [], "\n".join(failures))


if __name__ == "__main__":
    unittest.main(verbosity=2)
