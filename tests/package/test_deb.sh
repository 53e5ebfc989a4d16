#!/bin/bash
# Package test: the .deb as an administrator meets it.
#
# Builds the package (packaging/build-deb.sh: lintian must find no error),
# installs it with dpkg -i and checks what it installed; runs spamtrapd -t
# on the installed configuration; starts the installed daemon the way
# spamtrapd.service does, without systemd (the unit's User= and Group=,
# UMask=, NoNewPrivileges, no capabilities, MemoryDenyWriteExecute through
# prctl(PR_SET_MDWE)); does a policy round trip on 127.0.0.1:10666/10667
# (a trap hit, then that sender rejected), a reload and a SIGTERM stop;
# starts it as root to see it drop to the spamtrapd user (and refuse to
# run as root without one); purges the package and checks that nothing of
# it is left: files, configuration, state, user and group.
#
# Run as root on a machine where spamtrapd is not installed (it is
# installed and purged here) and ports 8890, 10666 and 10667 are free.
#   tests/package/test_deb.sh            (make deb-test)
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
conf=/etc/spamtrapd/spamtrapd.json
unit=/lib/systemd/system/spamtrapd.service
state=/var/lib/spamtrapd
ports=(8890 10666 10667)

passed=0
failed=0
work=""
installed_by_us=false
daemon_pid=""

# ---- bookkeeping ----

cleanup() {
	stop_daemon KILL || true
	if $installed_by_us && dpkg-query -W -f='${Status}' spamtrapd 2>/dev/null | grep -qv not-installed; then
		dpkg --purge spamtrapd >/dev/null 2>&1 || true
	fi
	[ -z "$work" ] || rm -rf "$work"
}

finish() {
	cleanup
	trap - EXIT
	echo "package: $passed passed, $failed failed"
	exit $((failed == 0 ? 0 : 1))
}

# An unexpected error (set -e) must not end in a passing summary.
on_exit() {
	local rc=$?
	if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
		failed=1
		echo "FAIL: the test script stopped with status $rc" >&2
	fi
	finish
}

pass() {
	passed=$((passed + 1))
	echo "ok: $*"
}

# A failure ends the test: what follows depends on what came before.
fail() {
	failed=$((failed + 1))
	echo "FAIL: $*" >&2
	[ -z "${daemon_log:-}" ] || [ ! -s "$daemon_log" ] || sed 's/^/  daemon: /' "$daemon_log" >&2
	finish
}

check() {
	local what=$1
	shift
	if "$@"; then pass "$what"; else fail "$what"; fi
}

# ---- helpers ----

port_open() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

all_ports_open() {
	local p
	for p in "${ports[@]}"; do port_open "$p" || return 1; done
}

no_port_open() {
	local p
	for p in "${ports[@]}"; do ! port_open "$p" || return 1; done
}

# Alive and not a zombie waiting for its exit status to be collected.
running() {
	local fields
	read -r -a fields 2>/dev/null <"/proc/$1/stat" || return 1
	[ "${fields[2]}" != Z ]
}

# wait_for SECONDS COMMAND...: poll until COMMAND succeeds; fails when the daemon died.
wait_for() {
	local deadline=$((SECONDS + $1))
	shift
	while ! "$@"; do
		[ -z "$daemon_pid" ] || running "$daemon_pid" || return 1
		[ "$SECONDS" -lt "$deadline" ] || return 1
		sleep 0.2
	done
}

# One policy delegation request (SMTPD_POLICY_README); prints the reply's action line.
policy() {
	local port=$1 line reply=""
	shift
	if ! exec 3<>"/dev/tcp/127.0.0.1/$port"; then
		echo "(no connection to port $port)"
		return 0
	fi
	printf '%s\n' request=smtpd_access_policy protocol_name=ESMTP "$@" "" >&3
	while IFS= read -r -t 10 line <&3; do
		line=${line%$'\r'}
		[ -n "$line" ] || break
		reply=$line
	done
	exec 3<&-
	printf '%s\n' "$reply"
}

