#!/usr/bin/env bash
# fio's NBD engine (libnbd) on the S3 plugin over a three-node Swift cluster: random writes of
# whole objects with crc32c verification of every block, then writes of any size at any 512-byte
# boundary (most of them read-modify-write parts of objects) from 32 requests in flight, also
# verified, then two connections at once.
# timeout: 240
source "$(dirname "$0")/lib/functions.sh"
source "$(dirname "$0")/lib/swift.sh"

start_swift
s3 mb fio
start_server S3 endpoint-url="$s3_endpoint" bucket=fio key=disk size=64M object-size=64K \
    access-key="$s3_access_key" secret-key="$s3_secret_key"
(
    cd "$tmp"
    fio --name=whole --ioengine=nbd --uri="$uri" --rw=randwrite --bs=64k --size=64M --iodepth=16 \
        --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 --output="$tmp/fio.out"
    cat "$tmp/fio.out"
    grep -Eq 'err= *0' "$tmp/fio.out" || fail "fio reported errors"
)
fio_unaligned_verify 8M
# Every object of the first pass is there; the rest of the disk is holes.
[ "$(s3 list fio disk/ | wc -l)" -eq 1024 ] || fail "expected 1024 objects after 64M of writes"
echo OK
