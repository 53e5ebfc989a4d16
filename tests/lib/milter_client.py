"""The MTA side of the Sendmail milter protocol, version 6 (Python 3 stdlib).

Enough of what Postfix's milter8 client does to drive a milter without an
MTA: option negotiation (including the macro lists a filter may request
with smfi_setsymlist), macros, connect, HELO, MAIL, RCPT, end of message
(with the recipient removals a filter asks for), abort and quit.

    from milter_client import MilterClient
    with MilterClient.open("inet:8890@127.0.0.1") as m:
        m.negotiate()
        m.connect("client.example", "192.0.2.7")
        m.helo("client.example")
        r = m.mail("<a@example.com>", macros={"i": "ABC123", "{auth_authen}": "alice"})
        assert r.action == "continue", r
        m.rcpt("<trap@example.com>")
        end = m.eom()
        print(end.action, end.deleted)   # "continue", ["<trap@example.com>"]

Wire format: every packet is a 4-byte big-endian length (counting the
command byte), a command byte and its data; strings end in NUL. A step
the filter negotiated "no reply" for (SMFIP_NR_*) gets no answer; the
client then returns a Reply with action "noreply".
"""

import socket
import struct
from typing import List, NamedTuple, Optional

PROTOCOL_VERSION = 6

# Actions the MTA offers (SMFIF_*): everything Postfix 3.x offers.
SMFIF_ADDHDRS = 0x01
SMFIF_CHGBODY = 0x02
SMFIF_ADDRCPT = 0x04
SMFIF_DELRCPT = 0x08
SMFIF_CHGHDRS = 0x10
SMFIF_QUARANTINE = 0x20
SMFIF_CHGFROM = 0x40
SMFIF_ADDRCPT_PAR = 0x80
SMFIF_SETSYMLIST = 0x100
ALL_ACTIONS = 0x1FF

# Protocol steps (SMFIP_*).
SMFIP_NOCONNECT = 0x1
SMFIP_NOHELO = 0x2
SMFIP_NOMAIL = 0x4
SMFIP_NORCPT = 0x8
SMFIP_NOBODY = 0x10
SMFIP_NOHDRS = 0x20
SMFIP_NOEOH = 0x40
SMFIP_NR_HDR = 0x80
SMFIP_NOUNKNOWN = 0x100
SMFIP_NODATA = 0x200
SMFIP_SKIP = 0x400
SMFIP_RCPT_REJ = 0x800
SMFIP_NR_CONN = 0x1000
SMFIP_NR_HELO = 0x2000
SMFIP_NR_MAIL = 0x4000
SMFIP_NR_RCPT = 0x8000
SMFIP_NR_DATA = 0x10000
SMFIP_NR_UNKN = 0x20000
SMFIP_NR_EOH = 0x40000
SMFIP_NR_BODY = 0x80000
SMFIP_HDR_LEADSPC = 0x100000
ALL_STEPS = 0x1FFFFF

STEP_NAMES = {
    SMFIP_NOCONNECT: "NOCONNECT", SMFIP_NOHELO: "NOHELO", SMFIP_NOMAIL: "NOMAIL",
    SMFIP_NORCPT: "NORCPT", SMFIP_NOBODY: "NOBODY", SMFIP_NOHDRS: "NOHDRS", SMFIP_NOEOH: "NOEOH",
    SMFIP_NR_HDR: "NR_HDR", SMFIP_NOUNKNOWN: "NOUNKNOWN", SMFIP_NODATA: "NODATA", SMFIP_SKIP: "SKIP",
    SMFIP_RCPT_REJ: "RCPT_REJ", SMFIP_NR_CONN: "NR_CONN", SMFIP_NR_HELO: "NR_HELO",
    SMFIP_NR_MAIL: "NR_MAIL", SMFIP_NR_RCPT: "NR_RCPT", SMFIP_NR_DATA: "NR_DATA",
    SMFIP_NR_UNKN: "NR_UNKN", SMFIP_NR_EOH: "NR_EOH", SMFIP_NR_BODY: "NR_BODY",
    SMFIP_HDR_LEADSPC: "HDR_LEADSPC",
}