# A trap hit from SENDER at CLIENT to RCPT on the trap listener; then a check of the same
# transaction's sender on the sender listener. Both must be refused.
trap_round_trip() {
	local sender=$1 client=$2 rcpt=$3 reply
	reply=$(policy 10666 protocol_state=RCPT "client_address=$client" client_name=unknown \
		helo_name=bulk.test "sender=$sender" "recipient=$rcpt" instance=debtest.1)
	[[ $reply =~ ^action=(DISCARD|5[0-9][0-9][[:space:]]) ]] ||
		fail "trap hit $rcpt from $sender: expected a reject or DISCARD, got '$reply'"
	pass "trap hit to $rcpt: $reply"
	reply=$(policy 10667 protocol_state=MAIL "client_address=$client" client_name=unknown \
		helo_name=bulk.test "sender=$sender" instance=debtest.2)
	[ "$reply" = "action=$reject_text" ] ||
		fail "sender $sender after the trap hit: expected 'action=$reject_text', got '$reply'"
	pass "blocklisted sender $sender rejected at MAIL FROM"
}

clean_sender_passes() {
	local reply
	reply=$(policy 10667 protocol_state=MAIL client_address=198.51.100.7 client_name=unknown \
		helo_name=friend.test sender=friend@friend.test instance=debtest.3)
	[ "$reply" = "action=DUNNO" ] || fail "an unknown sender: expected action=DUNNO, got '$reply'"
	pass "an unknown sender gets DUNNO"
}

# Runs a command, showing its output only when it fails.
quiet() {
	local out rc=0
	out=$("$@" 2>&1) || rc=$?
	[ "$rc" -eq 0 ] || printf '%s\n' "$out" >&2
	return "$rc"
}

# systemd-analyze verify only warns about a value it cannot parse: any output is a failure.
verify_unit() {
	local out rc=0
	out=$(systemd-analyze verify "$unit" 2>&1) || rc=$?
	[ "$rc" -eq 0 ] && [ -z "$out" ] && return 0
	printf '%s\n' "$out" >&2
	return 1
}

