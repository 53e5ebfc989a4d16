"""Integration tests of the policy-delegation front end: the real spamtrapd,
real SQLite, and a client speaking the Postfix policy protocol on loopback.

Each test class starts the daemons it needs (spamtrapd_harness); client
addresses in requests come from the documentation ranges (192.0.2.0/24,
198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32), since the decision core
never blocklists loopback clients.
"""

import grp
import os
import pwd
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import spamtrapd_harness as sh

REJECT_TEXT = "550 5.7.1 Sender is blocklisted here (spamtrapd test)"
TRAP = "trap@example.com"

BASE = {
    "traps": {"addresses": [TRAP], "domains": ["trap.example.net"]},
    "blocklist": {"reject": REJECT_TEXT},
}


def daemon(overrides=None, **kw):
    return sh.Spamtrapd(sh.merge(BASE, overrides), **kw)


class DaemonCase(unittest.TestCase):
    """A daemon per test class; clients per test."""

    CONFIG = None
    ROLES = ("trap", "sender")

    @classmethod
    def setUpClass(cls):
        cls.d = daemon(cls.CONFIG, roles=cls.ROLES)
        try:
            cls.d.start()
        except BaseException:
            cls.d.cleanup()  # tearDownClass does not run when setUpClass fails
            raise

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def setUp(self):
        self.clients = []

    def tearDown(self):
        for c in self.clients:
            c.close()

    def client(self, role):
        c = sh.PolicyClient(self.d.policy_address(role))
        self.clients.append(c)
        return c

    def trap_hit(self, sender, client_address, recipient=TRAP, **kw):
        return self.client("trap").check(sender=sender, recipient=recipient, client_address=client_address, **kw)

    def sender_check(self, sender, client_address, **kw):
        return self.client("sender").check(sender=sender, client_address=client_address, **kw)


class TestBlocklist(DaemonCase):
    def test_trap_hit_blocklists_sender_with_configured_text(self):
        self.assertEqual(self.sender_check("spam1@bad.test", "192.0.2.11"), "DUNNO")
        # default action discard + on_mixed deliver-others: the trap is an unknown user
        self.assertEqual(self.trap_hit("spam1@bad.test", "192.0.2.11"), "550 5.1.1 User unknown")
        # from another client: the sender key
        self.assertEqual(self.sender_check("spam1@bad.test", "203.0.113.99"), REJECT_TEXT)
        # case and angle brackets do not matter
        self.assertEqual(self.sender_check("<Spam1@BAD.test>", "203.0.113.98"), REJECT_TEXT)
        self.d.wait_for_log(r"reject: trap trap=trap@example.com blocklisted=spam1@bad.test,192.0.2.11")

    def test_trap_hit_blocklists_client_address(self):
        self.trap_hit("spam2@bad.test", "192.0.2.12")
        self.assertEqual(self.sender_check("innocent@other.test", "192.0.2.12"), REJECT_TEXT)
        self.assertEqual(self.sender_check("innocent@other.test", "192.0.2.13"), "DUNNO")

    def test_sender_check_at_mail_and_rcpt(self):
        self.trap_hit("spam3@bad.test", "192.0.2.14")
        self.assertEqual(self.sender_check("spam3@bad.test", "203.0.113.1", protocol_state="MAIL", recipient=None),
                         REJECT_TEXT)
        self.assertEqual(self.sender_check("spam3@bad.test", "203.0.113.1", protocol_state="RCPT"), REJECT_TEXT)
        # other stages are not the sender port's business
        self.assertEqual(self.sender_check("spam3@bad.test", "203.0.113.1", protocol_state="DATA"), "DUNNO")

    def test_trap_domain_and_extension(self):
        self.assertEqual(self.trap_hit("spam4@bad.test", "192.0.2.15", recipient="anything@trap.example.net"),
                         "550 5.1.1 User unknown")
        self.assertEqual(self.trap_hit("spam5@bad.test", "192.0.2.16", recipient="trap+tag@example.com"),
                         "550 5.1.1 User unknown")
        self.assertEqual(self.sender_check("spam5@bad.test", "203.0.113.2"), REJECT_TEXT)

    def test_ordinary_recipient_on_trap_port(self):
        self.assertEqual(self.trap_hit("fine@good.test", "192.0.2.17", recipient="user@example.com"), "DUNNO")
        self.assertEqual(self.sender_check("fine@good.test", "192.0.2.17"), "DUNNO")

    def test_trap_port_ignores_other_stages(self):
        self.assertEqual(self.trap_hit("x@bad.test", "192.0.2.18", protocol_state="MAIL"), "DUNNO")
        self.assertEqual(self.sender_check("x@bad.test", "192.0.2.18"), "DUNNO")

    def test_null_sender_trap_hit_records_nothing_by_default(self):
        """traps.null_sender ignore: a bounce (backscatter from a forged sender) comes from an
        innocent server; the trap still answers as a trap, nothing is blocklisted."""
        self.assertEqual(self.trap_hit("", "192.0.2.20", helo_name="mx.bounce.test"), "550 5.1.1 User unknown")
        self.d.wait_for_log(r"reject: trap trap=trap@example\.com blocklisted=none \(null sender\); "
                            r"client=192\.0\.2\.20 ")
        self.assertEqual(self.sender_check("", "192.0.2.20"), "DUNNO")
        self.assertEqual(self.sender_check("someone@else.test", "192.0.2.20"), "DUNNO")

    def test_ipv6_client(self):
        self.trap_hit("spam6@bad.test", "2001:db8:1:2::25")
        # /64 aggregation by default
        self.assertEqual(self.sender_check("other@x.test", "2001:db8:1:2::99"), REJECT_TEXT)
        self.assertEqual(self.sender_check("other@x.test", "2001:db8:1:3::1"), "DUNNO")

    def test_other_recipients_of_the_same_message_are_not_rejected(self):
        """smtpd_delay_reject=yes asks the sender port at every RCPT: after the trap
        hit, the message's other recipients still pass (on_mixed deliver-others);
        the next message is rejected."""
        msg = sh.new_instance()
        sender = self.client("sender")
        kw = dict(sender="thread@mixed.test", client_address="192.0.2.21", instance=msg)
        self.assertEqual(sender.check(recipient=TRAP, **kw), "DUNNO")
        self.assertEqual(self.client("trap").check(recipient=TRAP, **kw), "550 5.1.1 User unknown")
        self.assertEqual(sender.check(recipient="colleague@example.com", **kw), "DUNNO")
        self.d.wait_for_log(r"sender hit a trap earlier in this message")
        kw["instance"] = sh.new_instance()
        self.assertEqual(sender.check(recipient="colleague@example.com", **kw), REJECT_TEXT)

    def test_persistent_connection_many_requests(self):
        c = self.client("sender")
        for i in range(200):
            self.assertEqual(c.check(sender=f"user{i}@many.test", client_address="198.51.100.200"), "DUNNO")

    def test_request_split_at_every_byte(self):
        c = self.client("sender")
        data = sh.PolicyClient.encode(sender="split@x.test", client_address="198.51.100.201")
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(data)):
            c.send_raw(data[i:i + 1])
            if i % 50 == 0:
                time.sleep(0.002)
        self.assertEqual(c.read_action(), "DUNNO")

    def test_pipelined_requests(self):
        self.trap_hit("pipe@bad.test", "192.0.2.22")
        c = self.client("sender")
        c.send_raw(sh.PolicyClient.encode(sender="pipe@bad.test", client_address="203.0.113.3") +
                   sh.PolicyClient.encode(sender="ok@good.test", client_address="203.0.113.3") +
                   sh.PolicyClient.encode(sender="pipe@bad.test", client_address="203.0.113.4"))
        self.assertEqual([c.read_action() for _ in range(3)], [REJECT_TEXT, "DUNNO", REJECT_TEXT])

    def test_crlf_requests_from_a_hand_test(self):
        c = self.client("sender")
        c.send_raw(b"request=smtpd_access_policy\r\nprotocol_state=RCPT\r\nsender=hand@x.test\r\n"
                   b"client_address=198.51.100.202\r\n\r\n")
        self.assertEqual(c.read_action(), "DUNNO")


