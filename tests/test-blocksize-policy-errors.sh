#!/usr/bin/env bash
# The blocksize-policy filter's error policy, through nbdsh with libnbd's own checks off, on
# the same command lines as nbdkit (minimum 512, maximum 1M, over memory): with
# blocksize-error-policy=error, reads and writes not a multiple of 512 in length or offset, or
# longer than 1M, and misaligned zero, trim, cache and block status get EINVAL, while a zero
# longer than 1M (no data) and aligned requests pass; with allow (the default) every one of them
# passes to the plugin, and a misaligned write lands.  Each answer is the one nbdkit gives.
source "$(dirname "$0")/lib/functions.sh"

# requests URI: one "name: ok" or "name: errno N" line per request.
requests() {
    nbdsh --base-allocation -u "$1" -c '
import nbd
h.set_strict_mode(0)
def t(name, f):
    try:
        f()
        print(name + ": ok")
    except nbd.Error as e:
        print(name + ": errno %d" % e.errnum)
t("read 1 at 3", lambda: h.pread(1, 3))
t("read 512 at 3", lambda: h.pread(512, 3))
t("read 1000 at 0", lambda: h.pread(1000, 0))
t("read 2M at 0", lambda: h.pread(2 << 20, 0))
t("read 1M at 512", lambda: h.pread(1 << 20, 512))
t("write 3 at 5", lambda: h.pwrite(b"abc", 5))
t("write 2M at 0", lambda: h.pwrite(b"x" * (2 << 20), 0))
t("zero 1 at 1", lambda: h.zero(1, 1))
t("zero 2M at 0", lambda: h.zero(2 << 20, 0))
t("trim 1 at 1", lambda: h.trim(1, 1))
t("cache 1 at 1", lambda: h.cache(1, 1))
t("block status 1 at 1", lambda: h.block_status(1, 1, lambda *a: 0))
t("block status 512 at 512", lambda: h.block_status(512, 512, lambda *a: 0))
t("flush", lambda: h.flush())
t("write 4096 at 4096", lambda: h.pwrite(b"y" * 4096, 4096))
'
}

for policy in allow error; do
    args=(--filter=blocksize-policy memory 4M blocksize-minimum=512 blocksize-maximum=1M
          blocksize-error-policy=$policy)
    start_nbdkit "${args[@]}"
    requests "$peer_uri" > "$tmp/theirs.$policy"
    start_server "${args[@]}"
    requests "$uri" > "$tmp/ours.$policy"
    echo "--- $policy"
    cat "$tmp/ours.$policy"
    diff -u "$tmp/theirs.$policy" "$tmp/ours.$policy" || fail "policy $policy: answers differ from nbdkit's"
done

# What the policies mean, whatever nbdkit says.
grep -q "errno" "$tmp/ours.allow" && fail "blocksize-error-policy=allow refused a request"
for r in "read 1 at 3" "read 512 at 3" "read 1000 at 0" "read 2M at 0" "write 3 at 5" "write 2M at 0" \
         "zero 1 at 1" "trim 1 at 1" "cache 1 at 1" "block status 1 at 1"; do
    grep -qFx "$r: errno 22" "$tmp/ours.error" || fail "error policy: '$r' was not refused with EINVAL"
done
for r in "read 1M at 512" "zero 2M at 0" "block status 512 at 512" "flush" "write 4096 at 4096"; do
    grep -qFx "$r: ok" "$tmp/ours.error" || fail "error policy: '$r' was refused"
done

# Under allow the misaligned write reached the plugin; under error it did not.
for policy in allow error; do
    start_server --filter=blocksize-policy memory 1M blocksize-minimum=512 blocksize-error-policy=$policy
    POLICY=$policy nbdsh -u "$uri" -c '
import os
h.set_strict_mode(0)
try:
    h.pwrite(b"abc", 5)
except nbd.Error:
    pass
want = b"\0" * 5 + (b"abc" if os.environ["POLICY"] == "allow" else b"\0" * 3)
got = h.pread(512, 0)[:8]
assert got == want, got
'
done
echo OK
