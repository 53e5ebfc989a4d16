#!/usr/bin/python3
"""Convert the OpenSPF RFC 7208 test suite (YAML) into the JSON that
tests/unit/test_spf_suite.c reads: usage yaml2json.py IN.yml OUT.json.

The zone data is normalised here, as the suite's header asks of a driver:
- an SPF entry is served as TXT too, unless the name has a TXT entry of
  its own (a "TXT: NONE" entry only says "no TXT record here");
- a TXT/SPF value given as a list is one record of several strings, joined;
- MX entries keep only the exchange name; TIMEOUT marks a name whose
  lookups of types it has no record of time out.

Output: [{"description", "zone": {name: {"TXT": [...], "A": [...],
"AAAA": [...], "MX": [...], "PTR": [...], "CNAME": [...], "timeout": bool}},
"tests": [{"name", "host", "mailfrom", "helo", "results": [...],
"explanation"?}]}]. Names are lower case without a trailing dot.

Runs under Debian's /usr/bin/python3 with python3-yaml.
"""
import json
import os
import sys

try:
    import yaml
except ImportError:
    sys.exit("yaml2json.py: needs the Debian package python3-yaml (run under /usr/bin/python3)")


def text(v):
    if isinstance(v, list):
        return "".join(str(p) for p in v)
    return str(v)


def zone_entry(records):
    out = {"TXT": [], "A": [], "AAAA": [], "MX": [], "PTR": [], "CNAME": [], "timeout": False}
    spf = []
    explicit_txt = False
    for r in records:
        if r == "TIMEOUT":
            out["timeout"] = True
            continue
        for rtype, v in r.items():
            if rtype == "SPF":
                spf.append(text(v))
            elif rtype == "TXT":
                explicit_txt = True
                if v != "NONE":
                    out["TXT"].append(text(v))
            elif rtype == "MX":
                out["MX"].append(str(v[1]))
            elif rtype in ("A", "AAAA", "PTR", "CNAME"):
                out[rtype].append(str(v))
            else:
                sys.exit("yaml2json.py: unknown record type %r" % rtype)
    if not explicit_txt:
        out["TXT"].extend(spf)
    return out


def name_key(name):
    return str(name).lower().rstrip(".")


def convert(doc):
    zone = {name_key(n): zone_entry(recs or []) for n, recs in doc.get("zonedata", {}).items()}
    tests = []
    for name, t in doc["tests"].items():
        results = t["result"] if isinstance(t["result"], list) else [t["result"]]
        case = {
            "name": name,
            "host": str(t["host"]),
            "mailfrom": str(t.get("mailfrom", "")),
            "helo": str(t.get("helo", "")),
            "results": [str(r) for r in results],
        }
        if "explanation" in t:
            case["explanation"] = str(t["explanation"])
        tests.append(case)
    return {"description": str(doc["description"]), "zone": zone, "tests": tests}


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: yaml2json.py IN.yml OUT.json")
    with open(sys.argv[1], encoding="utf-8") as f:
        docs = [convert(d) for d in yaml.safe_load_all(f) if d]
    with open(sys.argv[2] + ".tmp", "w", encoding="utf-8") as f:
        json.dump(docs, f, indent=1, ensure_ascii=True)
    os.replace(sys.argv[2] + ".tmp", sys.argv[2])


if __name__ == "__main__":
    main()
