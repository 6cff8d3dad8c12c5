#!/usr/bin/env bash
# A client with many requests in flight that cannot keep up with the server is read from a little
# later, so its requests arrive several per read (server/src/connection/pacing.rs): fio with 64
# 4 KiB random reads in flight costs the server far fewer waits for the client than requests.
# A wait is a read(2) call, counted by `syscr` in /proc/PID/io (with the threads that have exited
# too); what the client has sent already is taken with recv(2), which syscr does not count.
# Measured: one read(2) per 49 requests with pacing, one per 4.5 without it. The data must still
# be right: fio verifies every block afterwards.
source "$(dirname "$0")/lib/functions.sh"

start_server memory 64M
fio_args=(--name=w --ioengine=nbd --uri="$uri" --size=64M --bs=4k --verify_state_save=0)
fio "${fio_args[@]}" --rw=write --iodepth=16 --verify=crc32c --do_verify=0 --output=/dev/null

reads() { awk '/^syscr:/ { print $2 }' /proc/"$server_pid"/io; }
before=$(reads)
fio "${fio_args[@]}" --rw=randread --iodepth=64 --runtime=3 --time_based \
    --output-format=json --output="$tmp/fio.json"
after=$(reads)
ios=$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["jobs"][0]["read"]["total_ios"])' "$tmp/fio.json")
calls=$((after - before))
echo "$ios requests, $calls read calls"
[ "$ios" -gt 1000 ] || fail "fio did only $ios reads"
[ $((calls * 10)) -lt "$ios" ] || fail "$calls read calls for $ios requests: requests are not batched"

fio "${fio_args[@]}" --rw=randread --iodepth=64 --verify=crc32c --verify_only --output=/dev/null
echo OK
