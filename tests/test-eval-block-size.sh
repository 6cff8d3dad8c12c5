#!/usr/bin/env bash
# A plugin's block sizes are advice to the client, not a filter on requests (nbdkit's model):
# an eval plugin advertising 512/4096/1M gets, from nbdsh with libnbd's checks off, a misaligned
# read and write and a read and write over its maximum, exactly as nbdkit passes them (its
# scripts log what they are called with; the logs are compared), and both servers advertise the
# same block sizes.
source "$(dirname "$0")/lib/functions.sh"

run_with() {   # run_with SERVER-STARTER LOG: serves the eval plugin, sends the requests
    "$1" eval 'block_size=echo 512 4096 1M' 'get_size=echo 4M' \
        "pread=echo \"pread \$3 \$4\" >> $2; dd if=/dev/zero count=\$3 iflag=count_bytes status=none" \
        "pwrite=echo \"pwrite \$3 \$4\" >> $2; cat >/dev/null"
    nbdsh -u "$uri" -c '
h.set_strict_mode(0)
print("block sizes", [h.get_block_size(s) for s in (nbd.SIZE_MINIMUM, nbd.SIZE_PREFERRED, nbd.SIZE_MAXIMUM)])
assert len(h.pread(1, 3)) == 1
assert len(h.pread((1 << 20) + 512, 0)) == (1 << 20) + 512
h.pwrite(b"abc", 5)
h.pwrite(b"x" * (2 << 20), 512)
' > "$2.client"
}

run_with start_nbdkit "$tmp/theirs.log"
run_with start_server "$tmp/ours.log"
cat "$tmp/ours.log.client" "$tmp/ours.log"
diff -u "$tmp/theirs.log.client" "$tmp/ours.log.client" || fail "the block sizes differ from nbdkit's"
grep -qFx "block sizes [512, 4096, 1048576]" "$tmp/ours.log.client" || fail "wrong block sizes"
diff -u "$tmp/theirs.log" "$tmp/ours.log" || fail "the plugin saw other requests than under nbdkit"
for r in "pread 1 3" "pwrite 3 5" "pwrite 2097152 512"; do
    grep -qFx "$r" "$tmp/ours.log" || fail "the plugin did not see $r"
done
echo OK