# Macro stages (SMFIM_*) as in smfi_setsymlist, and the command each precedes.
SMFIM_CONNECT, SMFIM_HELO, SMFIM_ENVFROM, SMFIM_ENVRCPT, SMFIM_DATA, SMFIM_EOM, SMFIM_EOH = range(7)
STAGE_COMMAND = {SMFIM_CONNECT: b"C", SMFIM_HELO: b"H", SMFIM_ENVFROM: b"M", SMFIM_ENVRCPT: b"R",
                 SMFIM_DATA: b"T", SMFIM_EOM: b"E", SMFIM_EOH: b"N"}

# Postfix's default macro lists (postconf -d milter_*_macros, Postfix 3.7),
# used when the filter asks for none of its own.
POSTFIX_DEFAULT_MACROS = {
    SMFIM_CONNECT: ["j", "{daemon_name}", "{daemon_addr}", "v", "_"],
    SMFIM_HELO: ["{tls_version}", "{cipher}", "{cipher_bits}", "{cert_subject}", "{cert_issuer}"],
    SMFIM_ENVFROM: ["i", "{auth_type}", "{auth_authen}", "{auth_author}", "{mail_addr}", "{mail_host}",
                    "{mail_mailer}"],
    SMFIM_ENVRCPT: ["i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"],
    SMFIM_DATA: ["i"],
    SMFIM_EOM: ["i"],
    SMFIM_EOH: ["i"],
}

# Replies from the filter.
REPLY_ACTIONS = {b"c": "continue", b"a": "accept", b"d": "discard", b"r": "reject", b"t": "tempfail",
                 b"s": "skip", b"y": "replycode"}
MODIFICATIONS = {b"+": "addrcpt", b"-": "delrcpt", b"h": "addheader", b"i": "insheader",
                 b"m": "chgheader", b"b": "replbody", b"e": "chgfrom", b"2": "addrcpt_par",
                 b"q": "quarantine", b"p": "progress"}

MAX_PACKET = 1 << 20


class MilterProtocolError(Exception):
    """The filter broke the protocol, closed the connection or timed out."""


class Reply(NamedTuple):
    """The filter's answer to one step.

    action: continue, accept, discard, reject, tempfail, skip, replycode or
    noreply; for replycode, code is "550" etc. and text the rest of the
    line ("5.7.1 Sender is blocklisted ..."). modifications: (name, data)
    pairs sent before the answer (end of message only)."""

    action: str
    code: str = ""
    text: str = ""
    modifications: tuple = ()

    @property
    def deleted(self) -> List[str]:
        """Recipients the filter removed (smfi_delrcpt), in order."""
        return [data for name, data in self.modifications if name == "delrcpt"]

    @property
    def verdict(self) -> str:
        """One word an SMTP client would see: continue, reject, tempfail or
        discard (replycode is reject or tempfail by its first digit)."""
        if self.action == "replycode":
            return "reject" if self.code.startswith("5") else "tempfail"
        if self.action in ("noreply", "accept", "skip"):
            return "continue"
        return self.action

    @property
    def smtp(self) -> str:
        """The SMTP reply line for reject/tempfail ("550 5.7.1 text"), else ""."""
        if self.action == "replycode":
            return ("%s %s" % (self.code, self.text)).strip()
        return {"reject": "550 5.7.1 Command rejected", "tempfail": "451 4.7.1 Service unavailable"}.get(
            self.action, "")


class Negotiated(NamedTuple):
    version: int
    actions: int
    steps: int
    macros: dict  # stage -> [macro names] the filter asked for

    def step_names(self):
        return sorted(n for bit, n in STEP_NAMES.items() if self.steps & bit)


