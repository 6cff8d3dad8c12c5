#!/usr/bin/env bash
# curl plugin when the remote fails, against nginx: a slow server (limit_rate) beyond timeout=,
# an HTTP 503, a transfer cut off by nginx's stop, and nginx stopped in the middle of a session
# each fail that one read with EIO and a message naming the URL and the status, while the
# server stays up and later reads succeed;
# with --filter=retry in front, a read made while nginx is down succeeds once it is back, and
# the data is the file's.
# timeout: 60
source "$(dirname "$0")/lib/functions.sh"
source "$(dirname "$0")/lib/nginx.sh"

random_file "$www/disk.img" 4M
server_block="
    location = /slow { limit_rate 64k; alias $www/disk.img; }
    location = /flaky { if (\$request_method = GET) { return 503; } alias $www/disk.img; }
"
nginx_start "$server_block"

# Too slow: 1 MiB at 64 KiB/s cannot arrive within timeout=2; 4 KiB can.
start_server -r curl "$http_url/slow" timeout=2
nbdsh -u "$uri" -c '
import time
start = time.monotonic()
try:
    h.pread(1024 * 1024, 0)
    raise SystemExit("a read slower than timeout= succeeded")
except nbd.Error as e:
    assert e.errno == "EIO", e.errno
took = time.monotonic() - start
print("timed out after %.1f s" % took)
assert took < 10, took
assert len(h.pread(4096, 65536)) == 4096
'
grep -F "curl: $http_url/slow: GET bytes 0-1048575: Timeout was reached" "$server_log" || fail "no timeout message"

# HTTP 503 on reads: EIO naming the status.
start_server -r curl "$http_url/flaky"
read_fails_with_eio 4096 0
grep -F "curl: $http_url/flaky: GET bytes 0-4095: HTTP/1.1 503" "$server_log" || fail "no 503 message"

# The connection reset in the middle of a slow transfer: EIO, and nginx back for what follows.
start_server -r curl "$http_url/slow"
read_fails_with_eio 1048576 0 &
reader=$!
sleep 1
nginx_stop
wait $reader || fail "the read cut off by nginx's stop did not fail with EIO"
nginx_start "$server_block"
grep -F "curl: $http_url/slow: GET bytes 0-1048575: Transferred a partial file" "$server_log" ||
    fail "no message for the cut-off transfer"

# nginx stopped mid-session: EIO naming the URL; the server stays up and reads again later.
start_server -r curl "$http_url/disk.img"
plain_pid=$server_pid plain_log=$server_log plain_uri=$uri
cat > "$tmp/session.py" <<'EOF'
import os, sys, time
def wait_for(name):
    while not os.path.exists(os.path.join(os.environ["tmp"], name)):
        time.sleep(0.05)
expect = open(os.path.join(os.environ["tmp"], "www/disk.img"), "rb").read()
assert h.pread(65536, 0) == expect[:65536]
open(os.path.join(os.environ["tmp"], "read1"), "w").close()
wait_for("stopped")
if os.environ["MODE"] == "plain":
    try:
        h.pread(65536, 65536)
        raise SystemExit("a read with nginx stopped succeeded")
    except nbd.Error as e:
        assert e.errno == "EIO", e.errno
        print("while nginx is down:", e.string)
    open(os.path.join(os.environ["tmp"], "failed"), "w").close()
    wait_for("restarted")
# With the retry filter, this read waits for nginx to come back.
assert h.pread(1024 * 1024, 1024 * 1024) == expect[1024 * 1024 : 2 * 1024 * 1024]
print("read after the restart: ok")
EOF
export tmp
run_session() {   # MODE URI: the session above, with nginx stopped and restarted in its middle
    rm -f "$tmp/read1" "$tmp/stopped" "$tmp/failed" "$tmp/restarted"
    MODE=$1 nbdsh -u "$2" -c "exec(open('$tmp/session.py').read())" &
    local session=$!
    while [ ! -e "$tmp/read1" ]; do sleep 0.05; done
    nginx_stop
    touch "$tmp/stopped"
    if [ "$1" = plain ]; then
        while [ ! -e "$tmp/failed" ]; do kill -0 $session || fail "session ended early"; sleep 0.05; done
    else
        sleep 1.5
    fi
    nginx_start "$server_block"
    touch "$tmp/restarted"
    wait $session || fail "$1 session failed"
}
run_session plain "$plain_uri"
grep -F "curl: $http_url/disk.img: GET bytes 65536-131071: Couldn't connect to server" "$plain_log" ||
    fail "no message naming the URL and the failure"
kill -0 "$plain_pid" || fail "the server died"

start_server -v -r --filter=retry curl "$http_url/disk.img" retry-delay=0.5 retry-exponential=no retries=20
run_session retry "$uri"
grep -E "curl: $http_url/disk.img: (GET bytes 1048576-2097151|getting the size): Couldn.t connect" "$server_log" ||
    fail "the retried failure was not logged"
nbdcopy "$uri" - | cmp - "$www/disk.img" || fail "copy after the restart differs"
echo "test-curl-remote-failure: ok"
