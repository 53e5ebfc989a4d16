"""Integration tests of the dnsbl check (issue 15) through the policy
protocol: the real daemon resolving through libunbound, forwarding to real
DNS servers started by the test on loopback ports: Debian's rbldnsd serving
a test DNSBL and DNSWL (rbldnsd_harness), and the scriptable server of
tests/lib/dns_server.py for what rbldnsd will not do on cue: a list
refusing the query with 127.255.255.254, a hijacked zone answering
8.8.8.8, a site that does not answer in time (held until the test
releases it: no timing assumption).
"""

import re
import shutil
import tempfile
import unittest
import urllib.request

import dns_server
import rbldnsd_harness as rb
import spamtrapd_harness as sh

TRAP = "trap@example.com"
TRAP_REPLY = "550 5.1.1 User unknown"
LISTED_V4, LISTED_V6, ALLOWED, CLEAN = "192.0.2.7", "2001:db8::7", "192.0.2.8", "192.0.2.50"
WHITELISTED = "198.51.100.9"
GREY_DEFER = "DEFER_IF_PERMIT 4.2.0 Greylisted"
ZONES = {
    "bl.example.net": rb.Zone(v4={LISTED_V4: "127.0.0.2", "192.0.2.9": "127.0.0.99"},
                              v6={LISTED_V6: "127.0.0.4"}, txt="listed, see https://bl.example.net/"),
    "wl.example.net": rb.Zone(v4={ALLOWED: "127.0.10.3"}, txt="allowed"),
}


def lookups(address, site, result):
    """spamtrapd_dns_lookups_total{site,result} from a scrape of the daemon's metrics listener."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        body = r.read().decode()
    m = re.search(rf'^spamtrapd_dns_lookups_total\{{site="{re.escape(site)}",result="{result}"\}} (\d+)$', body, re.M)
    return int(m.group(1))


def v4_name(ip, zone):
    return ".".join(reversed(ip.split("."))) + "." + zone


class Checks(sh.PolicyChecks):
    def ask(self, d, client, sender="someone@sender.example", rcpt="user@example.com", **kw):
        return self.client(d, "trap").check(sender=sender, recipient=rcpt, client_address=client, **kw)


class TestRbldnsd(Checks, unittest.TestCase):
    """One daemon asking rbldnsd: a DNSBL and a DNSWL, greylisting on."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="spamtrapd-dnsbl-")
        cls.rbl = rb.Rbldnsd(cls.tmp, ZONES).start()
        cls.d = sh.Spamtrapd({
            "traps": {"addresses": [TRAP]},
            "whitelist": {"networks": ["198.51.100.0/24"]},
            "dns": {"forwarders": [cls.rbl.forwarder]},
            "dnsbl": {"mode": "enforce", "threshold": 3, "allowlist_threshold": -1,
                      "sites": ["bl.example.net=127.0.0.[2..11]*3", "wl.example.net=127.0.[0..255].[1..3]*-5"]},
            "greylist": {"mode": "enforce", "delay": "1h"},
            "metrics": {"listen": f"127.0.0.1:{sh.free_port()}"},
        })
        try:
            cls.d.start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "d", None):
            cls.d.cleanup()
        cls.rbl.stop()
        shutil.rmtree(cls.tmp, True)

    def test_listed_client_rejected_with_the_site(self):
        self.assertEqual(self.ask(self.d, LISTED_V4),
                         f"554 5.7.1 Service unavailable; client [{LISTED_V4}] blocked using bl.example.net")

    def test_lookups_counted_by_site(self):
        metrics = self.d.config["metrics"]["listen"]
        before = [lookups(metrics, site, "found") for site in ("bl.example.net", "wl.example.net")]
        nx = lookups(metrics, "wl.example.net", "nxdomain")
        self.assertTrue(self.ask(self.d, LISTED_V4).startswith("554 "))
        self.assertEqual(lookups(metrics, "bl.example.net", "found"), before[0] + 1)
        self.assertEqual(lookups(metrics, "wl.example.net", "found"), before[1])
        self.assertEqual(lookups(metrics, "wl.example.net", "nxdomain"), nx + 1)

    def test_ipv6_client_in_nibble_form(self):
        self.assertEqual(self.ask(self.d, LISTED_V6),
                         f"554 5.7.1 Service unavailable; client [{LISTED_V6}] blocked using bl.example.net")
        self.assertIn("7.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.example.net",
                      self.rbl.queries())

    def test_answer_outside_the_filter_does_not_list(self):
        # 127.0.0.99 is listed in the zone but outside the site's filter: greylisted as anyone
        self.assertTrue(self.ask(self.d, "192.0.2.9", sender="f@x.example").startswith(GREY_DEFER))

    def test_dnswl_listed_client_skips_greylisting(self):
        self.assertEqual(self.ask(self.d, ALLOWED, sender="a@x.example"), "DUNNO")
        # a clean client is greylisted: the greylist is on
        self.assertTrue(self.ask(self.d, CLEAN, sender="a@x.example").startswith(GREY_DEFER))

    def test_whitelisted_network_is_never_asked(self):
        self.assertEqual(self.ask(self.d, WHITELISTED, sender="w@x.example"), "DUNNO")
        self.assertTrue(self.ask(self.d, "192.0.2.60", sender="w@x.example").startswith(GREY_DEFER))
        asked = self.rbl.queries()
        self.assertIn(v4_name("192.0.2.60", "bl.example.net"), asked)  # the log shows what was asked
        self.assertFalse([n for n in asked if "9.100.51.198" in n], asked)

    def test_sasl_client_is_never_asked(self):
        self.assertEqual(self.ask(self.d, "192.0.2.61", sasl_username="alice"), "DUNNO")
        self.assertFalse([n for n in self.rbl.queries() if "61.2.0.192" in n])

    def test_listed_client_still_hits_traps(self):
        self.assertEqual(self.ask(self.d, LISTED_V4, sender="spammer@spam.example", rcpt=TRAP), TRAP_REPLY)
        self.assertEqual(self.sender_check(self.d, "spammer@spam.example", "203.0.113.1"),
                         "550 5.7.1 Sender is blocklisted after mail to a spamtrap")


