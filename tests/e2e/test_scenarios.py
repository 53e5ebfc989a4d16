"""One scenario table, both front ends, the same verdicts.

tests/e2e/scenarios.json describes SMTP sessions step by step (connect,
HELO, MAIL, RCPT, end of data) with the verdict the SMTP client must see at
each step. Each scenario runs against a real spamtrapd twice: through the
milter front end (tests/lib/milter_client.py plays Postfix's milter client)
and through the policy front end (spamtrapd_harness.PolicyClient plays
check_policy_service on a 'full' listener). Both runs must give the
table's verdicts, and the two daemons must end with the same blocklist.

Needs no root and no Postfix: only the daemon and spamtrapctl.
"""

import json
import os
import sys
import threading
import time
import unittest

import spamtrapd_harness as sh
from milter_client import MilterClient

TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scenarios.json")
BLOCKLISTED_REPLY_PREFIX = "550 5.7.1"


def load_table():
    with open(TABLE, encoding="utf-8") as f:
        return json.load(f)


def resolve(config, unused_port):
    """The config with "UNUSED_PORT" placeholders replaced (a store nobody serves)."""
    text = json.dumps(config).replace('"UNUSED_PORT"', str(unused_port))
    return json.loads(text)


def groups(table):
    """Scenarios grouped by their config: one daemon per group and front end."""
    out = {}
    for sc in table["scenarios"]:
        key = json.dumps(sc.get("config", {}), sort_keys=True)
        out.setdefault(key, []).append(sc)
    return out


def wait_milter(daemon, timeout=sh.START_TIMEOUT):
    """Wait until the daemon's milter socket accepts (the harness waits for policy listeners only)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            MilterClient.open(daemon.config["milter"]["listen"], timeout=1.0).close()
            return
        except OSError:
            if not daemon.running():
                raise sh.HarnessError("spamtrapd exited while starting:\n" + daemon.log_tail())
            if time.monotonic() > deadline:
                raise sh.HarnessError("milter socket not listening:\n" + daemon.log_tail())
            time.sleep(0.05)


class MilterFront:
    """Postfix's side of the milter protocol, one milter connection per session."""

    name = "milter"

    def __init__(self, daemon):
        self.spec = daemon.config["milter"]["listen"]
        self.conn = None
        self.sasl = None
        self.queue_ids = (f"M{n:05X}" for n in range(1, 1 << 20))
        self.qid = None

    def session(self, client, helo, sasl):
        self.close()
        self.conn = MilterClient.open(self.spec)
        self.conn.negotiate()
        self.conn.connect(helo, client)
        self.conn.helo(helo)
        self.sasl = sasl

    def _macros(self):
        m = {"i": self.qid}
        if self.sasl:
            m["{auth_authen}"] = self.sasl
        return m

    @staticmethod
    def _verdict(reply):
        return "continue" if reply.verdict == "continue" else reply.smtp

    def mail(self, sender):
        self.qid = next(self.queue_ids)
        return self._verdict(self.conn.mail(f"<{sender}>", macros=self._macros()))

    def rcpt(self, rcpt):
        return self._verdict(self.conn.rcpt(f"<{rcpt}>", macros=self._macros()))

    def data(self, accepted):
        """Recipients (as given) that do not get the message."""
        end = self.conn.message(macros=self._macros())
        if end.verdict == "discard":
            return set(accepted)
        if end.verdict != "continue":
            raise AssertionError(f"end of message answered {end}")
        return {r for r in accepted if f"<{r}>" in end.deleted}

    def close(self):
        if self.conn:
            self.conn.quit()
            self.conn = None

    shutdown = close


class PolicyFront:
    """Postfix's check_policy_service client on a 'full' listener."""

    name = "policy"

    def __init__(self, daemon):
        self.client = sh.PolicyClient(daemon.policy_address("full"))
        self.attrs = {}
        self.discarded = False

    def session(self, client, helo, sasl):
        self.attrs = {"client_address": client, "helo_name": helo, "sasl_username": sasl or "",
                      "sasl_method": "PLAIN" if sasl else ""}

    def _ask(self, **kw):
        action = self.client.check(dict(self.attrs, **kw))
        if action == "DUNNO":
            return "continue"
        # SPEC.md "Replies": the policy protocol cannot drop one copy of a message.
        if action.startswith("DISCARD"):
            self.discarded = True
            return "dropped"
        if action.startswith("550 5.1.1"):
            return "dropped"
        return action

    def mail(self, sender):
        self.attrs["instance"] = sh.new_instance()
        self.attrs["sender"] = sender
        self.discarded = False
        return self._ask(protocol_state="MAIL", recipient="")

    def rcpt(self, rcpt):
        return self._ask(protocol_state="RCPT", recipient=rcpt)

    def data(self, accepted):
        return set(accepted) if self.discarded else set()

    def close(self):
        """End of a scenario; the policy connection persists, as Postfix keeps it."""

    def shutdown(self):
        self.client.close()


