#!/usr/bin/env bash
# The command line is nbdkit's, parsed as GNU getopt does: options after the plugin name,
# clustered short options, --long=VALUE and --long VALUE, unambiguous abbreviations, and "--"
# ending the options.  Combinations nbdkit refuses, and bad option values, exit 1 with a message
# naming the option, before anything listens (the socket is never created).
source "$(dirname "$0")/lib/functions.sh"

# refused [WORDS...] -- EXPECTED-STRINGS...: exit status 1, every string on stderr, no socket,
# nothing on stdout.
refused() {
    local args=() status=0 s
    while [ "$1" != -- ]; do args+=("$1"); shift; done
    shift
    rm -f "$tmp/out" "$tmp/err"
    timeout 20 "${server_cmd[@]}" "${args[@]}" >"$tmp/out" 2>"$tmp/err" </dev/null || status=$?
    echo "${args[*]}: exit $status: $(head -n1 "$tmp/err")"
    [ "$status" -eq 1 ] || fail "${args[*]}: exit status $status, want 1"
    [ ! -s "$tmp/out" ] || fail "${args[*]}: wrote to stdout: $(cat "$tmp/out")"
    for s in "$@"; do
        grep -qF -- "$s" "$tmp/err" || fail "${args[*]}: message does not mention '$s'"
    done
    [ -z "$(ls -A "$tmp/sockdir")" ] || fail "${args[*]}: created $(ls "$tmp/sockdir")"
}
mkdir "$tmp/sockdir"
s="$tmp/sockdir/s"

# Unknown, malformed and ambiguous options.
refused --bogus memory 1M -- "unrecognized option '--bogus'" "--help"
refused memory 1M --bogus -- "--bogus"
refused -x memory 1M -- "invalid option -- 'x'"
refused --no memory 1M -- "ambiguous" "--no-sr" "--no-fork"
refused --foreground=yes memory 1M -- "--foreground" "doesn't allow an argument"
refused memory 1M --port -- "--port" "requires an argument"

# Bad values name the option and the value.
refused -f -U "$s" --log=foo memory 1M -- "--log=foo"
refused -f -U "$s" --tls=maybe memory 1M -- "--tls=maybe"
refused -f -U "$s" -t abc memory 1M -- "-t abc"
refused -f -U "$s" --timeout=soon memory 1M -- "--timeout=soon"
refused -f -U "$s" -D foo memory 1M -- "-D foo" "NAME.FLAG=N"
refused -f -U "$s" -D memory.dir=x memory 1M -- "memory.dir=x"
refused -f -U "$s" --mask-handshake=x memory 1M -- "--mask-handshake=x"
refused -f -p 65536 memory 1M -- "-p 65536"
refused -f -u no-such-user-here -U "$s" memory 1M -- "no-such-user-here"
refused -f -g no-such-group-here -U "$s" memory 1M -- "no-such-group-here"

# Combinations nbdkit refuses.
refused -s -p 10809 memory 1M -- "-s" "-p"
refused -s -U "$s" memory 1M -- "-s" "-U"
refused -s --run true memory 1M -- "-s" "--run"
refused -s --vsock memory 1M -- "-s" "--vsock"
refused -f -p 10809 -U "$s" memory 1M -- "-p" "-U"
refused -f --vsock -U "$s" memory 1M -- "--vsock" "-U"
refused -f -o --tls=require -U "$s" memory 1M -- "oldstyle" "TLS"
refused --dump-plugin -- "PLUGIN --dump-plugin"
refused -- "no plugins given"

# Where this machine cannot do it, say so rather than ignore the option.
if [ ! -e /sys/fs/selinux/enforce ]; then
    refused -f -U "$s" --selinux-label=system_u:object_r:svirt_socket_t:s0 memory 1M -- \
        "--selinux-label" "SELinux is not enabled"
fi

# Options anywhere, clustered, abbreviated, with values every way; "--" ends them.
start_server memory 1M -r -t 4 --exportname=foo --read
[ "$(nbdinfo --size "$uri")" -eq 1048576 ] || fail "options after the plugin"
nbdinfo "$uri" | grep -q 'is_read_only: true' || fail "-r after the plugin was ignored"
sock2="$tmp/cluster.sock"
"${server_cmd[@]}" -frU "$sock2" memory 2M </dev/null >"$tmp/cluster.log" 2>&1 &
pid=$!
server_pids+=("$pid")
server_logs+=("$tmp/cluster.log")
wait_for_socket "$sock2" "$pid"
[ "$(nbdinfo --size "nbd+unix:///?socket=$sock2")" -eq 2097152 ] || fail "-frU SOCK"
nbdinfo "nbd+unix:///?socket=$sock2" | grep -q 'is_read_only: true' || fail "-frU: -r lost"
# After "--", "-f" is a plugin argument (the magic size), so this is a bad size, not -f.
status=0
timeout 20 "${server_cmd[@]}" -f -U "$s" memory -- -f </dev/null 2>"$tmp/err" || status=$?
[ "$status" -eq 1 ] || fail "memory -- -f: exit status $status, want 1"
grep -qF 'size=-f' "$tmp/err" || fail "memory -- -f: -f was not taken as the size: $(cat "$tmp/err")"
echo OK
