#!/usr/bin/env bash
# -u USER / -g GROUP (names or numbers): the server binds as root, then drops to the user and
# group before serving, as /proc/PID/status shows (real, effective, saved and filesystem ids,
# and the supplementary groups).  -u alone takes the user's groups.  The private directory of
# -U - is handed to the user so that it is still removed at exit.  Without root, asking for
# another user fails with a clear error before anything listens.
source "$(dirname "$0")/lib/functions.sh"

ids() { awk -v k="$2:" '$1 == k { $1 = ""; sub(/^ /, ""); print }' "/proc/$1/status"; }

if [ "$(id -u)" -ne 0 ]; then
    status=0
    "${server_cmd[@]}" -f -U "$tmp/s" -u root memory 1M 2>"$tmp/err" </dev/null || status=$?
    [ "$status" -eq 1 ] || fail "-u root as $(id -un): exit $status"
    grep -q 'setuid\|setgroups\|initgroups' "$tmp/err" || fail "no clear message: $(cat "$tmp/err")"
    echo OK
    exit 0
fi

nobody_uid=$(id -u nobody)
nogroup=$(getent group nogroup >/dev/null && echo nogroup || echo nobody)
nogroup_gid=$(getent group "$nogroup" | cut -d: -f3)

# -u and -g by name.
start_server -u nobody -g "$nogroup" memory 1M
[ "$(ids "$server_pid" Uid | tr -s '\t ' ' ')" = "$nobody_uid $nobody_uid $nobody_uid $nobody_uid" ] ||
    fail "Uid: $(ids "$server_pid" Uid)"
[ "$(ids "$server_pid" Gid | tr -s '\t ' ' ')" = "$nogroup_gid $nogroup_gid $nogroup_gid $nogroup_gid" ] ||
    fail "Gid: $(ids "$server_pid" Gid)"
[ "$(ids "$server_pid" Groups | xargs)" = "$nogroup_gid" ] || fail "Groups: $(ids "$server_pid" Groups)"
# Bound as root before dropping: the socket is root's, and the server serves on it.
[ "$(stat -c %u "$sock")" -eq 0 ] || fail "socket not created before dropping privileges"
[ "$(nbdinfo --size "$uri")" -eq 1048576 ] || fail "not serving after dropping privileges"
nbdsh -u "$uri" -c 'h.pwrite(b"\xaa" * 4096, 0); assert h.pread(4096, 0) == b"\xaa" * 4096'

# Numeric ids.
start_server -u "$nobody_uid" -g "$nogroup_gid" memory 1M
[ "$(ids "$server_pid" Uid | awk '{print $2}')" -eq "$nobody_uid" ] || fail "numeric -u"
[ "$(ids "$server_pid" Gid | awk '{print $2}')" -eq "$nogroup_gid" ] || fail "numeric -g"

# -u alone: the user's primary group and supplementary groups, nothing of root's.
start_server -u nobody memory 1M
primary=$(id -g nobody)
[ "$(ids "$server_pid" Gid | awk '{print $2}')" -eq "$primary" ] || fail "-u alone: Gid $(ids "$server_pid" Gid)"
want=$(id -G nobody | tr ' ' '\n' | sort -n | xargs)
got=$(ids "$server_pid" Groups | tr ' \t' '\n\n' | sed '/^$/d' | sort -n | xargs)
[ "$got" = "$want" ] || fail "-u alone: Groups '$got', want '$want'"

# -U - with -u: the private directory belongs to the user and is removed at exit.
"${server_cmd[@]}" -U - -u nobody memory 1M --run 'stat -c "%U %a" "$(dirname "$unixsocket")"; echo "dir=$(dirname "$unixsocket")"' \
    > "$tmp/run.out" </dev/null
cat "$tmp/run.out"
grep -qx 'nobody 700' "$tmp/run.out" || fail "private directory not handed to nobody"
dir=$(sed -n 's/^dir=//p' "$tmp/run.out")
[ ! -e "$dir" ] || fail "private directory $dir left behind by the unprivileged server"
echo OK