class TestNullSenderClient(DaemonCase):
    CONFIG = {"traps": {"null_sender": "client"}}

    def test_null_sender_trap_hit_blocks_client_not_null_sender(self):
        self.assertEqual(self.trap_hit("", "192.0.2.20"), "550 5.1.1 User unknown")
        self.assertEqual(self.sender_check("", "203.0.113.20"), "DUNNO")
        self.assertEqual(self.sender_check("", "192.0.2.20"), REJECT_TEXT)
        self.assertEqual(self.sender_check("someone@else.test", "192.0.2.20"), REJECT_TEXT)


class TestNullSenderConfig(unittest.TestCase):
    def check(self, text):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "spamtrapd.json")
            with open(path, "w") as f:
                f.write(text)
            r = subprocess.run([*sh.command(), "-t", "-c", path], capture_output=True, text=True, timeout=30)
            return r.returncode, (r.stdout + r.stderr).replace(path, "FILE")

    def test_check_names_a_bad_value_with_its_position(self):
        rc, out = self.check('{\n  "traps": {\n    "null_sender": "bounce"\n  }\n}\n')
        self.assertEqual(rc, 1, out)
        self.assertIn("FILE:3:5: traps.null_sender: expected one of ignore, client", out)

    def test_check_accepts_both_values(self):
        for value in ("ignore", "client"):
            # a "user" when the test runs as root: -t refuses a root start without one
            user = '"user": "%s", ' % sh.run_user() if sh.run_user() else ""
            rc, out = self.check('{%s"traps": {"null_sender": "%s"}}\n' % (user, value))
            self.assertEqual(rc, 0, out)
            self.assertIn("is valid", out)


class TestWhitelist(DaemonCase):
    CONFIG = {"whitelist": {"domains": ["example.org"], "addresses": ["boss@partner.test"],
                            "networks": ["198.51.100.0/24", "2001:db8:ffff::/48"]}}

    def assert_never_blocked(self, sender, client, **kw):
        self.assertEqual(self.trap_hit(sender, client, **kw), "DUNNO")
        self.assertEqual(self.sender_check(sender, "203.0.113.50"), "DUNNO")
        self.assertEqual(self.sender_check("another@unrelated.test", client), "DUNNO")

    def assert_forged_sender_protected(self, sender, client):
        """An unverified whitelisted sender: the trap hit counts, blocklists the client, not the sender."""
        self.assertEqual(self.trap_hit(sender, client), "550 5.1.1 User unknown")
        self.assertEqual(self.sender_check(sender, "203.0.113.50"), "DUNNO")
        self.assertEqual(self.sender_check("another@unrelated.test", client), REJECT_TEXT)

    def test_domain(self):
        self.assert_forged_sender_protected("friend@example.org", "192.0.2.30")

    def test_authenticated_domain(self):
        """Verified: its trap copy is refused, but neither it nor its client is blocklisted
        (the default keys have no sasl_username, so nothing is recorded)."""
        self.assertEqual(self.trap_hit("friend@example.org", "192.0.2.35", sasl_username="friend"),
                         "550 5.1.1 User unknown")
        self.assertEqual(self.sender_check("friend@example.org", "203.0.113.50"), "DUNNO")
        self.assertEqual(self.sender_check("another@unrelated.test", "192.0.2.35"), "DUNNO")

    def test_subdomain_not_included_by_default(self):
        self.assertEqual(self.trap_hit("x@sub.example.org", "192.0.2.31"), "550 5.1.1 User unknown")
        self.assertEqual(self.sender_check("x@sub.example.org", "203.0.113.51"), REJECT_TEXT)

    def test_address(self):
        self.assert_forged_sender_protected("boss@partner.test", "192.0.2.32")
        # only that address of the domain
        self.trap_hit("intern@partner.test", "192.0.2.33")
        self.assertEqual(self.sender_check("intern@partner.test", "203.0.113.52"), REJECT_TEXT)

    def test_network(self):
        self.assert_never_blocked("anyone@somewhere.test", "198.51.100.77")
        self.assert_never_blocked("anyone6@somewhere.test", "2001:db8:ffff:1::7")

    def test_whitelisted_network_passes_blocklisted_sender(self):
        self.trap_hit("bad@spam.test", "192.0.2.34")
        self.assertEqual(self.sender_check("bad@spam.test", "203.0.113.53"), REJECT_TEXT)
        self.assertEqual(self.sender_check("bad@spam.test", "198.51.100.78"), "DUNNO")


