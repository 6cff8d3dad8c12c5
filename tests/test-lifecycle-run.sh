#!/usr/bin/env bash
# Captive server, --run CMD (nbdkit-captive(1)): CMD runs under /bin/sh once the server listens,
# with uri, nbd, exportname, port, unixsocket (and tls, tls_psk, tls_certificates under TLS)
# exported; without -p or -U the server uses a private Unix socket; when CMD exits the server
# stops, cleans up, and the exit status is CMD's (128+N when signal N killed it).  If the server
# cannot start, CMD never runs.
source "$(dirname "$0")/lib/functions.sh"

n=("${server_cmd[@]}")
show='for v in uri nbd exportname port unixsocket tls tls_psk tls_certificates; do
        eval "printf %s=%s\\\\n $v \"\${$v-<unset>}\""
      done
      echo "server_pid=$PPID"
      env | grep -q "^uri=" && echo exported=yes
      nbdinfo --size "$uri" >/dev/null && echo connected=yes || :'
var() { sed -n "s/^$1=//p" "$tmp/run.out"; }

# Default: a private Unix socket, removed with its directory after CMD exits.
"${n[@]}" memory 1M --run "$show" > "$tmp/run.out"
cat "$tmp/run.out"
sock=$(var unixsocket)
[ -n "$sock" ] || fail "unixsocket not set"
[ "$(var uri)" = "nbd+unix:///?socket=$sock" ] || fail "uri=$(var uri)"
[ "$(var nbd)" = "$(var uri)" ] || fail "nbd=$(var nbd) differs from uri"
[ "$(var port)" = "" ] || fail "port=$(var port) for a Unix socket"
[ "$(var exportname)" = "" ] || fail "exportname=$(var exportname)"
[ "$(var tls)" = "<unset>" ] || fail "tls set without TLS"
[ "$(var exported)" = yes ] || fail "the variables are not exported"
[ "$(var connected)" = yes ] || fail "CMD could not connect to \$uri"
[ ! -e "$(dirname "$sock")" ] || fail "private directory left behind"
pid=$(var server_pid)
for ((i = 0; i < 50; i++)); do
    [ -e "/proc/$pid" ] && [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" != Z ] || break
    sleep 0.1
done
[ ! -e "/proc/$pid" ] || [ "$(cut -d' ' -f3 "/proc/$pid/stat")" = Z ] || fail "server still running"

# -e: the export name is in the URI (percent-encoded) and in $exportname.
"${n[@]}" -e 'my disk' memory 1M --run "$show" > "$tmp/run.out"
[ "$(var exportname)" = "my disk" ] || fail "exportname=$(var exportname)"
[ "$(var uri)" = "nbd+unix:///my%20disk?socket=$(var unixsocket)" ] || fail "uri with -e: $(var uri)"

# -p 0: TCP on the port the kernel chose, reported in $port and $uri.
"${n[@]}" -i 127.0.0.1 -p 0 memory 1M --run "$show" > "$tmp/run.out"
cat "$tmp/run.out"
port=$(var port)
[[ $port =~ ^[0-9]+$ ]] && [ "$port" -ne 0 ] || fail "port=$port"
[ "$(var unixsocket)" = "" ] || fail "unixsocket=$(var unixsocket) for TCP"
[ "$(var uri)" = "nbd://127.0.0.1:$port" ] || fail "uri=$(var uri)"
[ "$(var connected)" = yes ] || fail "CMD could not connect over TCP"

# -U PATH is used as given.
"${n[@]}" -U "$tmp/given.sock" memory 1M --run "$show" > "$tmp/run.out"
[ "$(var unixsocket)" = "$tmp/given.sock" ] || fail "unixsocket=$(var unixsocket)"
[ "$(var connected)" = yes ] || fail "CMD could not connect with -U"

# TLS: $tls is 1 for --tls=on and 2 for --tls=require, the PSK file is passed on, and under
# --tls=require the URI is nbds and carries the PSK user and file, so CMD can connect with it.
python3 -c 'import os; print("alice:" + os.urandom(32).hex())' > "$tmp/keys.psk"
"${n[@]}" --tls=require --tls-psk="$tmp/keys.psk" memory 1M --run "$show" > "$tmp/run.out"
[ "$(var tls)" = 2 ] || fail "tls=$(var tls) for --tls=require"
[ "$(var tls_psk)" = "$tmp/keys.psk" ] || fail "tls_psk=$(var tls_psk)"
[[ $(var uri) == nbds+unix://alice@/\?socket=*\&tls-psk-file=* ]] || fail "uri=$(var uri) under --tls=require"
[ "$(var connected)" = yes ] || fail "CMD could not connect to \$uri under --tls=require"
"${n[@]}" --tls=on --tls-psk="$tmp/keys.psk" memory 1M --run "$show" > "$tmp/run.out"
[ "$(var tls)" = 1 ] || fail "tls=$(var tls) for --tls=on"

# Exit status: CMD's own, or 128+N for a signal.
run_status() {
    local status=0
    "${n[@]}" memory 1M --run "$1" </dev/null >/dev/null 2>"$tmp/err" || status=$?
    echo "$status"
}
[ "$(run_status 'exit 0')" -eq 0 ] || fail "exit 0 not passed through"
[ "$(run_status 'exit 7')" -eq 7 ] || fail "exit 7 not passed through"
[ "$(run_status 'kill -TERM $$')" -eq 143 ] || fail "CMD killed by SIGTERM: want 143"
[ "$(run_status 'kill -INT $$')" -eq 130 ] || fail "CMD killed by SIGINT: want 130"

# The server cannot start: exit 1, CMD never runs.
status=0
"${n[@]}" memory 12Q --run "touch $tmp/ran" 2>"$tmp/err" || status=$?
[ "$status" -eq 1 ] || fail "failed start under --run: exit $status"
[ ! -e "$tmp/ran" ] || fail "CMD ran although the server did not start"
status=0
"${n[@]}" -U "$tmp/no-such-dir/s" memory 1M --run "touch $tmp/ran" 2>"$tmp/err" || status=$?
[ "$status" -eq 1 ] || fail "failed bind under --run: exit $status"
[ ! -e "$tmp/ran" ] || fail "CMD ran although the server could not listen"
echo OK
