#!/usr/bin/env bash
# Remote failures of the S3 plugin on a three-node Swift cluster answer the request with EIO and
# a message naming the bucket, the object and what the store said, and the server stays up:
# wrong credentials (HTTP 403), the proxy down (connection refused), every object server down
# (HTTP 503). Once the store is back, requests succeed again; with --filter=retry in front a
# read issued while the store is down succeeds when it returns.
# timeout: 180
source "$(dirname "$0")/lib/functions.sh"
source "$(dirname "$0")/lib/swift.sh"

start_swift
s3 mb fails
common=(endpoint-url="$s3_endpoint" bucket=fails key=d size=8M object-size=1M access-key="$s3_access_key")

# expect_eio URI LOG OFFSET STRINGS...: a 4 KiB read at OFFSET fails with EIO, and the error the
# server logs for it (its message is the one in the structured reply) holds every string.
expect_eio() {
    local u=$1 log=$2 off=$3 s line
    shift 3
    nbdsh -u "$u" -c "
import errno, sys
try:
    h.pread(4096, $off)
except nbd.Error as e:
    assert e.errnum == errno.EIO, e.errnum
    sys.exit(0)
sys.exit('the read succeeded')
" || fail "expected EIO for $*"
    line=$(grep 'error: NBD_CMD_READ' "$log" | tail -1)
    echo "$line"
    for s in "$@"; do
        [[ $line == *"$s"* ]] || fail "the error does not mention '$s': $line"
    done
}

# Wrong secret: 403 SignatureDoesNotMatch, naming bucket and object, not the secret.
start_server S3 "${common[@]}" secret-key=wrong-secret
expect_eio "$uri" "$server_log" 0 "bucket fails" "d/0000000000000000" "HTTP 403" "SignatureDoesNotMatch"
expect_eio "$uri" "$server_log" 0 "HTTP 403"
kill -0 "$server_pid" || fail "the server died after a 403"
grep -q wrong-secret "$server_log" && fail "the secret reached the log"

start_server S3 "${common[@]}" secret-key="$s3_secret_key"
good=$uri
good_log=$server_log
good_pid=$server_pid
nbdsh -u "$good" -c 'h.pwrite(b"\x5a" * 4096, 0)'
start_server --filter=retry S3 "${common[@]}" secret-key="$s3_secret_key" retries=10 retry-delay=1 \
    retry-exponential=no
retry_uri=$uri

# The proxy down: connection refused, then back.
kill -KILL "$swift_proxy_pid"
wait "$swift_proxy_pid" 2>/dev/null || :
expect_eio "$good" "$good_log" 0 "bucket fails" "d/0000000000000000" "onnect"
# Through the retry filter: the read waits for the store to return.
nbdsh -u "$retry_uri" -c 'assert h.pread(4096, 0) == b"\x5a" * 4096' &
reader=$!
sleep 3
kill -0 "$reader" || fail "the read through the retry filter ended while the store was down"
start_swift_server proxy proxy
swift_proxy_pid=$!
wait "$reader" || fail "the read through the retry filter failed after the store returned"
for _ in $(seq 50); do s3 ls >/dev/null 2>&1 && break; sleep 0.2; done
nbdsh -u "$good" -c 'assert h.pread(4096, 0) == b"\x5a" * 4096' || fail "no recovery after the store returned"

# Every object server down: the proxy answers 503.
for i in 1 2 3; do
    kill -KILL "$(echo ${swift_node_pids[$i]} | awk '{print $1}')"
done
sleep 0.5
expect_eio "$good" "$good_log" 0 "bucket fails" "d/0000000000000000" "HTTP 503"
kill -0 "$good_pid" || fail "the server died"
echo OK