class TestForgedWhitelistedSender(DaemonCase):
    """SPEC "Checks" 3: a whitelisted sender can be forged. It keeps its own keys (sender,
    sender_domain) off the blocklist, but overrides neither a client block nor the recording
    of the client, unless the client authenticated."""

    CONFIG = {"whitelist": {"domains": ["example.org"]},
              "blocklist": {"keys": ["sender", "client_address", "sender_domain", "helo_name"]}}

    def test_blocklisted_client_with_whitelisted_sender_is_rejected(self):
        self.trap_hit("spam@bad.test", "192.0.2.9", helo_name="spam.test")
        self.assertEqual(self.sender_check("ceo@example.org", "192.0.2.9"), REJECT_TEXT)
        self.assertEqual(self.sender_check("ceo@example.org", "192.0.2.9", protocol_state="MAIL",
                                           recipient=None), REJECT_TEXT)
        # authenticated: the sender is verified, the whole transaction is exempt
        self.assertEqual(self.sender_check("ceo@example.org", "192.0.2.9", sasl_username="ceo"), "DUNNO")
        self.d.wait_for_log(r"continue: whitelisted; client=192\.0\.2\.9 .*sender=<ceo@example\.org>")
        # elsewhere the sender itself is fine
        self.assertEqual(self.sender_check("ceo@example.org", "203.0.113.9"), "DUNNO")

    def test_trap_hit_with_forged_sender_blocklists_client_not_sender(self):
        self.assertEqual(self.trap_hit("ceo@example.org", "192.0.2.10", helo_name="forger.test"),
                         "550 5.1.1 User unknown")
        self.d.wait_for_log(r"reject: trap trap=trap@example\.com blocklisted=192\.0\.2\.10,helo:forger\.test; ")
        self.assertEqual(self.sender_check("x@other.test", "192.0.2.10"), REJECT_TEXT)
        self.assertEqual(self.sender_check("x@other.test", "203.0.113.10", helo_name="forger.test"), REJECT_TEXT)
        # neither the address nor its domain
        self.assertEqual(self.sender_check("ceo@example.org", "203.0.113.11"), "DUNNO")
        self.assertEqual(self.sender_check("cfo@example.org", "203.0.113.11"), "DUNNO")
        out = self.d.ctl("list").stdout
        self.assertNotIn("example.org", out)

    def test_authenticated_whitelisted_sender_is_exempt(self):
        # the trap recipient is still refused, but with no sasl_username key nothing is recorded
        self.assertEqual(self.trap_hit("ceo@example.org", "192.0.2.11", sasl_username="ceo",
                                       helo_name="laptop.test"), "550 5.1.1 User unknown")
        self.d.wait_for_log(r"reject: trap trap=trap@example\.com blocklisted=-; client=192\.0\.2\.11 ")
        self.assertEqual(self.sender_check("x@other.test", "192.0.2.11", helo_name="laptop.test"), "DUNNO")
        self.assertEqual(self.sender_check("ceo@example.org", "203.0.113.12"), "DUNNO")


class TestTrustedSenderAccount(DaemonCase):
    """A verified whitelisted sender skips the client, HELO and sender keys, but the SASL
    account that verifies it is still judged: a stolen password cannot buy its way past the
    blocklist by writing a whitelisted MAIL FROM."""

    CONFIG = {"whitelist": {"domains": ["example.org"]},
              "blocklist": {"keys": ["sender", "client_address", "sasl_username", "helo_name"]}}

    def test_trap_hit_records_the_account_only(self):
        self.assertEqual(self.trap_hit("ceo@example.org", "192.0.2.12", sasl_username="mallory",
                                       helo_name="laptop.test"), "550 5.1.1 User unknown")
        self.d.wait_for_log(r"reject: trap trap=trap@example\.com blocklisted=sasl:mallory; ")
        self.assertEqual(self.sender_check("ceo@example.org", "203.0.113.13", sasl_username="mallory"),
                         REJECT_TEXT)
        # the client, the HELO and the sender are not listed; other accounts pass
        self.assertEqual(self.sender_check("x@other.test", "192.0.2.12", helo_name="laptop.test"), "DUNNO")
        self.assertEqual(self.sender_check("ceo@example.org", "203.0.113.13", sasl_username="ceo"), "DUNNO")

    def test_blocklisted_account_with_whitelisted_sender_is_rejected(self):
        self.d.ctl("add", "sasl:mallory")
        self.assertEqual(self.sender_check("ceo@example.org", "203.0.113.14", sasl_username="mallory"),
                         REJECT_TEXT)
        self.assertEqual(self.sender_check("ceo@example.org", "203.0.113.14", sasl_username="Mallory",
                                           protocol_state="MAIL", recipient=None), REJECT_TEXT)


