"""Side by side with Debian's real postgrey 1.37 (issue 13): one sequence of
policy requests, as Postfix's smtpd sends them at RCPT (and one at DATA), to
postgrey and to spamtrapd's greylist check configured alike: the verdicts
agree row by row, except on the rows where spamtrapd differs from postgrey
on purpose (docs/greylist.md, docs/greylist-whitelists.md), which are
listed below with the difference asserted.

Both servers run with a 3 s delay, a 1 h retry window, a 35 d max age,
/24 and /64 client networks, auto-whitelisting after one pass by client
address, the same whitelist files (and the same single entries: postgrey
gets them as a second file) and the same texts: postgrey's
--greylist-text and --x-greylist-header say what spamtrapd's default
greylist.reply and header_text say.

A verdict is normalised to its class: defer, pass, pass-with-header (a
PREPEND of the X-Greylist header) or reject (5xx: spamtrapd's trap
answer). Each side's deferral text must be its configured reply with the
seconds remaining, and each header its configured header with the seconds
waited: exactly the delay for a new triplet, between 1 and the delay for an
early retry, at least the delay after it.

Time: phase 1 sends every first attempt (and the early retries right after
them), then the test waits until the delay has passed for all of them
(plus 1 s: postgrey counts whole seconds), and phase 2 sends the retries.
No assertion depends on the machine's speed: the test measures when each
request went out, and an early retry that came late (a stalled machine)
is reported as not judged instead of asserted either way.

test_side_by_side runs both (spamtrapd on SQLite, its policy listener
with role full: the null sender's deferral comes at DATA);
test_postgrey_alone runs postgrey against the table alone, so that a
change of postgrey's (a new Debian version) shows as such.
"""

import collections
import os
import re
import shutil
import sys
import tempfile
import time
import unittest

import postgrey_harness as ph
import spamtrapd_harness as sh

DELAY = 3  # seconds, both sides
TRAP = "trap@dest.test"

DEFER, PASS, HEADER, REJECT = "defer", "pass", "pass-with-header", "reject"

# What both sides say: spamtrapd's defaults, and postgrey told to say the same.
PG_TEXT = "Greylisted, try again in %s seconds"
PG_HEADER = "X-Greylist: delayed %t seconds by spamtrapd; %d"
DEFER_TEXT = re.compile(r"(?:4\d\d )?4\.2\.0 Greylisted, try again in (\d+) seconds")
HEADER_TEXT = re.compile(r"X-Greylist: delayed (\d+) seconds by spamtrapd; \S.*")

# postgrey's syntax; one file for both servers (spamtrapd: greylist.client_files / recipient_files).
CLIENT_FILE = [
    "# side-by-side test (postgrey syntax)",
    "203.0.113.5",
    "203.0.113.64/26",
    "mx.example.org            # a host name: client_name is it or ends in .mx.example.org",
    "10.20                     # postgrey: 10.20.0.0/24 (its mask bug); spamtrapd: 10.20.0.0/16",
]
RECIPIENT_FILE = [
    "postmaster@",
    "abuse@example.net",
    "example.org               # the domain and its subdomains",
    "@example.com              # spamtrapd: that domain; postgrey: no recipient",
]
# Single entries: spamtrapd's greylist.clients / recipients, postgrey's second file.
CLIENT_LIST = ["198.18.3.3"]
RECIPIENT_LIST = ["listed@dest.test"]

Row = collections.namedtuple("Row", "name attrs postgrey spamtrapd why timer message_of")
WAIT = "wait"  # the step between phase 1 and phase 2


def row(name, client, sender, recipient, postgrey, spamtrapd=None, why=None, timer=None, message_of=None,
        **attrs):
    """One request. postgrey: the class postgrey 1.37 answers; spamtrapd: the class spamtrapd
    answers when it differs on purpose (why says why). timer: "new" (a first attempt: the
    full delay remains), ("early", ROW) (a retry of ROW's triplet before the delay),
    ("after", ROW) (a retry once the delay has passed: the header says how long it waited).
    message_of: the row whose message this request continues (its instance: DATA after RCPT)."""
    assert (spamtrapd is None) == (why is None), name
    attrs.update(client_address=client, sender=sender, recipient=recipient)
    return Row(name, attrs, postgrey, spamtrapd or postgrey, why, timer, message_of)


