#!/usr/bin/env bash
# The rotational filter sets NBD_FLAG_ROTATIONAL by default and with rotational=true, clears it
# with rotational=false (memory is not rotational without the filter), and refuses a value that
# is not a boolean.  nbdkit 1.32 has no rotational filter to compare with.
source "$(dirname "$0")/lib/functions.sh"

check() {   # check WANT ARGS...
    local want=$1
    shift
    start_server "$@"
    [ "$(export_flags "$uri" is_rotational)" = "is_rotational=$want" ] || fail "$*: want rotational $want"
}
check False memory 1M
check True --filter=rotational memory 1M
check True --filter=rotational memory 1M rotational=yes
check False --filter=rotational memory 1M rotational=false
nbdsh -u "$uri" -c 'h.pwrite(b"spin", 0); assert h.pread(4, 0) == b"spin"'
bad_args --filter=rotational memory 1M rotational=spinning -- rotational=spinning
echo OK
