#!/usr/bin/env bash
# The protect filter: writes that would change a protected range fail with EPERM and change
# nothing, writes that leave it as it is succeed, the rest of the disk stays writable; the
# complement form protects all but a range; nbdkit with the same command line gives the same
# outcome for the same requests and leaves the same bytes.
source "$(dirname "$0")/lib/functions.sh"

requests='
import errno, nbd
def outcome(call):
    try:
        call()
        return "ok"
    except nbd.Error as e:
        return errno.errorcode[e.errnum]
results = [
    outcome(lambda: h.pwrite(b"\x01" * 512, 0)),          # unprotected
    outcome(lambda: h.pwrite(b"\x02" * 10, 1020)),        # into 1024-2047
    outcome(lambda: h.pwrite(h.pread(100, 1500), 1500)),  # same bytes: allowed
    outcome(lambda: h.zero(512, 1536)),                   # data there: refused
    outcome(lambda: h.zero(4096, 4096)),                  # unprotected
    outcome(lambda: h.pwrite(b"\x03" * 100, 8000)),
]
print(" ".join(results))
'
run_requests() {   # run_requests URI: prints the outcomes and leaves the disk image in $tmp/$2
    nbdsh -u "$1" -c "$requests"
}

for flavour in "protect=1024-2047" "protect=~0-1023 protect=~2048-"; do
    random_file "$tmp/a.img" 64K
    cp "$tmp/a.img" "$tmp/b.img"
    cp "$tmp/a.img" "$tmp/orig.img"
    # shellcheck disable=SC2086
    start_nbdkit --filter=protect file "$tmp/a.img" $flavour
    theirs=$(run_requests "$peer_uri")
    # shellcheck disable=SC2086
    start_server --filter=protect file "$tmp/b.img" $flavour
    ours=$(run_requests "$uri")
    echo "$flavour: nbdkit: $theirs; ours: $ours"
    [ "$ours" = "$theirs" ] || fail "$flavour: outcomes differ"
    case "$flavour" in
        protect=1024-2047) [ "$ours" = "ok EPERM ok EPERM ok ok" ] || fail "unexpected outcomes" ;;
    esac
    same_file "$tmp/a.img" "$tmp/b.img"
    cmp -s -i 1024:1024 -n 1024 "$tmp/b.img" "$tmp/orig.img" || fail "the protected range changed"
done

# A trim touching a protected range is refused (nbdkit 1.32 drops the connection instead).
start_server --filter=protect memory 1M protect=1024-2047
nbdsh -u "$uri" -c '
import errno, nbd
h.trim(1024, 0)
try:
    h.trim(4096, 0)
    assert False, "trim of a protected range succeeded"
except nbd.Error as e:
    assert e.errnum == errno.EPERM, e
'
bad_args --filter=protect memory 1M protect=5-4 -- protect=5-4
bad_args --filter=protect memory 1M protect=1k-2k -- protect=1k-2k
echo OK
