#!/usr/bin/env bash
# One of the three Swift storage nodes is killed (SIGKILL: its object, container and account
# servers at once) while nbdcopy writes 256 MiB through the S3 plugin: the copy succeeds (the
# proxy writes to the two replicas left), every byte reads back intact with the node still dead,
# and fio's verified random writes go on working without it.
# timeout: 240
source "$(dirname "$0")/lib/functions.sh"
source "$(dirname "$0")/lib/swift.sh"

start_swift
s3 mb hadisk
random_file "$tmp/in.img" 256M
start_server S3 endpoint-url="$s3_endpoint" bucket=hadisk key=disk size=320M object-size=1M \
    access-key="$s3_access_key" secret-key="$s3_secret_key"
nbdcopy --connections=1 "$tmp/in.img" "$uri" &
copy=$!
sleep 1
kill -0 "$copy" 2>/dev/null || fail "the copy ended before the node could be killed: make it longer"
stop_swift_node 2
echo "node 2 killed in the middle of the copy"
wait "$copy" || fail "nbdcopy failed when a storage node died"
kill -0 "$server_pid" || fail "the server died"
nbdcopy "$uri" "$tmp/out.img"
cmp -n $((256 * 1048576)) "$tmp/in.img" "$tmp/out.img" || fail "the data differs after losing a node"
cmp -i $((256 * 1048576)):0 "$tmp/out.img" <(head -c 64M /dev/zero) || fail "unwritten space is not zero"
# Writes and reads go on with the node dead: fio with verification on the unwritten 64 MiB.
(
    cd "$tmp"
    fio --name=degraded --ioengine=nbd --uri="$uri" --rw=randwrite --bs=1M --offset=256M --size=64M \
        --iodepth=8 --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 --output="$tmp/fio.out"
    cat "$tmp/fio.out"
    grep -Eq 'err= *0' "$tmp/fio.out" || fail "fio reported errors with a node dead"
)
echo OK