def run_scenario(front, scenario):
    """Run the steps; returns [(step number, step, verdict seen)] for mail and rcpt steps."""
    seen = []
    accepted = []  # (index into seen, recipient) of this transaction's accepted recipients
    for n, step in enumerate(scenario["steps"]):
        if "connect" in step:
            front.session(step["connect"], step.get("helo", "client.test"), step.get("sasl"))
            accepted = []
        elif "mail" in step:
            accepted = []
            seen.append((n, step, front.mail(step["mail"])))
        elif "rcpt" in step:
            verdict = front.rcpt(step["rcpt"])
            if verdict in ("continue", "dropped"):
                accepted.append((len(seen), step["rcpt"]))
            seen.append((n, step, verdict))
        elif "data" in step:
            dropped = front.data([r for _, r in accepted])
            for i, rcpt in accepted:
                if rcpt in dropped:
                    seen[i] = (seen[i][0], seen[i][1], "dropped")
            accepted = []
        else:
            raise ValueError(f"{scenario['name']}: unknown step {step}")
    return seen


def blocklist(daemon):
    """The keys in force, from spamtrapctl list; None when the store is unreachable."""
    p = daemon.ctl("list", check=False)
    if p.returncode == 2:
        return None
    if p.returncode != 0:
        raise AssertionError(f"spamtrapctl list failed ({p.returncode}): {p.stderr}")
    return {line.split("\t", 1)[0] for line in p.stdout.splitlines() if line.strip()}


def stop_all(daemons):
    """Stop daemons at once: a libmilter listener takes seconds to notice a stop."""
    errors = []

    def stop(d):
        try:
            d.stop()
        except Exception as e:  # reported after every daemon had its chance to stop
            errors.append(e)
        finally:
            d.cleanup()

    threads = [threading.Thread(target=stop, args=(d,)) for d in daemons]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


class ScenarioTable(unittest.TestCase):
    table = load_table()

    def run_group(self, config_key, scenarios):
        config = resolve(sh.merge(self.table["config"], json.loads(config_key)), sh.free_port())
        milter_d = sh.Spamtrapd(config, roles=(), milter=True)
        policy_d = sh.Spamtrapd(config, roles=("full",))
        try:
            milter_d.start()
            wait_milter(milter_d)
            policy_d.start()
            fronts = [MilterFront(milter_d), PolicyFront(policy_d)]
            mismatches = []
            for sc in scenarios:
                for front in fronts:
                    for n, step, verdict in run_scenario(front, sc):
                        if verdict != step["expect"]:
                            what = "mail" if "mail" in step else "rcpt"
                            mismatches.append(f"{front.name}: {sc['name']}: step {n} {what} <{step[what]}>: "
                                              f"got {verdict!r}, want {step['expect']!r}")
                    front.close()
            for front in fronts:
                front.shutdown()
            self.assertEqual(mismatches, [], "\n" + "\n".join(mismatches))
            self.check_blocklists(scenarios, blocklist(milter_d), blocklist(policy_d))
        finally:
            stop_all([milter_d, policy_d])

    def check_blocklists(self, scenarios, milter_keys, policy_keys):
        self.assertEqual(milter_keys, policy_keys, "the two front ends left different blocklists")
        if milter_keys is None:
            return
        self.assertFalse({"", "<>"} & milter_keys, "the null sender was blocklisted")
        for sc in scenarios:
            for key in sc.get("blocklisted", []):
                self.assertIn(key, milter_keys, f"{sc['name']}: {key} not blocklisted")
            for key in sc.get("not_blocklisted", []):
                self.assertNotIn(key, milter_keys, f"{sc['name']}: {key} blocklisted")


def flatten(config, prefix=""):
    """["traps_action_reject"] from {"traps": {"action": "reject"}}: a test name part."""
    out = []
    for k, v in config.items():
        if isinstance(v, dict):
            out += flatten(v, f"{prefix}{k}_")
        elif k not in ("host", "port"):
            out.append(f"{prefix}{k}_{v}".replace("-", "_"))
    return out


def _add_group_tests():
    for i, (key, scenarios) in enumerate(groups(ScenarioTable.table).items()):
        label = "_".join(flatten(json.loads(key))) or "base"

        def test(self, key=key, scenarios=scenarios):
            self.run_group(key, scenarios)

        test.__doc__ = "; ".join(sc["name"] for sc in scenarios)
        setattr(ScenarioTable, f"test_{i:02d}_{label}", test)


_add_group_tests()

if __name__ == "__main__":
    unittest.main(verbosity=2, argv=[sys.argv[0]] + sys.argv[1:])