A, A2 = "192.0.2.10", "192.0.2.11"  # one /24
B = "198.51.100.10"  # another /24
CAROL, DAVE = "carol@sender.test", "dave@other.test"
R1, R2, R3 = "rcpt-a@dest.test", "rcpt-b@dest.test", "rcpt-c@dest.test"
V6, V6_SAME64, V6_OTHER64 = "2001:db8:1:1::5", "2001:db8:1:1::99", "2001:db8:1:2::5"
WL_CLIENT = "198.18.10.1"  # sends to the whitelisted recipients
DIFF_SRS = "SRS: spamtrapd drops the hash and the timestamp, which change daily (docs/greylist.md)"
DIFF_HEX = "hex runs: spamtrapd replaces message ids in the sender (docs/greylist.md)"
DIFF_NULL = ("null sender: spamtrapd records the triplet at RCPT but defers <> at DATA, so that sender "
             "callouts (RCPT, then QUIT) get their answer")

STEPS = [
    # ---- phase 1: first attempts ----
    row("new triplet", A, CAROL, R1, DEFER, timer="new"),
    row("early retry", A, CAROL, R1, DEFER, timer=("early", "new triplet")),
    row("another recipient of the same sender", A, CAROL, R2, DEFER, timer="new"),
    row("same sender from another /24", B, CAROL, R1, DEFER, timer="new"),
    row("IPv6 new triplet", V6, "erin@sender.test", "rcpt-v6@dest.test", DEFER, timer="new"),
    # whitelisted clients: file entries by address, network and client_name; a list entry
    row("whitelisted client: address entry", "203.0.113.5", "w1@sender.test", R1, PASS),
    row("whitelisted client: its neighbour is not", "203.0.113.6", "w1@sender.test", R1, DEFER, timer="new"),
    row("whitelisted client: network entry", "203.0.113.70", "w2@sender.test", R1, PASS),
    row("whitelisted client: outside the network", "203.0.113.130", "w2@sender.test", R1, DEFER, timer="new"),
    row("whitelisted client: host name entry (client_name)", "198.18.0.1", "w3@sender.test", R1, PASS,
        client_name="smtp1.mx.example.org"),
    row("whitelisted client: a name that only ends alike", "198.18.1.1", "w3@sender.test", R1, DEFER,
        timer="new", client_name="evilmx.example.org"),
    row("whitelisted client: reverse_client_name is never matched", "198.18.2.1", "w3@sender.test", R1, DEFER,
        timer="new", reverse_client_name="smtp1.mx.example.org"),
    row("whitelisted client: single entry", CLIENT_LIST[0], "w4@sender.test", R1, PASS),
    row("whitelisted client: partial entry, its first /24", "10.20.0.9", "w5@sender.test", R1, PASS),
    row("whitelisted client: partial entry '10.20', 10.20.7.9", "10.20.7.9", "w5@sender.test", R1, DEFER,
        spamtrapd=PASS, why="postgrey gives a two-number entry /24 (its mask bug); spamtrapd /16, what it says",
        timer="new"),
    row("whitelisted client: IPv4-mapped IPv6 of a listed address", "::ffff:203.0.113.5", "w6@sender.test", R1,
        DEFER, spamtrapd=PASS, why="spamtrapd matches ::ffff:a.b.c.d against IPv4 entries; NetAddr::IP does not",
        timer="new"),
    # whitelisted recipients
    row("whitelisted recipient: name@ entry", WL_CLIENT, "w7@sender.test", "postmaster@anywhere.test", PASS),
    row("whitelisted recipient: address entry, +extension", WL_CLIENT, "w7@sender.test", "abuse+x@example.net",
        PASS),
    row("whitelisted recipient: another name at that domain", WL_CLIENT, "w7@sender.test",
        "notabuse@example.net", DEFER, timer="new"),
    row("whitelisted recipient: domain entry, subdomain", WL_CLIENT, "w7@sender.test", "someone@sub.example.org",
        PASS),
    row("whitelisted recipient: domain entry, a name ending alike", WL_CLIENT, "w7@sender.test",
        "someone@notexample.org", DEFER, timer="new"),
    row("whitelisted recipient: single entry", WL_CLIENT, "w7@sender.test", RECIPIENT_LIST[0], PASS),
    row("whitelisted recipient: '@example.com' entry", WL_CLIENT, "w7@sender.test", "someone@example.com", DEFER,
        spamtrapd=PASS, why="postgrey turns @domain into a pattern no recipient matches; spamtrapd: the domain",
        timer="new"),
    # the trap check comes first: a trap recipient is never greylisted
    row("trap recipient", "198.18.20.1", "spam@bad.test", TRAP, DEFER, spamtrapd=REJECT,
        why="the trap check answers before greylisting (SPEC.md: a trap recipient is never greylisted)",
        timer="new"),
    # sender normalisation: first attempts (the retries with another form follow in phase 2)
    row("sender +extension: first", "172.16.1.10", "alice+one@lists.test", R1, DEFER, timer="new"),
    row("sender BATV prvs=: first", "172.16.2.10", "prvs=0123456789=bob@corp.test", R1, DEFER, timer="new"),
    row("sender numbers in words: first", "172.16.3.10", "bounce-123-456@lists.test", R1, DEFER, timer="new"),
    row("sender digits inside a word: first", "172.16.4.10", "user123@corp.test", R1, DEFER, timer="new"),
    row("sender SRS0: first", "172.16.5.10", "SRS0=HHhh=TT=orig.example=user@fwd.example", R1, DEFER, timer="new"),
    row("sender hex run: first", "172.16.6.10", "msg-a1b2c3d4e5@mailer.test", R1, DEFER, timer="new"),
    row("sender upper case: first", "172.16.7.10", "Frank@Corp.Test", R1, DEFER, timer="new"),
    row("null sender at RCPT", "172.16.8.10", "", R1, DEFER, spamtrapd=PASS, why=DIFF_NULL, timer="new"),
    # the same message at DATA: postgrey sees an early retry, spamtrapd defers the deferral it kept
    row("null sender at DATA", "172.16.8.10", "", R1, DEFER, protocol_state="DATA", recipient_count="1",
        timer=("early", "null sender at RCPT"), message_of="null sender at RCPT"),
    WAIT,
    # ---- phase 2: the delay has passed for every triplet above ----
    row("retry after the delay", A, CAROL, R1, HEADER, timer=("after", "new triplet")),
    row("same sender from another address of the /24", A2, CAROL, R1, PASS),
    row("the other /24 has its own timer", B, CAROL, R1, HEADER, timer=("after", "same sender from another /24")),
    row("auto-whitelisted client (1 pass): new sender and recipient", A, DAVE, R3, PASS),
    row("auto-whitelisted client: no header for a waiting triplet", A, CAROL, R2, PASS),
    row("auto-whitelist is by address: the /24 neighbour waits", A2, DAVE, R3, DEFER, timer="new"),
    row("IPv6 retry from the same /64", V6_SAME64, "erin@sender.test", "rcpt-v6@dest.test", HEADER,
        timer=("after", "IPv6 new triplet")),
    row("IPv6 from another /64", V6_OTHER64, "erin@sender.test", "rcpt-v6@dest.test", DEFER, timer="new"),
    row("sender +extension: another extension", "172.16.1.10", "alice+two@lists.test", R1, HEADER,
        timer=("after", "sender +extension: first")),
    row("sender BATV prvs=: another tag", "172.16.2.10", "prvs=9876543210=bob@corp.test", R1, HEADER,
        timer=("after", "sender BATV prvs=: first")),
    row("sender numbers in words: other numbers", "172.16.3.10", "bounce-789-1@lists.test", R1, HEADER,
        timer=("after", "sender numbers in words: first")),
    row("sender digits inside a word: other digits", "172.16.4.10", "user456@corp.test", R1, DEFER, timer="new"),
    row("sender SRS0: another hash and timestamp", "172.16.5.10", "SRS0=GGgg=UV=orig.example=user@fwd.example",
        R1, DEFER, spamtrapd=HEADER, why=DIFF_SRS, timer=("after", "sender SRS0: first")),
    row("sender hex run: another message id", "172.16.6.10", "msg-f6e7d8c9b0@mailer.test", R1, DEFER,
        spamtrapd=HEADER, why=DIFF_HEX, timer=("after", "sender hex run: first")),
    row("sender upper case: lower case", "172.16.7.10", "frank@corp.test", R1, HEADER,
        timer=("after", "sender upper case: first")),
    # the retry of <> passes at RCPT on both sides (the triplet started at the first RCPT), and DATA follows
    row("null sender at RCPT, retried", "172.16.8.10", "", R1, HEADER, timer=("after", "null sender at RCPT")),
    row("null sender at DATA, retried", "172.16.8.10", "", R1, PASS, protocol_state="DATA", recipient_count="1",
        message_of="null sender at RCPT, retried"),
]


