#!/usr/bin/env bash
# The server's lifetime and its client limit, as qemu-nbd's, each checked on nbdforge-img and on
# qemu-nbd with the same command line:
# - without -t the server exits (status 0) once its client has left;
# - with -t it keeps serving;
# - -e 1 (the default) makes a second client wait until the first leaves; -e 2 lets two in at
#   once; -e 0 has no limit.
source "$(dirname "$0")/lib/functions.sh"
cd "$tmp"
qemu-img create -q -f qcow2 disk.qcow2 1M

gone_within() {   # gone_within PID SECONDS
    local i
    for ((i = 0; i < $2 * 10; i++)); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
    return 1
}

# hold URI SECONDS: a client that stays connected for SECONDS, in the background.
hold() {
    nbdsh -u "$1" -c "import time; time.sleep($2)" &
    holder=$!
}

for start in start_img start_qemu_nbd; do
    "$start" disk.qcow2
    nbdinfo --size "$uri" >/dev/null
    gone_within "$server_pid" 10 || fail "$start without -t: still running after its client left"
    wait "$server_pid" || fail "$start without -t: exit status $?"

    "$start" -t disk.qcow2
    nbdinfo --size "$uri" >/dev/null
    nbdinfo --size "$uri" >/dev/null
    kill -0 "$server_pid" || fail "$start -t: exited after a client"
    stop_server "$server_pid"

    # -e 1: while one client is connected, another gets nowhere.
    "$start" -t disk.qcow2
    hold "$uri" 4
    sleep 1
    status=0
    timeout 2 nbdinfo --size "$uri" >/dev/null 2>&1 || status=$?
    [ "$status" -ne 0 ] || fail "$start -e 1: a second client was served while the first was connected"
    wait "$holder"
    timeout 10 nbdinfo --size "$uri" >/dev/null || fail "$start -e 1: the next client was not served"
    stop_server "$server_pid"

    for e in 2 0; do
        "$start" -t -e $e disk.qcow2
        hold "$uri" 5
        sleep 1
        timeout 3 nbdinfo --size "$uri" >/dev/null || fail "$start -e $e: a second client was refused"
        kill "$holder"
        wait "$holder" || :
        stop_server "$server_pid"
    done
    echo "$start: lifetimes and client limits as qemu-nbd's"
done