class TestWhitelistSubdomains(DaemonCase):
    CONFIG = {"whitelist": {"domains": ["example.org"], "include_subdomains": True}}

    def test_domain_and_subdomains(self):
        for sender, client in (("a@example.org", "192.0.2.40"), ("b@sub.example.org", "192.0.2.41"),
                               ("c@deep.sub.example.org", "192.0.2.42")):
            # forged (not authenticated): the sender is protected, its client is not
            self.assertEqual(self.trap_hit(sender, client), "550 5.1.1 User unknown", sender)
            self.assertEqual(self.sender_check(sender, "203.0.113.60"), "DUNNO", sender)
            self.assertEqual(self.sender_check("other@x.test", client), REJECT_TEXT, sender)

    def test_lookalike_domain_is_not_whitelisted(self):
        self.trap_hit("d@badexample.org", "192.0.2.43")
        self.assertEqual(self.sender_check("d@badexample.org", "203.0.113.61"), REJECT_TEXT)


class TestActions(unittest.TestCase):
    def run_action(self, traps, expect):
        with daemon({"traps": traps}) as d:
            with sh.PolicyClient(d.policy_address("trap")) as t, sh.PolicyClient(d.policy_address("sender")) as s:
                self.assertEqual(t.check(sender="act@bad.test", recipient=TRAP, client_address="192.0.2.50"), expect)
                self.assertEqual(s.check(sender="act@bad.test", client_address="203.0.113.70"), REJECT_TEXT)

    def test_reject(self):
        self.run_action({"action": "reject"}, "550 5.7.1 Recipient address rejected")

    def test_discard_all(self):
        self.run_action({"action": "discard", "on_mixed": "discard-all"}, "DISCARD spamtrap hit")

    def test_discard_deliver_others(self):
        self.run_action({"action": "discard", "on_mixed": "deliver-others"}, "550 5.1.1 User unknown")

    def test_accept(self):
        self.run_action({"action": "accept"}, "DUNNO")


class TestExpiryAndRestart(unittest.TestCase):
    def test_entry_expires(self):
        with daemon({"blocklist": {"ttl": "2s"}}) as d:
            with sh.PolicyClient(d.policy_address("trap")) as t, sh.PolicyClient(d.policy_address("sender")) as s:
                t.check(sender="short@bad.test", recipient=TRAP, client_address="192.0.2.60")
                self.assertEqual(s.check(sender="short@bad.test", client_address="203.0.113.80"), REJECT_TEXT)
                time.sleep(3.2)
                self.assertEqual(s.check(sender="short@bad.test", client_address="203.0.113.80"), "DUNNO")
                self.assertEqual(s.check(sender="x@y.test", client_address="192.0.2.60"), "DUNNO")

    def test_blocklist_survives_restart(self):
        with daemon() as d:
            with sh.PolicyClient(d.policy_address("trap")) as t:
                t.check(sender="persist@bad.test", recipient=TRAP, client_address="192.0.2.61")
            d.restart()
            with sh.PolicyClient(d.policy_address("sender")) as s:
                self.assertEqual(s.check(sender="persist@bad.test", client_address="203.0.113.81"), REJECT_TEXT)
                self.assertEqual(s.check(sender="x@y.test", client_address="192.0.2.61"), REJECT_TEXT)

    def test_dry_run_records_but_never_rejects(self):
        with daemon({"mode": "dry-run"}) as d:
            with sh.PolicyClient(d.policy_address("trap")) as t, sh.PolicyClient(d.policy_address("sender")) as s:
                self.assertEqual(t.check(sender="dry@bad.test", recipient=TRAP, client_address="192.0.2.62"),
                                 "DUNNO")
                self.assertEqual(s.check(sender="dry@bad.test", client_address="203.0.113.82"), "DUNNO")
            d.wait_for_log(r"dry-run, would reject: blocklisted key=dry@bad.test")
            d.stop()
            d.rewrite_config({"mode": "enforce"})
            d.start()
            with sh.PolicyClient(d.policy_address("sender")) as s:
                self.assertEqual(s.check(sender="dry@bad.test", client_address="203.0.113.83"), REJECT_TEXT)


class TestReload(unittest.TestCase):
    def test_bad_config_keeps_old_good_config_applies(self):
        with daemon() as d:
            trap = sh.PolicyClient(d.policy_address("trap"))
            self.addCleanup(trap.close)
            self.assertEqual(trap.check(sender="r1@bad.test", recipient="new@example.com",
                                        client_address="192.0.2.70"), "DUNNO")
            # a typo in a key: refused, the old config (and its trap) stays
            self.assertFalse(d.reload(overrides={"traps": {"adresses": ["new@example.com"]}}))
            self.assertTrue(d.running())
            self.assertEqual(trap.check(sender="r2@bad.test", recipient=TRAP, client_address="192.0.2.71"),
                             "550 5.1.1 User unknown")
            self.assertEqual(trap.check(sender="r3@bad.test", recipient="new@example.com",
                                        client_address="192.0.2.72"), "DUNNO")
            # broken JSON: the same
            self.assertFalse(d.reload(replace="{ not json"))
            self.assertTrue(d.running())
            # a good config: the new trap works on the same (persistent) connection
            good = sh.merge(d.config, {"traps": {"addresses": [TRAP, "new@example.com"]}})
            good["traps"].pop("adresses", None)
            self.assertTrue(d.reload(replace=good))
            self.assertEqual(trap.check(sender="r4@bad.test", recipient="new@example.com",
                                        client_address="192.0.2.73"), "550 5.1.1 User unknown")
            with sh.PolicyClient(d.policy_address("sender")) as s:
                self.assertEqual(s.check(sender="r4@bad.test", client_address="203.0.113.90"), REJECT_TEXT)

    def test_limits_apply_after_reload(self):
        with daemon() as d:
            c = sh.PolicyClient(d.policy_address("sender"))
            self.addCleanup(c.close)
            long_helo = "h" * 400
            self.assertEqual(c.check(helo_name=long_helo), "DUNNO")
            self.assertTrue(d.reload(overrides={"policy": {"max_line": 300}}))
            # the snapshot is read after each request: the next request has the new limit
            self.assertEqual(c.check(helo_name="short"), "DUNNO")
            mark = d.log_mark()
            self.assertEqual(c.check(helo_name=long_helo), "DUNNO")
            d.wait_for_log(r"malformed request .*: line too long in line 4; answered DUNNO", since=mark)
            self.assertEqual(c.check(helo_name="short"), "DUNNO")


