#!/usr/bin/env bash
# The nozero filter: in each mode the export offers zeroing as nbdkit does with the same command
# line; zeroing still zeroes where it is offered, fast zero requests fail with ENOTSUP where the
# mode says so, and writes of zeroes (what clients fall back to) work.  (nbdforge's server always
# advertises fast zero along with zero and answers ENOTSUP itself where the export cannot, so the
# fast zero flag is checked by its outcome, not compared with nbdkit's.)
source "$(dirname "$0")/lib/functions.sh"

for modes in "" zeromode=none zeromode=emulate zeromode=notrim zeromode=plugin \
    "zeromode=emulate fastzeromode=none" "zeromode=plugin fastzeromode=slow" \
    "zeromode=plugin fastzeromode=ignore" "zeromode=plugin fastzeromode=none"; do
    # shellcheck disable=SC2086
    same_flags_as_nbdkit can_zero can_trim -- --filter=nozero memory 1M $modes
done

zero_check() {   # zero_check FAST_ZERO_OUTCOME: ok or ENOTSUP
    nbdsh -u "$uri" -c '
import errno, os, nbd
h.pwrite(b"\xff" * 65536, 0)
if h.can_zero():
    h.zero(4096, 1000)
    assert h.pread(4096, 1000) == bytes(4096)
    if h.can_fast_zero():
        try:
            h.zero(4096, 8192, nbd.CMD_FLAG_FAST_ZERO)
            outcome = "ok"
        except nbd.Error as e:
            assert e.errnum == errno.ENOTSUP, e
            outcome = "ENOTSUP"
        assert outcome == os.environ["WANT"], outcome
h.pwrite(bytes(512), 0)
assert h.pread(512, 0) == bytes(512)
'
}
start_server --filter=nozero memory 1M zeromode=emulate
WANT=ENOTSUP zero_check
start_server --filter=nozero memory 1M zeromode=emulate fastzeromode=none
WANT=ENOTSUP zero_check
start_server --filter=nozero memory 1M zeromode=plugin fastzeromode=slow
WANT=ENOTSUP zero_check
start_server --filter=nozero memory 1M zeromode=plugin fastzeromode=ignore
WANT=ok zero_check
start_server --filter=nozero memory 1M zeromode=notrim
WANT=ok zero_check
start_server --filter=nozero memory 1M
WANT=ok zero_check

bad_args --filter=nozero memory 1M zeromode=often -- zeromode=often
bad_args --filter=nozero memory 1M fastzeromode=fast -- fastzeromode=fast
echo OK
