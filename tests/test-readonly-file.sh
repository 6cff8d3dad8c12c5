#!/usr/bin/env bash
# The readonly filter: without readonly-file the export is read-only; with it, writes work
# until the file appears, fail with EPERM while it exists (on a connection opened before), and
# work again once it is gone.
source "$(dirname "$0")/lib/functions.sh"

start_server --filter=readonly memory 1M
[ "$(export_flags "$uri" is_read_only)" = "is_read_only=True" ] || fail "not read-only"

start_server --filter=readonly memory 1M readonly-file="$tmp/ro"
RO="$tmp/ro" nbdsh -u "$uri" -c '
import errno, os, nbd
ro = os.environ["RO"]
assert not h.is_read_only()
h.pwrite(b"before", 0)
open(ro, "w").close()
for what, call in [("write", lambda: h.pwrite(b"during", 0)), ("zero", lambda: h.zero(512, 0)),
                   ("trim", lambda: h.trim(512, 0))]:
    try:
        call()
        assert False, what + " succeeded while the file exists"
    except nbd.Error as e:
        assert e.errnum == errno.EPERM, (what, e)
assert h.pread(6, 0) == b"before"
os.unlink(ro)
h.pwrite(b"after!", 0)
assert h.pread(6, 0) == b"after!"
'
echo OK