def classify(action):
    """(class, text) of a policy action: DUNNO / PREPEND header / a deferral / a 5xx."""
    word, _, rest = action.partition(" ")
    if word in ("DUNNO", "OK", "PERMIT"):
        return PASS, rest
    if word == "PREPEND":
        return HEADER, rest
    if word in ("DEFER_IF_PERMIT", "DEFER") or re.fullmatch(r"4\d\d", word):
        return DEFER, action if word[0] == "4" else rest
    if word == "REJECT" or re.fullmatch(r"5\d\d", word):
        return REJECT, action
    return "other", action


class Side:
    """One server of the comparison: a name, a policy connection, its verdicts and when each went out."""

    def __init__(self, name, address):
        self.name = name
        self.client = sh.PolicyClient(address)
        self.sent = {}  # row name -> (wall time before the request, after the answer)
        self.actions = {}

    def send(self, r, instance):
        before = time.time()
        action = self.client.check(dict(r.attrs), instance=instance)
        self.sent[r.name] = (before, time.time())
        self.actions[r.name] = action
        return action


def expected_class(side, r):
    return r.spamtrapd if side.name == "spamtrapd" else r.postgrey


def judge(side, r):
    """Problems with side's answer to row r ([] when right); None when the row cannot be judged
    (an early retry that went out too late to be early)."""
    cls, text = classify(side.actions[r.name])
    want = expected_class(side, r)
    kind, first = (r.timer if isinstance(r.timer, tuple) else (r.timer, None))
    if kind == "early":
        # postgrey counts whole seconds: a retry less than DELAY - 1 s after the first is early on both sides
        elapsed = side.sent[r.name][1] - side.sent[first][0]
        if elapsed >= DELAY - 1:
            return None
    problems = []
    if cls != want:
        problems.append(f"{cls}, expected {want}")
        return problems
    if cls == DEFER:
        m = DEFER_TEXT.fullmatch(text)
        if not m:
            problems.append(f"deferral text {text!r} is not the configured reply")
        elif kind == "new" and int(m.group(1)) != DELAY:
            problems.append(f"a new triplet must wait the whole delay, {DELAY} s, not {m.group(1)}")
        elif not 1 <= int(m.group(1)) <= DELAY:
            problems.append(f"{m.group(1)} s remaining is outside 1..{DELAY}")
    if cls == HEADER:
        m = HEADER_TEXT.fullmatch(text)
        if not m:
            problems.append(f"header {text!r} is not the configured header")
        elif kind == "after":
            waited = int(m.group(1))
            most = side.sent[r.name][1] - side.sent[first][0] + 1
            if not DELAY <= waited <= most:
                problems.append(f"the header says {waited} s waited, outside {DELAY}..{most:.0f}")
    return problems


