#!/bin/sh
# Build the spamtrapd .deb from this checkout and check it with lintian.
#   packaging/build-deb.sh [OUTDIR]      (default: build-deb)
# The sources (tracked and new files, nothing git ignores) are copied to a
# scratch tree where packaging/debian becomes debian/, so the checkout
# stays clean; dpkg-buildpackage -us -uc -b builds there. The .deb,
# .buildinfo and .changes land in OUTDIR. Fails when lintian reports an
# error.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-build-deb}
mkdir -p "$out"
out=$(cd "$out" && pwd)

version=$(dpkg-parsechangelog -l "$top/packaging/debian/changelog" -S Version)
work=$(mktemp -d "${TMPDIR:-/tmp}/spamtrapd-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
src="$work/spamtrapd-$version"
mkdir "$src"

if git -C "$top" rev-parse --git-dir >/dev/null 2>&1; then
	# --ignore-failed-read: a tracked file deleted in the work tree is skipped.
	(cd "$top" && git ls-files -z --cached --others --exclude-standard |
		tar --null --no-recursion --ignore-failed-read -T - -cf -) | tar -C "$src" -xf -
else
	tar -C "$top" --exclude=./.git --exclude='./build*' --exclude=./var -cf - . | tar -C "$src" -xf -
fi
rm -rf "$src/debian"
cp -a "$top/packaging/debian" "$src/debian"

jobs=$(nproc 2>/dev/null || echo 1)
[ "$jobs" -le 2 ] || jobs=2
(cd "$src" && DEB_BUILD_OPTIONS="parallel=$jobs ${DEB_BUILD_OPTIONS:-}" dpkg-buildpackage -us -uc -b)

changes=$(ls "$work"/spamtrapd_*.changes)
echo "lintian:"
lintian --fail-on error "$changes"
for f in "$work"/spamtrapd_*.deb "$work"/spamtrapd_*.buildinfo "$changes"; do
	cp "$f" "$out/"
done
ls "$out"/spamtrapd_"$version"_*.deb