class TestScriptedServer(Checks, unittest.TestCase):
    """Answers no real list should give, and one that never comes in time."""

    RECORDS = {
        v4_name(LISTED_V4, "refuse.example.net"): [["A", "127.255.255.254"]],
        v4_name(LISTED_V4, "hijack.example.net"): [["A", "8.8.8.8"]],
        v4_name(LISTED_V4, "good.example.net"): [["A", "127.0.0.2"]],
    }
    SLOW = v4_name(LISTED_V4, "slow.example.net")

    def server(self):
        tmp = tempfile.mkdtemp(prefix="spamtrapd-dnsbl-")
        self.addCleanup(shutil.rmtree, tmp, True)
        s = dns_server.DnsServer(tmp, self.RECORDS, {self.SLOW: {"hold": True}})
        s.start()
        self.addCleanup(s.stop)
        return s

    def daemon(self, server, dnsbl):
        d = sh.Spamtrapd({"traps": {"addresses": [TRAP]}, "dns": {"forwarders": [server.forwarder]},
                          "dnsbl": sh.merge({"mode": "enforce"}, dnsbl),
                          "metrics": {"listen": f"127.0.0.1:{sh.free_port()}"}})
        self.addCleanup(d.cleanup)
        d.start()
        return d

    def test_refusals_and_foreign_answers_never_list(self):
        s = self.server()
        d = self.daemon(s, {"sites": ["refuse.example.net", "hijack.example.net"]})
        mark = d.log_mark()
        self.assertEqual(self.ask(d, LISTED_V4), "DUNNO")
        d.wait_for_log(r"dnsbl-error .*bad_answer=refuse\.example\.net:127\.255\.255\.254", since=mark)
        d.wait_for_log(r"bad_answer=hijack\.example\.net:8\.8\.8\.8", since=mark)

    def test_good_answer_next_to_a_refusal_lists(self):
        s = self.server()
        d = self.daemon(s, {"sites": ["refuse.example.net", "good.example.net"]})
        self.assertEqual(self.ask(d, LISTED_V4),
                         f"554 5.7.1 Service unavailable; client [{LISTED_V4}] blocked using good.example.net")

    def test_slow_site_past_timeout_is_on_error_never_5xx(self):
        s = self.server()
        d = self.daemon(s, {"sites": ["slow.example.net"], "timeout": "1s"})
        mark = d.log_mark()
        self.assertEqual(self.ask(d, LISTED_V4), "DUNNO")
        d.wait_for_log(r"dnsbl-error .*failed=slow\.example\.net:timeout", since=mark)
        self.assertEqual(lookups(d.config["metrics"]["listen"], "slow.example.net", "timeout"), 1)
        s.release(self.SLOW)

    def test_slow_site_on_error_tempfail(self):
        s = self.server()
        d = self.daemon(s, {"sites": ["slow.example.net"], "timeout": "1s", "on_error": "tempfail"})
        self.assertTrue(self.ask(d, LISTED_V4).startswith("451 4.7.1 "))
        s.release(self.SLOW)


if __name__ == "__main__":
    unittest.main(verbosity=2)
