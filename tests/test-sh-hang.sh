#!/usr/bin/env bash
# A script that hangs or dies answers that request with an error, and the server goes on: a
# pread that sleeps is killed after script-timeout= (with the process it started), a pread that
# kills itself fails with EIO, and the requests after both are served. A script still running
# when the server is told to stop is killed, so the server exits.
#
# nbdkit has no time limit: under it the first nbdsh call below never returns.
source "$(dirname "$0")/lib/functions.sh"

cat > "$tmp/slow.sh" <<'SCRIPT'
#!/bin/sh
case "$1" in
    get_size) echo 1M ;;
    thread_model) echo parallel ;;
    pread)
        case "$4" in
            0) sleep 1000 & echo $! > "$SLEEPER_FILE"; wait ;;   # hangs, with a child
            512) kill -9 $$ ;;                                     # dies
            *) head -c "$3" /dev/zero ;;
        esac ;;
    *) exit 2 ;;
esac
SCRIPT
chmod +x "$tmp/slow.sh"

export SLEEPER_FILE=$tmp/sleeper   # scripts run with the server's environment
start_server sh "$tmp/slow.sh" script-timeout=2
t0=$(date +%s)
nbdsh -u "$uri" -c '
import errno
for offset, what in ((0, "ran for more than 2 s"), (512, "killed by signal 9")):
    try:
        h.pread(512, offset)
        raise SystemExit("the pread at %d succeeded" % offset)
    except nbd.Error as e:
        assert e.errnum == errno.EIO, (offset, e)
        print("offset", offset, "->", e.string)
assert h.pread(512, 1024) == bytes(512)
' > "$tmp/out"
t1=$(date +%s)
cat "$tmp/out"
[ $((t1 - t0)) -lt 10 ] || fail "the hung pread took $((t1 - t0)) s to fail"
grep -q "offset 0" "$tmp/out" || fail "no answer for the hung pread"
sleeper=$(cat "$SLEEPER_FILE")
[ -n "$sleeper" ] || fail "the script did not record its child"
for _ in 1 2 3 4 5 6 7 8 9 10; do   # gone, or a zombie waiting for init to reap it
    state=$(ps -o stat= -p "$sleeper" || :)
    case "$state" in "" | Z*) break ;; esac
    sleep 0.2
done
case "$state" in "" | Z*) ;; *) fail "the hung script's child $sleeper is still running ($state)" ;; esac
grep -q "ran for more than 2 s" "${server_logs[0]}" || fail "the log does not say why: $(cat "${server_logs[0]}")"
stop_server "$server_pid"

# With no limit, the server still stops: SIGTERM kills the script that hangs.
start_server sh "$tmp/slow.sh" script-timeout=0
nbdsh -u "$uri" -c 'h.pread(512, 0)' 2>/dev/null &
client=$!
sleep 1
t0=$(date +%s)
stop_server "$server_pid"
t1=$(date +%s)
[ $((t1 - t0)) -lt 5 ] || fail "the server took $((t1 - t0)) s to stop"
wait "$client" && fail "the hung pread succeeded"

# eval takes the same parameter.
start_server eval get_size='echo 64K' pread='sleep 1000' script-timeout=1
expect_fail nbdsh -u "$uri" -c 'h.pread(512, 0)'
bad_args eval get_size='echo 1' script-timeout=soon -- script-timeout=soon
bad_args sh "$tmp/slow.sh" script-timeout=-1 -- script-timeout=-1
