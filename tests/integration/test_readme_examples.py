"""The README's spamtrapctl examples, run as the README shows them.

README.md "Managing the blocklist" tells a newcomer to run
`scripts/spamtrapctl ...` from the checkout after `make run`. Each line of
that block runs here with `sh -c`, unchanged, in a copy of the checkout's
layout: scripts/spamtrapctl and conf/spamtrapd.json as shipped, and var/
prepared as `make run` prepares it (owned by "nobody" when run as root).
$SPAMTRAPCTL (set by ctest) names the binary the wrapper runs. A README
example that stops working from a checkout (a user that does not exist, a
store path that is not the one `make run` uses) fails here.
"""

import os
import re
import shutil
import subprocess
import tempfile
import unittest

import spamtrapd_harness as sh

SOURCE = os.environ.get("SPAMTRAPD_SOURCE_DIR") or os.path.join(os.path.dirname(__file__), "..", "..")
WRAPPER = "scripts/spamtrapctl"


def readme_block(heading):
    """The lines of the first ```sh block after the `## heading` line of README.md."""
    with open(os.path.join(SOURCE, "README.md")) as f:
        text = f.read()
    m = re.search(r"^## " + re.escape(heading) + r"\n.*?^```sh\n(.*?)^```", text, re.M | re.S)
    if not m:
        raise AssertionError(f"README.md has no ```sh block under '## {heading}'")
    return [line for line in m.group(1).splitlines() if line.strip()]


class ReadmeCtlExamples(unittest.TestCase):
    def setUp(self):
        sh.binary("SPAMTRAPCTL")
        self.dir = tempfile.mkdtemp(prefix="streadme.")
        self.addCleanup(shutil.rmtree, self.dir, True)
        os.chmod(self.dir, 0o755)  # "nobody" must reach var/ (make run's user when root)
        for sub, name in (("scripts", "spamtrapctl"), ("conf", "spamtrapd.json")):
            os.mkdir(os.path.join(self.dir, sub))
            shutil.copy2(os.path.join(SOURCE, sub, name), os.path.join(self.dir, sub, name))
        var = os.path.join(self.dir, "var")
        os.mkdir(var)
        if os.geteuid() == 0:  # as the Makefile's run target does
            shutil.chown(var, "nobody")

    def sh(self, line):
        p = subprocess.run(["sh", "-c", line], cwd=self.dir, capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0, f"{line}\nstdout: {p.stdout}\nstderr: {p.stderr}")
        return p.stdout

    def test_wrapper_uses_the_store_make_run_serves(self):
        with open(os.path.join(SOURCE, "Makefile")) as f:
            run = re.search(r"^run:.*?\n((?:\t.*\n)+)", f.read(), re.M).group(1)
        with open(os.path.join(SOURCE, WRAPPER)) as f:
            wrapper = f.read()
        path = re.search(r"-o store\.sqlite\.path=(\S+)", run).group(1)
        self.assertIn(f"store.sqlite.path=$root/{path}", wrapper)
        self.assertIn("-c conf/spamtrapd.json", run)
        self.assertIn('-c "$root/conf/spamtrapd.json"', wrapper)

    def test_managing_the_blocklist(self):
        lines = readme_block("Managing the blocklist")
        self.assertGreaterEqual(len(lines), 5)
        # The entries the examples look up and remove, as trap hits would have left them.
        self.sh(f"{WRAPPER} add 192.0.2.7 --reason 'trap hit'")
        self.sh(f"{WRAPPER} add 192.0.2.0/24 --reason 'trap hit'")
        outputs = {}
        for line in lines:
            with self.subTest(line=line):
                self.assertTrue(line.startswith(WRAPPER + " "), "a README example that does not run from a checkout")
                outputs[line] = self.sh(line)
        listed = [row.split("\t")[0] for row in self.sh(f"{WRAPPER} list").splitlines()]
        self.assertEqual(sorted(listed), ["192.0.2.7", "spammer@example.com"])
        lookup = next(out for line, out in outputs.items() if " lookup 192.0.2.7" in line)
        self.assertIn("192.0.2.7: blocklisted until", lookup)
        self.assertTrue(os.path.exists(os.path.join(self.dir, "backup")))


if __name__ == "__main__":
    unittest.main(verbosity=2)