json_get() { # json_get FILE PYTHON-EXPRESSION-ON-c
	"$python" -c 'import json, sys; c = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

unit_value() {
	sed -n "s/^$1=//p" "$unit" | tail -n 1
}

# Sets unit_umask and unit_prefix: how spamtrapd.service runs its commands (its
# user, group and umask, no new privileges, no capabilities, no W+X memory).
read_unit() {
	local nnp=()
	grep -qx 'NoNewPrivileges=yes' "$unit" && nnp=(--no-new-privs)
	unit_umask=$(unit_value UMask)
	unit_umask=${unit_umask:-0022}
	unit_prefix=(setpriv "--reuid=$(unit_value User)" "--regid=$(unit_value Group)" --init-groups
		"${nnp[@]}" --inh-caps=-all --bounding-set=-all -- "${mdwe[@]}")
}

run_as_unit() {
	(
		umask "$unit_umask"
		exec "${unit_prefix[@]}" "$@"
	)
}

ctl_lookup_shows() {
	run_as_unit /usr/sbin/spamtrapctl -c "$conf" lookup "$1" | grep -qF "$1"
}

# start_daemon UMASK COMMAND...: in the background (the subshell becomes the
# daemon, so $! is its PID), logging to $daemon_log.
start_daemon() {
	(
		umask "$1"
		shift
		exec "$@"
	) >"$daemon_log" 2>&1 &
	daemon_pid=$!
	shift
	wait_for 30 all_ports_open || fail "the daemon did not open ports ${ports[*]}: $*"
	pass "daemon listening on ${ports[*]} ($*)"
}

# stop_daemon SIGNAL: stops the running daemon; returns its exit status (137 when it
# had to be killed after 30 seconds).
stop_daemon() {
	[ -n "$daemon_pid" ] || return 0
	local pid=$daemon_pid rc=0 deadline=$((SECONDS + 30))
	daemon_pid=""
	kill -"$1" "$pid" 2>/dev/null || true
	while running "$pid" && [ "$SECONDS" -lt "$deadline" ]; do
		sleep 0.2
	done
	running "$pid" && kill -KILL "$pid"
	wait "$pid" || rc=$?
	return "$rc"
}

# "NAME: RUID EUID SUID FSUID" (ps cuts user names longer than 8 characters).
process_ids() {
	echo "$(ps -o comm= -p "$1"): $(ps -o ruid=,euid=,suid=,fuid= -p "$1" | xargs)"
}

# ---- preconditions ----

if [ "$(id -u)" -ne 0 ]; then
	echo "skipped: the package test installs a system package and needs root" >&2
	exit 77
fi
if dpkg-query -W -f='${Status}' spamtrapd 2>/dev/null | grep -qv not-installed; then
	echo "refusing: spamtrapd is installed here and this test would purge it" >&2
	exit 1
fi
if getent passwd spamtrapd >/dev/null || getent group spamtrapd >/dev/null; then
	echo "refusing: a user or group spamtrapd exists and the package's purge would remove it" >&2
	exit 1
fi
for p in "${ports[@]}"; do
	if port_open "$p"; then
		echo "refusing: port $p on 127.0.0.1 is in use (the shipped configuration needs it)" >&2
		exit 1
	fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/spamtrapd-debtest.XXXXXX")
chmod 755 "$work"
daemon_log="$work/daemon.log"
trap on_exit EXIT
trap 'fail "interrupted"' INT TERM

# MemoryDenyWriteExecute=yes, as far as the kernel offers it (prctl PR_SET_MDWE, Linux 6.3+).
cat >"$work/mdwe.py" <<'EOF'
import ctypes, os, sys
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit("mdwe: prctl(PR_SET_MDWE): " + os.strerror(ctypes.get_errno()))
os.execv(sys.argv[1], sys.argv[1:])
EOF
# Debian's own python3: the unit's user must be able to run it (not a per-user install).
python=/usr/bin/python3
if "$python" "$work/mdwe.py" /bin/true 2>/dev/null; then
	mdwe=("$python" "$work/mdwe.py")
else
	mdwe=()
	echo "note: this kernel has no PR_SET_MDWE; MemoryDenyWriteExecute is not emulated"
fi

# ---- build and install ----

echo "building the package (log: $work/build.log)"
if ! "$top/packaging/build-deb.sh" "$work/out" >"$work/build.log" 2>&1; then
	tail -n 60 "$work/build.log" >&2
	fail "building the package (or lintian) failed"
fi
sed -n '/^lintian:/,$p' "$work/build.log"
deb=$(ls "$work"/out/spamtrapd_*.deb)
pass "built $(basename "$deb"), lintian found no error"

installed_by_us=true # even half installed, it goes at the end
dpkg -i "$deb" || fail "dpkg -i $deb"
check "package installed" test "$(dpkg-query -W -f='${Status}' spamtrapd)" = "install ok installed"

for f in /usr/sbin/spamtrapd /usr/sbin/spamtrapctl; do
	check "$f installed" test -x "$f"
done
deb_version=$(dpkg-deb -f "$deb" Version)
check "spamtrapd -V matches the package version ${deb_version%%-*}" \
	test "$(/usr/sbin/spamtrapd -V)" = "spamtrapd ${deb_version%%-*}"
check "$conf is a conffile" \
	bash -c "dpkg-query -W -f='\${Conffiles}\n' spamtrapd | grep -q '^ $conf '"
check "$conf is root:spamtrapd 0640" test "$(stat -c '%U:%G %a' "$conf")" = "root:spamtrapd 640"
IFS=: read -r _ _ uid _ _ home shell < <(getent passwd spamtrapd) || fail "no user spamtrapd"
check "system user spamtrapd (uid $uid, home $home, shell $shell)" \
	test "$uid" -lt 1000 -a "$home" = "$state" -a "$shell" = /usr/sbin/nologin
check "group spamtrapd" bash -c 'getent group spamtrapd >/dev/null'
check "$state is spamtrapd:spamtrapd 0750" test "$(stat -c '%U:%G %a' "$state")" = "spamtrapd:spamtrapd 750"
for page in man8/spamtrapd.8 man8/spamtrapctl.8 man5/spamtrapd.json.5; do
	check "man page $page" bash -c "zcat /usr/share/man/$page.gz | grep -q '^\.TH'"
done
check "security notes installed" bash -c "ls /usr/share/doc/spamtrapd/security.md* >/dev/null"
check "firewall notes installed, uncompressed (the units name them)" test -f /usr/share/doc/spamtrapd/firewall.md
check "systemd unit installed" test -f "$unit"
examples=/usr/share/doc/spamtrapd/examples/fail2ban
check "fail2ban filter and jail examples installed" \
	test -f $examples/filter.d/spamtrapd.conf -a -f $examples/jail.d/spamtrapd.conf
check "the example jail is not enabled" grep -qx 'enabled  = false' $examples/jail.d/spamtrapd.conf
check "nothing installed into fail2ban's configuration" test ! -e /etc/fail2ban/jail.d/spamtrapd.conf
fw=/lib/systemd/system/spamtrapd-firewall
check "firewall path and service units installed" test -f $fw.path -a -f $fw.service
check "the firewall loader is installed, executable" test -x /usr/libexec/spamtrapd/spamtrapd-firewall-load
check "the firewall path unit is not enabled" \
	bash -c '! ls /etc/systemd/system/*.wants/spamtrapd-firewall.* >/dev/null 2>&1'
if command -v systemd-analyze >/dev/null; then
	check "systemd-analyze verify accepts the firewall units" \
		bash -c "out=\$(systemd-analyze verify --man=no $fw.path $fw.service 2>&1) && [ -z \"\$out\" ]"
fi
for setting in 'NoNewPrivileges=yes' 'ProtectSystem=strict' 'PrivateTmp=yes' 'ReadWritePaths=/var/lib/spamtrapd.*' \
	'ExecReload=/bin/kill -HUP \$MAINPID' 'ExecStartPre=/usr/sbin/spamtrapd -t .*' 'ExecStart=/usr/sbin/spamtrapd -f .*'; do
	check "unit has $setting" grep -qx "$setting" "$unit"
done
check "the unit runs as spamtrapd" test "$(unit_value User)" = spamtrapd
# systemd's own checks, offline: no running systemd is needed.
if command -v systemd-analyze >/dev/null; then
	check "systemd-analyze verify finds nothing to say about the unit" verify_unit
	check "systemd-analyze security: exposure 2.0 or less" \
		quiet systemd-analyze security --offline=yes --threshold=20 "$unit"
fi
read_unit
# Where systemd runs, the package started the service: the test runs its own.
if [ -d /run/systemd/system ]; then
	systemctl stop spamtrapd
fi

# ---- configuration check ----

check "spamtrapd -t $conf" /usr/sbin/spamtrapd -t -c "$conf"
read -r -a pre <<<"$(unit_value ExecStartPre)"
check "ExecStartPre as the unit's user: ${pre[*]}" run_as_unit "${pre[@]}"

trap_address=$(json_get "$conf" 'c["traps"]["addresses"][0]') || fail "no traps.addresses in $conf"
reject_text=$(json_get "$conf" 'c.get("blocklist", {}).get("reject", "550 5.7.1 Sender is blocklisted after mail to a spamtrap")')

# ---- the daemon as the unit starts it ----

read -r -a exec_start <<<"$(unit_value ExecStart)"
start_daemon "$unit_umask" "${unit_prefix[@]}" "${exec_start[@]}"
check "the daemon runs as spamtrapd" test "$(process_ids "$daemon_pid")" = "spamtrapd: $uid $uid $uid $uid"
check "no new privileges, no capabilities" \
	bash -c "grep -qx 'NoNewPrivs:[[:space:]]*1' /proc/$daemon_pid/status &&
		grep -qx 'CapEff:[[:space:]]*0*' /proc/$daemon_pid/status"
trap_round_trip spammer@bulk.test 192.0.2.55 "$trap_address"
clean_sender_passes
check "spamtrapctl lookup shows the entry" ctl_lookup_shows spammer@bulk.test

kill -HUP "$daemon_pid"
check "SIGHUP reloads the configuration" wait_for 10 grep -q "configuration reloaded" "$daemon_log"
check "still serving after the reload" all_ports_open

stop_daemon TERM && rc=0 || rc=$?
check "SIGTERM stops the daemon with status 0 (got $rc)" test "$rc" -eq 0
check "the ports are closed" no_port_open
check "the blocklist is in $state, owned by spamtrapd" \
	test "$(stat -c %U "$(json_get "$conf" 'c["store"]["sqlite"]["path"]')")" = spamtrapd

# ---- started as root: drops to the configured user ----

user_option=()
if [ "$(json_get "$conf" 'c.get("user")')" = None ]; then
	user_option=(-o user=spamtrapd) # the shipped file names no user
fi
start_daemon 0022 "${mdwe[@]}" /usr/sbin/spamtrapd -f -c "$conf" "${user_option[@]}" \
	-o 'traps.patterns=["^pkgtest-[0-9]+@example\\.net$"]'
check "started as root, the daemon runs as spamtrapd" \
	test "$(process_ids "$daemon_pid")" = "spamtrapd: $uid $uid $uid $uid"
check "and keeps no root group" bash -c "! grep -qE '^Groups:.*\b0\b' /proc/$daemon_pid/status"
# A regular-expression trap: interpreted by PCRE2 when no W+X memory allows its JIT.
trap_round_trip other@bulk2.test 203.0.113.9 pkgtest-42@example.net
reply=$(policy 10667 protocol_state=MAIL client_address=192.0.2.55 sender=spammer@bulk.test)
check "the first run's blocklist entry survived the restart" test "$reply" = "action=$reject_text"
stop_daemon TERM && rc=0 || rc=$?
check "SIGTERM stops it with status 0 (got $rc)" test "$rc" -eq 0

refuse_rc=0
timeout 20 /usr/sbin/spamtrapd -f -c "$conf" -o user=null >"$daemon_log" 2>&1 || refuse_rc=$?
check "as root without a user to drop to, it refuses to start (status $refuse_rc)" \
	test "$refuse_rc" -ne 0 -a "$refuse_rc" -ne 124
check "and left no port open" no_port_open

# ---- purge ----

dpkg-query -L spamtrapd >"$work/files"
dpkg --purge spamtrapd || fail "dpkg --purge spamtrapd"
installed_by_us=false
check "package gone" bash -c "! dpkg-query -W -f='\${Status}' spamtrapd 2>/dev/null | grep -qv not-installed"
leftover=""
while IFS= read -r path; do
	# Shared folders (/usr/sbin, /lib/systemd/system) stay; anything else must go.
	if [ -e "$path" ] && ! { [ -d "$path" ] && [ -n "$(ls -A "$path")" ]; }; then
		leftover="$leftover $path"
	fi
done <"$work/files"
check "no installed file left:${leftover:- none}" test -z "$leftover"
for path in /etc/spamtrapd "$state" /etc/systemd/system/multi-user.target.wants/spamtrapd.service \
	/var/lib/systemd/deb-systemd-helper-enabled/spamtrapd.service; do
	check "$path removed" test ! -e "$path"
done
check "user spamtrapd removed" bash -c '! getent passwd spamtrapd'
check "group spamtrapd removed" bash -c '! getent group spamtrapd'
check "no trace in the account files" bash -c '! grep -qs "^spamtrapd:" /etc/passwd /etc/group /etc/shadow /etc/gshadow'

finish
