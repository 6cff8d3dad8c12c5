#!/usr/bin/env bash
# With neither -p nor -U, the server listens on TCP port 10809 on every interface, IPv6 and IPv4
# (as nbdkit does), and -4/-6 restrict it to one family.  Run in a private network namespace so
# the fixed port cannot clash with anything else on the machine.
source "$(dirname "$0")/lib/functions.sh"

# in_netns SCRIPT: runs SCRIPT under bash in a new network namespace with loopback up.
in_netns() {
    unshare -rn bash -c 'ip link set lo up 2>/dev/null || ip link set dev lo up; '"$1"
}
export N="${server_cmd[*]}" tmp

in_netns '
    set -e
    $N -P "$tmp/def.pid" --print-uri memory 1M > "$tmp/uri"
    [ "$(nbdinfo --size nbd://127.0.0.1)" -eq 1048576 ]
    [ "$(nbdinfo --size "nbd://[::1]")" -eq 1048576 ]
    grep -q " 00000000:2A39 00000000:0000 0A " /proc/net/tcp
    grep -q " 00000000000000000000000000000000:2A39 00000000000000000000000000000000:0000 0A " /proc/net/tcp6
    kill "$(cat "$tmp/def.pid")"
' || fail "default: not listening on port 10809 for IPv4 and IPv6"
[ "$(cat "$tmp/uri")" = "nbd://localhost:10809" ] || fail "--print-uri: $(cat "$tmp/uri")"

in_netns '
    set -e
    $N -4 -P "$tmp/v4.pid" memory 1M
    [ "$(nbdinfo --size nbd://127.0.0.1)" -eq 1048576 ]
    ! grep -q ":2A39 00000000000000000000000000000000:0000 0A " /proc/net/tcp6 || exit 1
    ! nbdinfo --size "nbd://[::1]" 2>/dev/null || exit 1
    kill "$(cat "$tmp/v4.pid")"
' || fail "-4: must listen on IPv4 only"

in_netns '
    set -e
    $N -6 -P "$tmp/v6.pid" memory 1M
    [ "$(nbdinfo --size "nbd://[::1]")" -eq 1048576 ]
    ! grep -q " 00000000:2A39 00000000:0000 0A " /proc/net/tcp || exit 1
    ! nbdinfo --size nbd://127.0.0.1 2>/dev/null || exit 1
    kill "$(cat "$tmp/v6.pid")"
' || fail "-6: must listen on IPv6 only"
echo OK
