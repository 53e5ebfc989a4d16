"""Run one ctest entry; fail it when a sanitizer or valgrind left a report (Python 3 stdlib only).

    run_checked.py REPORT_DIR [--native] -- COMMAND [ARG...]

A sanitizer report only fails a test if someone looks at it. Exit codes do
not always get looked at: a detached daemon's stderr is /dev/null and
nobody waits for its PID, a test may accept "any non-zero" from a program
expected to fail, and a daemon that dies in the middle of a test shows up
as a closed connection. So every report goes to a file, and this wrapper
fails the test when one appeared, whatever the test said:

- sanitizers: ASAN_OPTIONS and UBSAN_OPTIONS (set by tests/CMakeLists.txt)
  get log_path=REPORT_DIR/sanitizer here, so every sanitized process of the
  test (daemon, spamtrapctl, unit test, bench tool) writes its reports to
  REPORT_DIR/sanitizer.PID instead of stderr;
- valgrind: SPAMTRAPD_WRAPPER (the harness puts it in front of spamtrapd
  and spamtrapctl) runs valgrind -q --log-file=%q{SPAMTRAPD_REPORT_DIR}/valgrind.%p,
  which writes nothing unless it has something to report.

So any non-empty file in REPORT_DIR is a report. REPORT_DIR is emptied
first, exported as SPAMTRAPD_REPORT_DIR (the harness quotes the reports of
its daemon in its failure messages), and made writable by everyone (1777,
like /tmp): the daemon writes its report after switching to "nobody".

--native: COMMAND is one of our programs (a unit test), so
SPAMTRAPD_WRAPPER goes in front of it too; a Python test script never gets it.

Exit status: COMMAND's (77, skipped, included) when no report appeared,
otherwise 1 after printing the reports.
"""

import os
import shlex
import subprocess
import sys

REPORT_LINES = 200  # per report; the whole file stays in REPORT_DIR


def usage():
    sys.exit("usage: run_checked.py REPORT_DIR [--native] -- COMMAND [ARG...]")


def parse(argv):
    if len(argv) < 3 or "--" not in argv:
        usage()
    cut = argv.index("--")
    opts, command = argv[1:cut], argv[cut + 1:]
    if not opts or not command or any(o != "--native" for o in opts[1:]):
        usage()
    return opts[0], "--native" in opts[1:], command


def fresh_dir(path):
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        os.unlink(os.path.join(path, name))
    os.chmod(path, 0o1777)


def with_log_path(options, path):
    """A sanitizer options string with log_path set (the last setting of a flag wins)."""
    return f"{options}:log_path={path}" if options else f"log_path={path}"


def environment(report_dir):
    env = dict(os.environ)
    env["SPAMTRAPD_REPORT_DIR"] = report_dir
    log_path = os.path.join(report_dir, "sanitizer")
    for name in ("ASAN_OPTIONS", "UBSAN_OPTIONS"):
        env[name] = with_log_path(env.get(name, ""), log_path)
    return env


def reports(report_dir):
    """(name, text) of every non-empty file in report_dir, oldest first."""
    found = []
    for name in os.listdir(report_dir):
        path = os.path.join(report_dir, name)
        if os.path.isfile(path) and os.path.getsize(path) > 0:
            found.append((os.path.getmtime(path), name, path))
    out = []
    for _, name, path in sorted(found):
        with open(path, encoding="utf-8", errors="replace") as f:
            out.append((name, f.read()))
    return out


def show(report_dir, found, code):
    print(f"\nrun_checked: the test exited {code}, and {len(found)} report(s) appeared in {report_dir}:",
          file=sys.stderr)
    for name, text in found:
        lines = text.splitlines()
        print(f"---- {name} ----", file=sys.stderr)
        print("\n".join(lines[:REPORT_LINES]), file=sys.stderr)
        if len(lines) > REPORT_LINES:
            print(f"... ({len(lines) - REPORT_LINES} more lines in the file)", file=sys.stderr)


def main(argv):
    report_dir, native, command = parse(argv)
    report_dir = os.path.abspath(report_dir)
    fresh_dir(report_dir)
    env = environment(report_dir)
    if native:
        command = shlex.split(env.get("SPAMTRAPD_WRAPPER", "")) + command
    sys.stdout.flush()
    code = subprocess.call(command, env=env)
    found = reports(report_dir)
    if found:
        show(report_dir, found, code)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
