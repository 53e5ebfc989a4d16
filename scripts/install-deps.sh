#!/bin/sh
# Install what spamtrapd needs from Debian's archive, only when missing.
#   scripts/install-deps.sh build   compiler, CMake, the libraries
#   scripts/install-deps.sh test    build + cmocka, Postfix, Redis, postgrey, Python, prometheus (promtool)
#   scripts/install-deps.sh bench   = test (postgrey, which the bench runs side by side,
#                                   is in test for tests/integration/test_greylist_postgrey.py)
#   scripts/install-deps.sh valgrind  what make valgrind needs (= test: ctest's
#                                     valgrind.session runs in make test too)
#   scripts/install-deps.sh deb     build + Debian packaging tools (make deb, make deb-test)
#   scripts/install-deps.sh fuzz    build + clang and its libFuzzer runtime (make fuzz)
set -eu

build="build-essential cmake pkg-config libmilter-dev libjansson-dev libsqlite3-dev
       libhiredis-dev libpcre2-dev libunbound-dev"
test="$build libcmocka-dev postfix redis-server python3 python3-yaml sqlite3 miltertest swaks clang-format valgrind
      postgrey rbldnsd python3-dnslib nftables ipset fail2ban prometheus systemd"
bench=$test
valgrind=$test
deb="$build debhelper dpkg-dev fakeroot lintian go-md2man python3 procps"
# libclang-rt-14-dev holds libclang_rt.fuzzer (-fsanitize=fuzzer) for Debian 12's clang 14;
# cmocka and Python because fuzz/ is configured with the tests.
fuzz="$build clang libclang-rt-14-dev libcmocka-dev python3"

case "${1:-build}" in
build) want=$build ;;
test) want=$test ;;
bench) want=$bench ;;
valgrind) want=$valgrind ;;
deb) want=$deb ;;
fuzz) want=$fuzz ;;
*) echo "usage: $0 build|test|bench|valgrind|deb|fuzz" >&2; exit 2 ;;
esac

missing=""
for p in $want; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "installing:$missing"
# Postfix must not ask questions nor configure a system mail server.
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
# Packages must not start system services (redis, postgrey, postfix) here:
# tests start their own instances on free ports.
if [ ! -e /usr/sbin/policy-rc.d ]; then
	printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
	$SUDO chmod 755 /usr/sbin/policy-rc.d
	trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
