#!/usr/bin/env bash
# --dump-plugin with -s is refused, as nbdkit refuses it: `-s memory 1G --dump-plugin`,
# `--dump-plugin -s memory` and `-s --dump-plugin memory` exit with status 1, print nothing on
# stdout, and say on stderr that the options cannot be combined, naming both (nbdkit 1.32 says
# "nbdkit: --dump-plugin, -p, --run, -s, -U or --vsock options cannot be used in this
# combination").  nbdkit refuses only -s with it: --dump-plugin with -U, -p, --run or --vsock
# still dumps the plugin (status 0, name=memory on stdout), and so must nbdforge.
source "$(dirname "$0")/lib/functions.sh"

refused() {
    local status=0
    "${server_cmd[@]}" "$@" </dev/null >"$tmp/out" 2>"$tmp/err" || status=$?
    echo "$*: exit $status: $(head -n1 "$tmp/err")"
    [ "$status" -eq 1 ] || fail "$*: exit status $status, want 1"
    [ ! -s "$tmp/out" ] || fail "$*: dumped to stdout: $(head -n3 "$tmp/out")"
    grep -qF -- "--dump-plugin" "$tmp/err" || fail "$*: message does not name --dump-plugin"
    grep -qE -- '(^|[^a-z])-s([^a-z]|$)|--single' "$tmp/err" || fail "$*: message does not name -s"
    grep -qiE 'combin|together|cannot|not allowed|incompatible' "$tmp/err" ||
        fail "$*: message does not say the options conflict: $(cat "$tmp/err")"
}
refused -s memory 1G --dump-plugin
refused --dump-plugin -s memory
refused -s --dump-plugin memory
refused --single memory 1G --dump-plugin

dumps() {
    local status=0
    "${server_cmd[@]}" "$@" </dev/null >"$tmp/out" 2>"$tmp/err" || status=$?
    [ "$status" -eq 0 ] || fail "$*: exit status $status, want 0: $(cat "$tmp/err")"
    grep -qx 'name=memory' "$tmp/out" || fail "$*: no name=memory on stdout"
}
dumps -U "$tmp/never.sock" --dump-plugin memory
dumps -p 10809 --dump-plugin memory
dumps --run false --dump-plugin memory
dumps --vsock --dump-plugin memory
[ ! -e "$tmp/never.sock" ] || fail "--dump-plugin -U created the socket"
echo OK