class TestMalformed(DaemonCase):
    """SPEC "Replies": a malformed request gets DUNNO and one log line, and the
    connection stays (Postfix would otherwise retry the same request on a new
    connection and defer the mail). Only what cannot be Postfix is closed: a
    NUL byte, a request that never ends, three malformed requests in a row."""

    CONFIG = {"policy": {"max_line": 256, "max_attributes": 40}}
    MALFORMED = r"policy: \S+: malformed request from 127\.0\.0\.1 on [0-9.:]+: "

    def assert_dunno_with_one_line(self, data, message):
        """data (one malformed request) gets DUNNO and one log line; the connection
        still answers the next request, also one from the blocklist."""
        self.trap_hit("known@bad.test", "192.0.2.80")
        mark = self.d.log_mark()
        c = self.client("sender")
        c.send_raw(data)
        self.assertEqual(c.read_action(), "DUNNO")
        self.d.wait_for_log(self.MALFORMED + message + r"; answered DUNNO\n", since=mark)
        self.assertEqual(c.check(sender="known@bad.test", client_address="203.0.113.80"), REJECT_TEXT)
        self.assertEqual(c.check(sender="ok@good.test", client_address="198.51.100.150"), "DUNNO")
        self.assertEqual(self.d.count_log(r"malformed request|closing connection", since=mark), 1,
                         self.d.log_since(mark))

    def assert_closed_with_one_line(self, data, message):
        mark = self.d.log_mark()
        bad = self.client("sender")
        good = self.client("sender")  # open before, must keep working after
        try:
            bad.send_raw(data)
        except OSError:
            pass  # closed (reset) while we were still sending: what the test expects
        self.assertTrue(bad.is_closed(), "the connection should be closed")
        self.d.wait_for_log(message, since=mark)
        time.sleep(0.2)
        self.assertEqual(self.d.count_log(r"policy: closing connection from 127\.0\.0\.1", since=mark), 1,
                         self.d.log_since(mark))
        self.assertEqual(good.check(sender="ok@good.test", client_address="198.51.100.150"), "DUNNO")
        self.assertEqual(self.client("sender").check(sender="ok@good.test", client_address="198.51.100.150"),
                         "DUNNO")

    def test_line_without_equals(self):
        self.assert_dunno_with_one_line(b"request=smtpd_access_policy\nhello world\nsender=known@bad.test\n\n",
                                        r"line without '=' in line 2")

    def test_overlong_line(self):
        self.assert_dunno_with_one_line(b"request=smtpd_access_policy\nsender=" + b"a" * 300 + b"\n\n",
                                        r"line too long in line 2")

    def test_too_many_attributes(self):
        # Postfix keeps adding attributes: a request over max_attributes is still answered
        data = sh.PolicyClient.encode({f"new_attr{i}": i for i in range(20)}, queue_id="4AbCdE",
                                      sender="known@bad.test", client_address="203.0.113.80")
        self.assert_dunno_with_one_line(data, r"too many attributes in line 41")
        self.d.wait_for_log(r"policy: 4AbCdE: malformed request")

    def test_empty_name(self):
        self.assert_dunno_with_one_line(b"=value\n\n", r"empty attribute name in line 1")

    def test_binary_garbage_then_empty_line(self):
        self.assert_dunno_with_one_line(bytes(range(1, 256)) * 4 + b"\n\n",
                                        r"control character in attribute name in line 1")

    def test_malformed_pipelined_with_good_requests(self):
        self.trap_hit("pipe2@bad.test", "192.0.2.81")
        c = self.client("sender")
        c.send_raw(sh.PolicyClient.encode(sender="pipe2@bad.test", client_address="203.0.113.5") +
                   b"request=smtpd_access_policy\r\nbroken line\r\nsender=pipe2@bad.test\r\n\r\n" +
                   sh.PolicyClient.encode(sender="pipe2@bad.test", client_address="203.0.113.5"))
        self.assertEqual([c.read_action() for _ in range(3)], [REJECT_TEXT, "DUNNO", REJECT_TEXT])

    def test_three_malformed_in_a_row_close(self):
        mark = self.d.log_mark()
        c = self.client("sender")
        # two, then a good one: the count starts again
        for _ in range(2):
            c.send_raw(b"no equals\n\n")
            self.assertEqual(c.read_action(), "DUNNO")
        self.assertEqual(c.check(sender="ok@good.test", client_address="198.51.100.151"), "DUNNO")
        for _ in range(2):
            c.send_raw(b"no equals\n\n")
            self.assertEqual(c.read_action(), "DUNNO")
        self.assertFalse(c.is_closed(timeout=0.3))
        # the third in a row is answered, then the connection is closed
        c.send_raw(b"no equals\n\n")
        self.assertEqual(c.read_action(), "DUNNO")
        self.assertTrue(c.is_closed())
        self.d.wait_for_log(self.MALFORMED + r"line without '=' in line 1; answered DUNNO, "
                            r"closing the connection after 3 in a row", since=mark)
        self.assertEqual(self.d.count_log(r"malformed request", since=mark), 5)

    def test_endless_line_is_closed(self):
        # over max_line at once, then never a line end: skipped up to 1 MiB, then closed
        self.assert_closed_with_one_line(b"x" * (1100 * 1024), r"no end of the request within 1 MiB")

    def test_endless_request_is_closed(self):
        self.assert_closed_with_one_line(b"bad line\n" + b"x=1\n" * (300 * 1024),
                                         r"no end of the request within 1 MiB after a syntax error in line \d+")

    def test_nul_byte(self):
        self.assert_closed_with_one_line(b"request=smtpd_access_policy\nsender=a\x00b\n\n", r"NUL byte in line 2")

    def test_tls_client_hello(self):
        # a TLS client on the plain port: control characters, then a NUL byte
        self.assert_closed_with_one_line(bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc]), r"NUL byte")

    def test_complete_request_without_request_attribute_gets_dunno(self):
        c = self.client("sender")
        mark = self.d.log_mark()
        self.assertEqual(c.check(request=None, sender="x@y.test"), "DUNNO")
        self.d.wait_for_log(r"no request attribute; answered DUNNO", since=mark)
        self.assertEqual(c.check(request="junk_policy"), "DUNNO")
        self.d.wait_for_log(r"request is not smtpd_access_policy", since=mark)
        # the connection stays usable (three such requests in a row would close it, as malformed ones)
        self.assertEqual(c.check(sender="x@y.test"), "DUNNO")
        self.assertEqual(c.check(protocol_state="RCPT", sender=None), "DUNNO")
        self.d.wait_for_log(r"no sender attribute", since=mark)
        self.assertEqual(c.check(sender="x@y.test"), "DUNNO")

    def test_overlong_values_are_not_used(self):
        # within max_line (256 here) but longer than the 63 bytes kept for a client address
        c = self.client("sender")
        mark = self.d.log_mark()
        self.assertEqual(c.check(sender="x@y.test", client_address="1" * 100), "DUNNO")
        self.d.wait_for_log(r"client_address longer than 63 bytes, not used", since=mark)

    def test_empty_request_gets_dunno(self):
        c = self.client("trap")
        c.send_raw(b"\n")
        self.assertEqual(c.read_action(), "DUNNO")

    def test_client_closes_mid_request(self):
        mark = self.d.log_mark()
        c = self.client("sender")
        c.send_raw(b"request=smtpd_access_policy\nsender=half")
        time.sleep(0.1)
        c.close()
        self.d.wait_for_log(r"closed in the middle of a request", since=mark)
        self.assertEqual(self.client("sender").check(), "DUNNO")


