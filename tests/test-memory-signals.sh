#!/usr/bin/env bash
# SIGTERM, SIGINT and SIGQUIT stop the server cleanly: exit status 0 and the Unix socket it
# created is removed.  Also with a client that connected and went away.
#
# Fails against nbdkit 1.32: it exits 0 but leaves its -U socket behind.
source "$(dirname "$0")/lib/functions.sh"

for sig in TERM INT QUIT; do
    start_server memory 1M
    nbdsh -u "$uri" -c 'h.pwrite(b"x" * 512, 0)'
    stop_server "$server_pid" "$sig"
    [ "$stop_status" -eq 0 ] || fail "exit status $stop_status after SIG$sig"
    [ ! -e "$sock" ] || fail "socket $sock left behind after SIG$sig"
done
echo OK