def run_steps(sides):
    """Send every step to every side; returns (table lines, failures, rows not judged)."""
    phase1_last = 0.0
    instances = {}
    for step in STEPS:
        if step == WAIT:
            # every phase-1 answer came before phase1_last: the delay (+1 s of rounding) has passed for all
            pause = phase1_last + DELAY + 1.05 - time.time()
            if pause > 0:
                time.sleep(pause)
            continue
        # one message: the same instance on every side (postgrey's header rule, spamtrapd's message state)
        instance = instances[step.message_of] if step.message_of else sh.new_instance()
        instances[step.name] = instance
        for side in sides:
            side.send(step, instance)
        phase1_last = time.time()
    lines, failures, unjudged = [], [], []
    for step in STEPS:
        if step == WAIT:
            lines.append("---- wait until the delay has passed ----")
            continue
        verdicts = []
        for side in sides:
            problems = judge(side, step)
            mark = "?" if problems is None else ("ok" if not problems else "FAIL")
            verdicts.append(f"{side.name}: {side.actions[step.name]!r} [{mark}]")
            if problems is None:
                unjudged.append(f"{side.name}: {step.name}")
            for p in problems or []:
                failures.append(f"{step.name}: {side.name}: {p}")
        if len(sides) == 2:
            same = classify(sides[0].actions[step.name])[0] == classify(sides[1].actions[step.name])[0]
            if step.why and same:
                failures.append(f"{step.name}: the sides agree, but spamtrapd should differ ({step.why})")
            elif not step.why and not same:
                failures.append(f"{step.name}: the sides disagree")
        note = f"   (differs on purpose: {step.why})" if step.why else ""
        lines.append(f"{step.name}:\n    " + "\n    ".join(verdicts) + note)
    return lines, failures, unjudged