class TestConcurrency(DaemonCase):
    CONFIG = {"policy": {"threads": 4}}

    def test_many_persistent_connections(self):
        n = 300
        self.trap_hit("conc@bad.test", "192.0.2.90")
        clients = [self.client("sender") for _ in range(n)]
        # every connection open at once, each does a request, twice
        for round_ in range(2):
            for i, c in enumerate(clients):
                c.send_raw(sh.PolicyClient.encode(sender="conc@bad.test" if i % 3 == 0 else f"u{i}@ok.test",
                                                  client_address=f"198.51.100.{i % 200 + 1}"))
            for i, c in enumerate(clients):
                self.assertEqual(c.read_action(), REJECT_TEXT if i % 3 == 0 else "DUNNO", (round_, i))

    def test_parallel_clients_in_threads(self):
        errors = []

        def work(k):
            try:
                with sh.PolicyClient(self.d.policy_address("sender")) as c:
                    for j in range(50):
                        if c.check(sender=f"t{k}.{j}@ok.test", client_address="198.51.100.210") != "DUNNO":
                            errors.append((k, j))
            except Exception as e:  # reported below; a thread cannot fail the test itself
                errors.append((k, repr(e)))

        threads = [threading.Thread(target=work, args=(k,)) for k in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])


def open_in_slot(address, timeout=5.0):
    """A client that got one of the max_connections slots and made a request (so that it is
    no longer the connection accepted last)."""
    deadline = time.monotonic() + timeout
    while True:
        c = sh.PolicyClient(address)
        try:
            if c.check() == "DUNNO":
                return c
        except sh.ConnectionClosed:
            pass
        c.close()
        if time.monotonic() > deadline:
            raise AssertionError(f"no connection slot on {address} within {timeout}s")
        time.sleep(0.05)


class TestLimits(unittest.TestCase):
    def test_max_connections(self):
        """At the limit, the least recently active connection is closed to make room for a new
        one: Postfix reopens its policy connection when it finds it closed, so new clients are
        served; one log line for the burst. (test_hostile.py: 2,000 idle connections.)"""
        # One listener: the harness's readiness probe connects before the old connections, on
        # their listener, so it is accepted first and gone (closed, or made room for the fifth)
        # before the burst.
        with daemon({"policy": {"max_connections": 5}}, roles=("sender",)) as d:
            # Marked before the old connections: the probe may still hold a slot when the fifth
            # one arrives, and the burst's one line is then written already.
            mark = d.log_mark()
            old = [open_in_slot(d.policy_address("sender")) for _ in range(5)]
            new = []
            try:
                for _ in range(3):
                    new.append(sh.PolicyClient(d.policy_address("sender")))
                    self.assertEqual(new[-1].check(), "DUNNO")
                # Exactly the three least recently active, whichever worker holds them: each close
                # is claimed against the count, and a worker closes its own only while no other
                # has an older one. Another worker may close one after the new connection is
                # answered (woken for it): is_closed waits without a request, which would make the
                # old connection the most recently active.
                for i in range(3):
                    self.assertTrue(old[i].is_closed(timeout=10), f"old connection {i} closed to make room")

                def answer(c):
                    try:
                        return c.check()
                    except (sh.ConnectionClosed, OSError):
                        return "closed"

                self.assertEqual([answer(c) for c in old], ["closed"] * 3 + ["DUNNO"] * 2)
                self.assertEqual([c.check() for c in new], ["DUNNO"] * 3)
                self.assertEqual(d.count_log(r"closing the least recently active ones", since=mark), 1,
                                 "one line for the burst")
            finally:
                for c in old + new:
                    c.close()

    def test_idle_timeout(self):
        with daemon({"policy": {"idle_timeout": "2s"}}) as d:
            idle = sh.PolicyClient(d.policy_address("sender"))
            busy = sh.PolicyClient(d.policy_address("sender"))
            half = sh.PolicyClient(d.policy_address("sender"))
            try:
                self.assertEqual(idle.check(), "DUNNO")
                half.send_raw(b"request=smtpd_access_policy\n")  # a client that stalls mid-request
                start = time.monotonic()
                while time.monotonic() - start < 3.5:
                    self.assertEqual(busy.check(), "DUNNO")
                    time.sleep(0.5)
                self.assertTrue(idle.is_closed(timeout=3))
                self.assertTrue(half.is_closed(timeout=3))
                self.assertEqual(busy.check(), "DUNNO")
                d.wait_for_log(r"request not complete \d+s after its first byte")
                d.wait_for_log(r"closing connection from 127\.0\.0\.1 on [0-9.:]+: idle for \d+s\n")
            finally:
                for c in (idle, busy, half):
                    c.close()


