#!/usr/bin/env bash
# Large reads of the memory plugin go out without a copy (vmsplice into a pipe, splice to the
# socket): the data must be exactly what was written, with holes, unaligned reads, structured and
# simple replies, while writes and trims run on another connection; and the zero-copy path must
# really be taken (strace counts vmsplice calls).
source "$(dirname "$0")/lib/functions.sh"

random_file "$tmp/in.img" 32M
start_server memory 32M

nbdcopy "$tmp/in.img" "$uri"
strace -f -qq -c -o "$tmp/strace.txt" -p "$server_pid" &
strace_pid=$!
sleep 1
nbdcopy --request-size=262144 "$uri" "$tmp/out.img"
kill -INT "$strace_pid"
wait "$strace_pid" || :
grep -q vmsplice "$tmp/strace.txt" || { cat "$tmp/strace.txt"; fail "the server never used vmsplice for large reads"; }
same_file "$tmp/in.img" "$tmp/out.img"

# Holes among the data, unaligned reads up to 2 MiB that straddle them (larger than the pipe:
# sent the ordinary way), structured and simple replies: every read must match the model.
PYTHONPATH="$repo/tests/lib" /usr/bin/python3 - "$uri" "$tmp/in.img" <<'PY'
import random, sys, threading, nbd
uri, path = sys.argv[1], sys.argv[2]
model = bytearray(open(path, "rb").read())
h = nbd.NBD(); h.connect_uri(uri)
for off in range(0, len(model), 4 << 20):          # trim 1 MiB of every 4
    h.trim(1 << 20, off)
    model[off:off + (1 << 20)] = bytes(1 << 20)
rng = random.Random(7)
for structured in (True, False):
    c = nbd.NBD(); c.set_request_structured_replies(structured); c.connect_uri(uri)
    for _ in range(60):
        n = rng.choice([64 << 10, 300 << 10, 1 << 20, 2 << 20])
        off = rng.randrange(0, len(model) - n)
        got = c.pread(n, off)
        assert got == model[off:off + n], f"read {n} at {off} (structured={structured}) differs"
# Reads racing writes elsewhere: a region no one writes must read back unchanged.
stop = threading.Event()
def writer():
    w = nbd.NBD(); w.connect_uri(uri)
    while not stop.is_set():
        w.pwrite(b"\xaa" * (256 << 10), 16 << 20)
        w.trim(256 << 10, 16 << 20)
t = threading.Thread(target=writer); t.start()
try:
    for _ in range(200):
        assert h.pread(1 << 20, 8 << 20) == model[8 << 20:9 << 20], "a read beside writes changed"
finally:
    stop.set(); t.join()
print("reads ok")
PY

echo OK