def parse_spec(spec):
    """A libmilter socket spec (inet:PORT@HOST, inet6:PORT@HOST, unix:PATH,
    local:PATH) as (family, address) for socket.connect."""
    kind, _, rest = spec.partition(":")
    if kind in ("unix", "local"):
        return socket.AF_UNIX, rest
    port, _, host = rest.partition("@")
    host = host or ("::1" if kind == "inet6" else "127.0.0.1")
    if kind == "inet6":
        return socket.AF_INET6, (host.strip("[]"), int(port))
    if kind == "inet":
        return socket.AF_INET, (host, int(port))
    raise ValueError("not a milter socket spec: %r" % spec)


def _cstr(s):
    return s.encode("utf-8", "surrogateescape") + b"\0"


class MilterClient:
    """One milter connection, i.e. one SMTP session as Postfix sees it."""

    def __init__(self, sock, actions=ALL_ACTIONS, steps=ALL_STEPS):
        self.sock = sock
        self.offer_actions = actions
        self.offer_steps = steps
        self.negotiated: Optional[Negotiated] = None
        self._buf = b""

    @classmethod
    def open(cls, spec, timeout=10.0, **kw):
        family, address = parse_spec(spec)
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        return cls(sock, **kw)

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ wire
    def send(self, cmd: bytes, data: bytes = b""):
        self.sock.sendall(struct.pack(">I", len(data) + 1) + cmd + data)

    def _read_exact(self, n):
        while len(self._buf) < n:
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout as e:
                raise MilterProtocolError("timed out waiting for the filter") from e
            if not chunk:
                raise MilterProtocolError("the filter closed the connection")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def recv(self):
        """One packet: (command byte, data)."""
        (length,) = struct.unpack(">I", self._read_exact(4))
        if length < 1 or length > MAX_PACKET:
            raise MilterProtocolError("bad packet length %d" % length)
        body = self._read_exact(length)
        return body[:1], body[1:]

    def expect_silence(self, wait=0.2):
        """True when the filter sends nothing within wait seconds."""
        if self._buf:
            return False
        old = self.sock.gettimeout()
        self.sock.settimeout(wait)
        try:
            return not self.sock.recv(1, socket.MSG_PEEK)
        except (socket.timeout, BlockingIOError):
            return True
        finally:
            self.sock.settimeout(old)

    # ------------------------------------------------------ negotiation
    def negotiate(self, version=PROTOCOL_VERSION):
        self.send(b"O", struct.pack(">III", version, self.offer_actions, self.offer_steps))
        cmd, data = self.recv()
        if cmd != b"O" or len(data) < 12:
            raise MilterProtocolError("bad option negotiation reply %r %r" % (cmd, data[:32]))
        v, actions, steps = struct.unpack(">III", data[:12])
        macros = {}
        rest = data[12:]
        while len(rest) >= 5:
            (stage,) = struct.unpack(">I", rest[:4])
            names, _, rest = rest[4:].partition(b"\0")
            macros[stage] = names.decode().split()
        self.negotiated = Negotiated(v, actions, steps, macros)
        return self.negotiated

    def _wants(self, step_flag):
        return not (self.negotiated and self.negotiated.steps & step_flag)

    def _no_reply(self, nr_flag):
        return bool(self.negotiated and self.negotiated.steps & nr_flag)

    def macro_names(self, stage):
        """The macros Postfix would send at stage: the filter's own list if it
        sent any (then every stage it did not name gets none), else Postfix's
        defaults."""
        if self.negotiated and self.negotiated.macros:
            return self.negotiated.macros.get(stage, [])
        return POSTFIX_DEFAULT_MACROS[stage]

    def send_macros(self, stage, values):
        """Send the macros of values ({name: value}) that stage wants."""
        if not values:
            return
        data = b""
        for name in self.macro_names(stage):
            for key in (name, name.strip("{}"), "{%s}" % name.strip("{}")):
                if key in values:
                    data += _cstr(name) + _cstr(values[key])
                    break
        if data:
            self.send(b"D", STAGE_COMMAND[stage] + data)

    def _answer(self, nr_flag=0):
        if nr_flag and self._no_reply(nr_flag):
            return Reply("noreply")
        mods = []
        while True:
            cmd, data = self.recv()
            if cmd in REPLY_ACTIONS:
                break
            if cmd not in MODIFICATIONS:
                raise MilterProtocolError("unknown reply %r" % cmd)
            mods.append((MODIFICATIONS[cmd], data.rstrip(b"\0").decode("utf-8", "replace")))
        action = REPLY_ACTIONS[cmd]
        if action != "replycode":
            return Reply(action, modifications=tuple(mods))
        line = data.rstrip(b"\0").decode("utf-8", "replace")
        code, _, text = line.partition(" ")
        return Reply(action, code, text, tuple(mods))

    # ----------------------------------------------------------- steps
    def connect(self, hostname, address, port=25, macros=None):
        """address: IPv4 or IPv6 text, or None for an unknown family."""
        self.send_macros(SMFIM_CONNECT, macros)
        if not self._wants(SMFIP_NOCONNECT):
            return Reply("continue")
        if address is None:
            data = _cstr(hostname) + b"U"
        else:
            family = b"6" if ":" in address else b"4"
            data = _cstr(hostname) + family + struct.pack(">H", port) + _cstr(address)
        self.send(b"C", data)
        return self._answer(SMFIP_NR_CONN)

    def helo(self, name, macros=None):
        self.send_macros(SMFIM_HELO, macros)
        if not self._wants(SMFIP_NOHELO):
            return Reply("continue")
        self.send(b"H", _cstr(name))
        return self._answer(SMFIP_NR_HELO)

    def mail(self, sender, *esmtp_args, macros=None):
        """sender as Postfix sends it, with angle brackets: "<a@b>", "<>"."""
        self.send_macros(SMFIM_ENVFROM, macros)
        self.send(b"M", b"".join(_cstr(a) for a in (sender,) + esmtp_args))
        return self._answer(SMFIP_NR_MAIL)

    def rcpt(self, recipient, *esmtp_args, macros=None):
        self.send_macros(SMFIM_ENVRCPT, macros)
        self.send(b"R", b"".join(_cstr(a) for a in (recipient,) + esmtp_args))
        return self._answer(SMFIP_NR_RCPT)

    def data(self, macros=None):
        self.send_macros(SMFIM_DATA, macros)
        if not self._wants(SMFIP_NODATA):
            return Reply("continue")
        self.send(b"T")
        return self._answer(SMFIP_NR_DATA)

    def header(self, name, value):
        if not self._wants(SMFIP_NOHDRS):
            return Reply("continue")
        self.send(b"L", _cstr(name) + _cstr(value))
        return self._answer(SMFIP_NR_HDR)

    def eoh(self, macros=None):
        self.send_macros(SMFIM_EOH, macros)
        if not self._wants(SMFIP_NOEOH):
            return Reply("continue")
        self.send(b"N")
        return self._answer(SMFIP_NR_EOH)

    def body(self, chunk: bytes):
        if not self._wants(SMFIP_NOBODY):
            return Reply("continue")
        self.send(b"B", chunk)
        return self._answer(SMFIP_NR_BODY)

    def eom(self, macros=None):
        """End of message; the Reply carries the modifications (deleted)."""
        self.send_macros(SMFIM_EOM, macros)
        self.send(b"E")
        return self._answer()

    def message(self, headers=(("Subject", "test"),), body=b"test\r\n", macros=None):
        """DATA, headers, end of headers, body and end of message, each step
        only when the filter wants it (as Postfix does); returns the last
        answer, or the first that is not continue."""
        for step in (lambda: self.data(macros), *[lambda h=h: self.header(*h) for h in headers],
                     lambda: self.eoh(macros), lambda: self.body(body)):
            r = step()
            if r.verdict != "continue":
                return r
        return self.eom(macros)

    def abort(self):
        """End the transaction (RSET); no reply."""
        self.send(b"A")

    def quit(self):
        """End the session; no reply. Closes the socket."""
        try:
            self.send(b"Q")
        finally:
            self.close()