class TestAllow(unittest.TestCase):
    def test_client_outside_allow_is_refused(self):
        with daemon({"policy": {"allow": ["192.0.2.0/24"]}}, roles=("sender",)) as d:
            # The harness's readiness probe was refused (and logged) too; refusals are
            # logged at most once a second, so wait that out, then look
            # only at our own attempt.
            d.wait_for_log(r"not in policy\.allow")
            time.sleep(1.2)
            mark = d.log_mark()
            c = sh.PolicyClient(d.policy_address("sender"))
            try:
                c.send_raw(sh.PolicyClient.encode())
            except OSError:
                pass  # reset before the send: refused as well
            self.assertTrue(c.is_closed())
            c.close()
            d.wait_for_log(r"refused connection from 127\.0\.0\.1 on [0-9.:]+: not in policy\.allow", since=mark)

    def test_unix_socket_always_allowed(self):
        workdir = sh.tempfile.mkdtemp(prefix="spamtrapd-test.")
        path = os.path.join(workdir, "policy.sock")
        d = daemon({"policy": {"allow": [], "listen": [{"address": f"unix:{path}", "role": "full"}]}},
                   workdir=workdir)
        with d:
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o660, "policy.socket_mode defaults to 0660")
            with sh.PolicyClient(f"unix:{path}") as c:
                self.assertEqual(c.check(sender="u@bad.test", recipient=TRAP, client_address="192.0.2.95"),
                                 "550 5.1.1 User unknown")
                self.assertEqual(c.check(sender="u@bad.test", recipient="x@example.com",
                                         client_address="203.0.113.95"), REJECT_TEXT)
            d.stop()
            self.assertFalse(os.path.exists(path), "the socket file is removed at exit")
            # a stale socket file (a daemon killed with -9) does not stop the next start
            d.start()
            d.kill()
            self.assertTrue(os.path.exists(path))
            d.start()
            with sh.PolicyClient(f"unix:{path}") as c:
                self.assertEqual(c.check(sender="ok@good.test", client_address="198.51.100.96"), "DUNNO")


class TestUnixSocketPermissions(unittest.TestCase):
    """policy.socket_owner, socket_group and socket_mode, as for the milter's socket."""

    def unix_daemon(self, policy):
        workdir = sh.tempfile.mkdtemp(prefix="spamtrapd-test.")
        path = os.path.join(workdir, "policy.sock")
        listen = [{"address": f"unix:{path}", "role": "full"}]
        return daemon({"policy": dict(policy, listen=listen)}, workdir=workdir), path

    def test_configured_mode(self):
        d, path = self.unix_daemon({"socket_mode": "0600"})
        with d:
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
            with sh.PolicyClient(f"unix:{path}") as c:
                self.assertEqual(c.check(), "DUNNO")

    def test_mode_null_leaves_it_as_created(self):
        d, path = self.unix_daemon({"socket_mode": None})
        with d:
            # bind() leaves 0777 minus the umask; the daemon's umask is the harness's
            umask = os.umask(0)
            os.umask(umask)
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o777 & ~umask)

    @unittest.skipUnless(os.geteuid() == 0, "chown to another user needs root")
    def test_owner_and_group(self):
        d, path = self.unix_daemon({"socket_owner": "nobody", "socket_group": "nogroup", "socket_mode": "0640"})
        with d:
            st = os.stat(path)
            self.assertEqual((st.st_uid, st.st_gid),
                             (pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid))
            self.assertEqual(st.st_mode & 0o777, 0o640)
        # numeric ids work too
        d, path = self.unix_daemon({"socket_owner": "0", "socket_group": "65534"})
        with d:
            st = os.stat(path)
            self.assertEqual((st.st_uid, st.st_gid, st.st_mode & 0o777), (0, 65534, 0o660))

    def test_unknown_group_fails_start(self):
        d, path = self.unix_daemon({"socket_group": "no-such-group-spamtrapd"})
        try:
            self.assertEqual(d.run_until_exit(), 1)
            self.assertIn('policy.socket_group: no such group "no-such-group-spamtrapd"', d.log())
            self.assertFalse(os.path.exists(path), "the half-made socket is removed")
        finally:
            d.cleanup()


def ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class TestListeners(unittest.TestCase):
    @unittest.skipUnless(ipv6_loopback(), "no IPv6 loopback here")
    def test_ipv6_listener(self):
        port = sh.free_port("::1", socket.AF_INET6)
        with daemon({"policy": {"listen": [{"address": f"[::1]:{port}", "role": "sender"}]}}) as d:
            with sh.PolicyClient(f"[::1]:{port}") as c:
                self.assertEqual(c.check(), "DUNNO")

    def test_port_in_use_fails_start(self):
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            d = daemon({"policy": {"listen": [{"address": f"127.0.0.1:{port}", "role": "sender"}]}})
            try:
                self.assertEqual(d.run_until_exit(), 1)
                self.assertRegex(d.log(), rf"cannot start: policy listener 127\.0\.0\.1:{port}: Address already in use")
            finally:
                d.cleanup()

    def test_socket_path_that_is_not_a_socket_fails_start(self):
        workdir = sh.tempfile.mkdtemp(prefix="spamtrapd-test.")
        path = os.path.join(workdir, "regular-file")
        with open(path, "w") as f:
            f.write("keep me\n")
        d = daemon({"policy": {"listen": [{"address": f"unix:{path}", "role": "sender"}]}}, workdir=workdir)
        try:
            self.assertEqual(d.run_until_exit(), 1)
            self.assertIn("exists and is not a socket", d.log())
            with open(path) as f:
                self.assertEqual(f.read(), "keep me\n")
        finally:
            d.cleanup()