class GreylistSideBySide(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="greylist-postgrey.")
        os.chmod(cls.dir, 0o755)  # spamtrapd reads the whitelist files as its user on reload
        cls.client_file = cls.write("whitelist_clients", CLIENT_FILE)
        cls.recipient_file = cls.write("whitelist_recipients", RECIPIENT_FILE)
        if ph.version() != "1.37":
            raise AssertionError(f"postgrey {ph.version()}: the table below is postgrey 1.37's behaviour")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, True)

    @classmethod
    def write(cls, name, lines):
        path = os.path.join(cls.dir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
        os.chmod(path, 0o644)
        return path

    def postgrey(self):
        pg = ph.Postgrey(delay=DELAY, max_age=35, retry_window="1h", auto_whitelist_clients=1,
                         greylist_text=PG_TEXT, x_greylist_header=PG_HEADER, lookup_by_subnet=True, ipv4cidr=24,
                         ipv6cidr=64, whitelist_clients=[CLIENT_FILE, CLIENT_LIST],
                         whitelist_recipients=[RECIPIENT_FILE, RECIPIENT_LIST])
        self.addCleanup(pg.cleanup)
        return pg.start()

    def spamtrapd(self):
        config = {
            "traps": {"addresses": [TRAP]},
            "greylist": {
                "mode": "enforce",
                "delay": f"{DELAY}s",
                "retry_window": "1h",
                "max_age": "35d",
                "ipv4_prefix": 24,
                "ipv6_prefix": 64,
                "awl_count": 1,
                "awl_by": "address",
                "client_files": [self.client_file],
                "recipient_files": [self.recipient_file],
                "clients": CLIENT_LIST,
                "recipients": RECIPIENT_LIST,
                "header": True,
            },
        }
        d = sh.Spamtrapd(config, roles=("full",))
        self.addCleanup(d.cleanup)
        return d.start()

    def compare(self, sides):
        for side in sides:
            self.addCleanup(side.client.close)
        lines, failures, unjudged = run_steps(sides)
        table = "\n".join(lines)
        if os.environ.get("GREYLIST_TABLE") == "1":
            print(table, file=sys.stderr)
        for u in unjudged:
            print(f"not judged (the early retry went out {DELAY - 1} s or more after the first): {u}",
                  file=sys.stderr)
        self.assertLess(len(unjudged), 2, "the machine stalled for seconds more than once: nothing to compare")
        self.assertEqual(failures, [], "\n" + table)

    def test_rows_are_consistent(self):
        """The table itself: differences are explained, timers name earlier rows, rows are unique."""
        names = [s.name for s in STEPS if s != WAIT]
        self.assertEqual(len(names), len(set(names)))
        for i, s in enumerate(STEPS):
            if s == WAIT:
                continue
            self.assertEqual(s.postgrey != s.spamtrapd, s.why is not None, s.name)
            if isinstance(s.timer, tuple):
                self.assertIn(s.timer[1], names[:names.index(s.name)], s.name)
            if s.message_of:
                self.assertIn(s.message_of, names[:names.index(s.name)], s.name)

    def test_postgrey_alone(self):
        """postgrey 1.37 gives the verdicts of the table (the postgrey half of the comparison)."""
        pg = self.postgrey()
        self.compare([Side("postgrey", pg.address)])

    def test_side_by_side(self):
        """postgrey and spamtrapd, row by row: the same class, except where spamtrapd differs on purpose."""
        pg = self.postgrey()
        d = self.spamtrapd()
        self.compare([Side("postgrey", pg.address), Side("spamtrapd", d.policy_address("full"))])


if __name__ == "__main__":
    unittest.main()
