#!/usr/bin/env bash
# The nocache filter: cache is offered in each mode as nbdkit offers it, cache requests succeed
# where offered, and the data is unchanged.
source "$(dirname "$0")/lib/functions.sh"

for mode in "" cachemode=none cachemode=emulate cachemode=nop; do
    # shellcheck disable=SC2086
    same_flags_as_nbdkit can_cache -- --filter=nocache memory 1M $mode
done
start_server --filter=nocache memory 1M cachemode=none
[ "$(export_flags "$uri" can_cache)" = "can_cache=False" ] || fail "cachemode=none offers cache"
for mode in emulate nop; do
    start_server --filter=nocache memory 1M cachemode=$mode
    nbdsh -u "$uri" -c '
h.pwrite(b"cached" * 100, 4096)
h.cache(1 << 20, 0)
assert h.pread(600, 4096) == b"cached" * 100
'
done
bad_args --filter=nocache memory 1M cachemode=all -- cachemode=all
echo OK