class TestRoleFull(DaemonCase):
    ROLES = ("full",)

    def test_full_role(self):
        c = self.client("full")
        # at MAIL: the sender check
        self.assertEqual(c.check(protocol_state="MAIL", recipient=None, sender="full@bad.test",
                                 client_address="192.0.2.100"), "DUNNO")
        # at RCPT: the trap check first
        self.assertEqual(c.check(sender="full@bad.test", recipient=TRAP, client_address="192.0.2.100"),
                         "550 5.1.1 User unknown")
        # the next message: rejected at MAIL, and at RCPT of an ordinary recipient
        self.assertEqual(c.check(protocol_state="MAIL", recipient=None, sender="full@bad.test",
                                 client_address="203.0.113.100"), REJECT_TEXT)
        self.assertEqual(c.check(sender="full@bad.test", recipient="user@example.com",
                                 client_address="203.0.113.100"), REJECT_TEXT)
        self.assertEqual(c.check(sender="x@y.test", recipient="user@example.com",
                                 client_address="192.0.2.100"), REJECT_TEXT)
        # others pass; other stages are not looked at
        self.assertEqual(c.check(sender="x@y.test", recipient="user@example.com",
                                 client_address="192.0.2.101"), "DUNNO")
        self.assertEqual(c.check(protocol_state="DATA", sender="full@bad.test", client_address="192.0.2.100"),
                         "DUNNO")

    def test_full_role_same_message(self):
        c = self.client("full")
        msg = sh.new_instance()
        kw = dict(sender="mixed@bad.test", client_address="192.0.2.102", instance=msg)
        self.assertEqual(c.check(recipient=TRAP, **kw), "550 5.1.1 User unknown")
        self.assertEqual(c.check(recipient="real@example.com", **kw), "DUNNO")
        kw["instance"] = sh.new_instance()
        self.assertEqual(c.check(recipient="real@example.com", **kw), REJECT_TEXT)

    def assert_listed_before_stays_rejected(self, c, kw):
        """A message whose first recipient is a trap: the same-message exemption covers only
        what this hit blocklisted, not a key listed before the message began."""
        kw["instance"] = sh.new_instance()
        self.assertEqual(c.check(recipient=TRAP, **kw), "550 5.1.1 User unknown")
        self.assertEqual(c.check(recipient="real@example.com", **kw), REJECT_TEXT)
        self.assertEqual(c.check(recipient="other@example.com", **kw), REJECT_TEXT)

    def test_sender_listed_before_the_message_is_rejected_after_a_trap_hit(self):
        c = self.client("full")
        c.check(sender="listed@bad.test", recipient=TRAP, client_address="192.0.2.104")
        self.assert_listed_before_stays_rejected(c, dict(sender="listed@bad.test", client_address="203.0.113.104"))

    def test_client_listed_before_the_message_is_rejected_after_a_trap_hit(self):
        c = self.client("full")
        c.check(sender="first@bad.test", recipient=TRAP, client_address="192.0.2.105")
        self.assert_listed_before_stays_rejected(c, dict(sender="fresh@new.test", client_address="192.0.2.105"))

    def test_without_protocol_state(self):
        c = self.client("full")
        self.assertEqual(c.check(protocol_state=None, sender="nostate@bad.test", recipient=TRAP,
                                 client_address="192.0.2.103"), "550 5.1.1 User unknown")
        self.assertEqual(c.check(protocol_state=None, recipient=None, sender="nostate@bad.test",
                                 client_address="203.0.113.103"), REJECT_TEXT)


class TestRoleFullAccept(DaemonCase):
    """traps.action accept on a full listener: the trap hit is answered DUNNO, and the entry it just
    made rejects neither it nor the message's other recipients; an older entry still rejects them."""

    ROLES = ("full",)
    CONFIG = {"traps": {"action": "accept"}}

    def test_new_entry_exempts_this_message(self):
        c = self.client("full")
        kw = dict(sender="acc@bad.test", client_address="192.0.2.106", instance=sh.new_instance())
        self.assertEqual(c.check(recipient=TRAP, **kw), "DUNNO")
        self.assertEqual(c.check(recipient="real@example.com", **kw), "DUNNO")
        self.assertEqual(c.check(recipient=TRAP, **kw), "DUNNO")
        self.assertEqual(c.check(recipient="real2@example.com", **kw), "DUNNO")
        kw["instance"] = sh.new_instance()
        self.assertEqual(c.check(recipient="real@example.com", **kw), REJECT_TEXT)

    def test_old_entry_still_rejects(self):
        c = self.client("full")
        c.check(sender="acc2@bad.test", recipient=TRAP, client_address="192.0.2.107")
        kw = dict(sender="acc2@bad.test", client_address="203.0.113.107", instance=sh.new_instance())
        self.assertEqual(c.check(recipient=TRAP, **kw), "DUNNO")
        self.assertEqual(c.check(recipient="real@example.com", **kw), REJECT_TEXT)


class TestStop(unittest.TestCase):
    def test_sigterm_with_open_connections_is_clean_and_quick(self):
        d = daemon()
        with d:
            clients = [sh.PolicyClient(d.policy_address("sender")) for _ in range(20)]
            for c in clients[:10]:
                self.assertEqual(c.check(), "DUNNO")
            clients[10].send_raw(b"request=smtpd_access_policy\nsender=stalled")  # never completed
            t0 = time.monotonic()
            d.stop()  # raises unless exit code 0 in time
            self.assertLess(time.monotonic() - t0, 10)
            for c in clients:
                self.assertTrue(c.is_closed(timeout=2))
                c.close()
            self.assertIn("with a request still in progress", d.log())


if __name__ == "__main__":
    try:
        sh.binary()
    except sh.HarnessError as e:
        print(e, file=sys.stderr)
        sys.exit(1)
    unittest.main(verbosity=2)
