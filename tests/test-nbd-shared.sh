#!/usr/bin/env bash
# shared=true: one connection to the server below for every client, with requests of several
# clients in flight on it at once; shared=false (the default): one connection below per client.
# Counted from the Preconnect entries of the log filter on the server below.
source "$(dirname "$0")/lib/functions.sh"

# Connections to the server below (Preconnect entries), without start_server's probe of it.
connects() { echo $(( $(grep -c 'Preconnect id=[0-9]* readonly' "$1") - 1 )); }
# The log filter writes from a thread of its own: wait (up to 5 s) until the log shows N.
connects_reach() {
    local i
    for ((i = 0; i < 50; i++)); do
        [ "$(connects "$1")" -ge "$2" ] && break
        sleep 0.1
    done
    connects "$1"
}

start_server --filter=log memory 64M logfile="$tmp/below.log"
below=$sock
start_server nbd socket="$below" shared=true
shared_uri=$uri
export shared_uri
# Two clients at once, each writing its half and reading the other's when both are done.
nbdsh -u "$shared_uri" -c '
import os, subprocess
other = subprocess.Popen(["nbdsh", "-u", os.environ["shared_uri"], "-c",
    "h.pwrite(b\"B\" * (8 << 20), 32 << 20); assert h.pread(4, 0) in (b\"\\0\" * 4, b\"AAAA\")"])
h.pwrite(b"A" * (8 << 20), 0)
assert other.wait() == 0, "the second client failed"
assert h.pread(8 << 20, 32 << 20) == b"B" * (8 << 20), "the second client did not write through"
' 
fio --name=shared --ioengine=nbd --uri="$shared_uri" --rw=randrw --bs=16k --size=16M --numjobs=2 \
    --iodepth=16 --offset_increment=16M --verify=crc32c --do_verify=1 --verify_fatal=1 \
    --verify_state_save=0 --output="$tmp/fio.out" --directory="$tmp" 2>&1
[ "$(grep -Ec 'err= *0' "$tmp/fio.out")" -eq 2 ] || { cat "$tmp/fio.out"; fail "fio failed through shared=true"; }
n=$(connects "$tmp/below.log")
[ "$n" -eq 1 ] || fail "shared=true: $n connections below, want 1"

start_server nbd socket="$below"
nbdinfo --size "$uri" >/dev/null
one=$(( $(connects_reach "$tmp/below.log" 2) - 1 ))
nbdinfo --size "$uri" >/dev/null
two=$(( $(connects_reach "$tmp/below.log" 3) - 1 ))
[ "$one" -eq 1 ] && [ "$two" -eq 2 ] || fail "shared=false: $one connections below for one client, $two for two"

# A client that asks for meta contexts, then GO, opens the layers once, not once per question:
# one more connection below.
nbdinfo --map "$uri" >/dev/null
sleep 1   # nothing more may arrive
three=$(( $(connects_reach "$tmp/below.log" 4) - 1 ))
[ "$three" -eq 3 ] || fail "nbdinfo --map made $((three - two)) connections below, want 1"
echo OK
