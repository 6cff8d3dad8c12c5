#!/usr/bin/env bash
# Logging: --log=stderr|syslog|null as in nbdkit.  Errors go to stderr by default, also for a
# server going into the background (until it is ready); --log=null and --log=syslog send them
# elsewhere from the start.  -v adds debug messages, always on stderr, and a background server
# started with -v keeps stderr for them; without -v or --log=stderr it lets go of stderr, so
# "nbdforge ... 2>&1 | cat" returns.
source "$(dirname "$0")/lib/functions.sh"

# errors_to LOG-OPTION: the bad size's error message, as seen on stderr, for a background start.
errors_to() {
    local status=0
    "${server_cmd[@]}" $1 -U "$tmp/e.sock" memory 12Q </dev/null 2>"$tmp/err" || status=$?
    [ "$status" -eq 1 ] || fail "$1: exit $status"
    cat "$tmp/err"
}
errors_to "" | grep -q '12Q' || fail "default: error not on stderr"
errors_to "--log=stderr" | grep -q '12Q' || fail "--log=stderr: error not on stderr"
[ -z "$(errors_to --log=null)" ] || fail "--log=null: something on stderr"
[ -z "$(errors_to --log=syslog)" ] || fail "--log=syslog: something on stderr"
[ -z "$(errors_to "-f --log=null")" ] || fail "-f --log=null: something on stderr"

# -v in the foreground: debug messages on stderr, prefixed with the program's name.
start_server -v memory 1M
nbdinfo --size "$uri" >/dev/null
grep -q '^[a-z]*: debug: ' "$server_log" || fail "-v: no 'PROG: debug:' lines: $(head -5 "$server_log")"
# Without -v, a normal session logs nothing.
start_server memory 1M
nbdsh -u "$uri" -c 'h.pwrite(b"x" * 512, 0)'
[ ! -s "$server_log" ] || fail "quiet server logged: $(cat "$server_log")"

# A background server: the start returns even with stderr on a pipe; with -v it keeps stderr
# and later debug messages still arrive there.
timeout 20 "${server_cmd[@]}" -U "$tmp/bg.sock" -P "$tmp/bg.pid" memory 1M 2>&1 </dev/null | cat ||
    fail "background start with stderr on a pipe did not return"
server_pids+=("$(cat "$tmp/bg.pid")")
"${server_cmd[@]}" -v -U "$tmp/v.sock" -P "$tmp/v.pid" memory 1M </dev/null 2>"$tmp/v.err"
server_pids+=("$(cat "$tmp/v.pid")")
before=$(wc -l < "$tmp/v.err")
nbdinfo --size "nbd+unix:///?socket=$tmp/v.sock" >/dev/null
for ((i = 0; i < 50; i++)); do [ "$(wc -l < "$tmp/v.err")" -gt "$before" ] && break; sleep 0.1; done
[ "$(wc -l < "$tmp/v.err")" -gt "$before" ] || fail "background -v: no debug messages after start"
[ "$(readlink "/proc/$(cat "$tmp/v.pid")/fd/2")" = "$tmp/v.err" ] || fail "background -v let go of stderr"

# --log=syslog delivers to /dev/log: one datagram per message, facility daemon, tagged with the
# program name and pid.  This machine may have no syslog daemon, so a private /dev with a
# listening socket is set up in a mount namespace (needs root).
if [ "$(id -u)" -eq 0 ]; then
    mkdir "$tmp/realdev"
    unshare -m bash -c '
        set -e
        mount --make-rprivate /
        mount --rbind /dev "$1/realdev"
        mount -t tmpfs none /dev
        for d in null zero urandom random; do touch "/dev/$d"; mount --bind "$1/realdev/$d" "/dev/$d"; done
        shift
        python3 - "$@" <<EOF
import re, socket, subprocess, sys
log = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
log.bind("/dev/log")
log.settimeout(10)
for args in (["--log=syslog", "memory", "12Q"], ["-f", "--log=syslog", "-D", "nbdkit.nosuch=1", "memory", "1M"]):
    p = subprocess.Popen(sys.argv[1:] + ["-U", "/dev/nbd.sock"] + args, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    msg = log.recv(4096).decode()
    p.kill() if p.poll() is None else None
    out, err = p.communicate()
    print("syslog got: " + msg)
    # The background start logs from the server process, a child of the one started here.
    pid = p.pid if "-f" in args else None
    assert re.match(r"<[0-9]+>[a-z]+\\[%s\\]: " % (pid or "[0-9]+"), msg), msg
    prio = int(msg[1:msg.index(">")])
    assert prio >> 3 == 3, "facility is not daemon: %d" % prio
    assert ("12Q" in msg) == ("12Q" in args), msg
    assert err == b"", "stderr with --log=syslog: %r" % err
EOF
    ' _ "$tmp" "${server_cmd[@]}" || fail "--log=syslog"
fi
echo OK
