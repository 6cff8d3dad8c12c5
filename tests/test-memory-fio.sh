#!/usr/bin/env bash
# fio's NBD engine (libnbd) with 16 requests in flight: random 4 KiB writes over 64 MiB with
# crc32c verification of every block, on the memory plugin.
source "$(dirname "$0")/lib/functions.sh"

cd "$tmp"   # fio writes its state files in the current directory
start_server memory 64M
fio --name=randwrite --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k --size=64M \
    --iodepth=16 --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 \
    --output="$tmp/fio.out"
cat "$tmp/fio.out"
grep -Eq 'err= *0' "$tmp/fio.out" || fail "fio reported errors"
grep -Eiq 'verify.*(fail|bad)|crc32c.*fail' "$tmp/fio.out" && fail "fio verification failed"

# Mixed reads and writes with several jobs (several connections) at once.
fio --name=mixed --ioengine=nbd --uri="$uri" --rw=randrw --bs=64k --size=32M --numjobs=2 \
    --iodepth=8 --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 \
    --offset_increment=32M \
    --output="$tmp/fio2.out"
cat "$tmp/fio2.out"
[ "$(grep -Ec 'err= *0' "$tmp/fio2.out")" -eq 2 ] || fail "fio mixed jobs reported errors"
echo OK
