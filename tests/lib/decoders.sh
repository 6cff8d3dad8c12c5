# Helpers of the decoding filters' tests (gzip, bzip2, xz, lzip): a disk image to compress, and
# checks of how corrupt input and the filters' parameters are handled (served_is is in functions.sh).

# decoders_image FILE: an image of data, zeroes and data again, 6 MiB and a few bytes (not a
# multiple of any block size), so that compressed blocks differ in size and some are all zero.
decoders_image() {
    random_file "$tmp/random.bin" 3M
    { cat "$tmp/random.bin"; head -c 2M /dev/zero; head -c 1000001 "$tmp/random.bin"; } > "$1"
}

# files_fail FILTER FILES...: served through FILTER, each file fails (read_fails).
files_fail() {
    local f=$1 bad
    shift
    for bad in "$@"; do
        start_server --filter="$f" file "$bad"
        read_fails "$bad"
    done
}

# read_fails: every read of the running server ($uri) fails with EIO, or the open fails.
read_fails() {
    nbdsh -u "$uri" -c '
import errno, nbd
try:
    h.pread(512, 0)
    h.pread(512, h.get_size() - 512)
    assert False, "read of corrupt data succeeded"
except nbd.Error as e:
    assert e.errnum == errno.EIO, e
' 2>"$tmp/readerr" || grep -qE 'NBD_OPT_GO|server replied with error|export|handshake' "$tmp/readerr" ||
        fail "$1: neither EIO nor a refused open: $(cat "$tmp/readerr")"
    kill -0 "$server_pid" 2>/dev/null || fail "$1: the server died"
}

# whole_stream_checks FILTER: the checks of a filter that decompresses a whole stream (gzip,
# bzip2; FILTER is also the compressing command, and $tmp/disk.FILTER its output of
# $tmp/disk.img, already made): the data whole and at random offsets, the zeroes as a hole,
# concatenated streams, several clients at once, FILTER-max-size=, corrupt and foreign input
# (EIO or a refused open, the server staying up), a bad parameter.
whole_stream_checks() {
    local f=$1 z="$tmp/disk.$1"
    start_server --filter="$f" file "$z"
    served_is "$tmp/disk.img"
    nbdinfo --map "$uri" | tee "$tmp/map"
    grep -Eq '^ +3145728 +2097152 +3 +hole,zero' "$tmp/map" || fail "the zeroes are not a hole"

    # Two streams: decompressing gives the concatenation, and so do we.
    { "$f" -c "$tmp/random.bin"; cat "$z"; } > "$tmp/two.$f"
    cat "$tmp/random.bin" "$tmp/disk.img" > "$tmp/two.img"
    start_server --filter="$f" file "$tmp/two.$f"
    served_is "$tmp/two.img"

    # Several clients at once decode once and all see the data.
    start_server --filter="$f" file "$z"
    local pids=() i
    for i in 1 2 3; do nbdcopy "$uri" "$tmp/c$i.out" & pids+=($!); done
    wait "${pids[@]}"
    for i in 1 2 3; do same_file "$tmp/disk.img" "$tmp/c$i.out"; done

    start_server --filter="$f" file "$z" "$f-max-size=1M"
    read_fails "$f-max-size=1M"
    grep -q "$f-max-size=1M" "$server_log" || fail "the error does not name $f-max-size: $(cat "$server_log")"

    # Corrupt: bytes changed in the middle, a truncated file, not compressed at all.
    cp "$z" "$tmp/flip.$f"
    printf '\x55\xaa\x55\xaa' | dd of="$tmp/flip.$f" bs=1 seek=100000 conv=notrunc status=none
    head -c 2000000 "$z" > "$tmp/short.$f"
    files_fail "$f" "$tmp/flip.$f" "$tmp/short.$f" "$tmp/random.bin"

    bad_args --filter="$f" file "$z" "$f-max-size=1Q" -- "$f-max-size=1Q"
}

# block_checks FILTER FILE: the checks of a filter that decompresses by block (xz, lzip), FILE
# being $tmp/disk.img compressed in blocks of 1000000 bytes or so: FILTER-max-depth=1 still
# serves the data; a block larger than FILTER-max-block=512K is refused at open, the message
# naming the parameter; bytes changed in the first block make its reads fail with EIO while the
# last block still reads; truncated and foreign files are refused; bad parameters are refused.
block_checks() {
    local f=$1 z=$2
    start_server --filter="$f" file "$z" "$f-max-depth=1"
    served_is "$tmp/disk.img"

    start_server --filter="$f" file "$z" "$f-max-block=512K"
    if nbdinfo --size "$uri" 2>"$tmp/err"; then fail "$f-max-block=512K: served anyway"; fi
    grep -q "$f-max-block=512K" "$server_log" || fail "the error does not name $f-max-block: $(cat "$server_log")"

    cp "$z" "$tmp/flip"
    printf '\x55\xaa\x55\xaa' | dd of="$tmp/flip" bs=1 seek=5000 conv=notrunc status=none
    start_server --filter="$f" file "$tmp/flip"
    ORIG="$tmp/disk.img" nbdsh -u "$uri" -c '
import errno, os, nbd
data = open(os.environ["ORIG"], "rb").read()
try:
    h.pread(4096, 0)
    assert False, "read of a corrupt block succeeded"
except nbd.Error as e:
    assert e.errnum == errno.EIO, e
assert h.pread(4096, 6100000) == data[6100000:6104096]
'
    grep -q "$f: corrupt data" "$server_log" || fail "no message for the corrupt block"

    head -c 2000000 "$z" > "$tmp/short"
    files_fail "$f" "$tmp/short" "$tmp/random.bin" "$tmp/disk.img"

    bad_args --filter="$f" file "$z" "$f-max-block=1Q" -- "$f-max-block=1Q"
    bad_args --filter="$f" file "$z" "$f-max-block=0" -- "$f-max-block=0"
    bad_args --filter="$f" file "$z" "$f-max-depth=0" -- "$f-max-depth=0"
    bad_args --filter="$f" file "$z" "$f-max-depth=x" -- "$f-max-depth=x"
}
