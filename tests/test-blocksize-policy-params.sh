#!/usr/bin/env bash
# Bad blocksize-policy parameters stop the server before it listens, with a message naming the
# filter, the parameter and the value (each one nbdkit also refuses, except where noted); a
# minimum, preferred and maximum that only clash with what the layer below advertises fail the
# client's connection, as in nbdkit, and leave the server up.
source "$(dirname "$0")/lib/functions.sh"

m=(--filter=blocksize-policy memory 1M)
bad_args "${m[@]}" blocksize-error-policy=foo -- blocksize-policy blocksize-error-policy=foo
bad_args "${m[@]}" blocksize-minimum=abc -- blocksize-policy blocksize-minimum=abc
bad_args "${m[@]}" blocksize-minimum=3 -- blocksize-policy blocksize-minimum=3 "power of 2"
bad_args "${m[@]}" blocksize-minimum=128K -- blocksize-policy blocksize-minimum=128K 64K
bad_args "${m[@]}" blocksize-preferred=256 -- blocksize-policy blocksize-preferred=256 "512 and 32M"
bad_args "${m[@]}" blocksize-preferred=64M -- blocksize-policy blocksize-preferred=64M
bad_args "${m[@]}" blocksize-preferred=3000 -- blocksize-policy blocksize-preferred=3000 "power of 2"
bad_args "${m[@]}" blocksize-maximum=5G -- blocksize-policy blocksize-maximum=5G
bad_args "${m[@]}" blocksize-maximum=-1 -- blocksize-policy blocksize-maximum=-1
bad_args "${m[@]}" blocksize-write-disconnect=1x -- blocksize-policy blocksize-write-disconnect=1x
bad_args "${m[@]}" blocksize-minimum=4096 blocksize-preferred=512 -- \
    blocksize-policy blocksize-minimum=4096 blocksize-preferred
bad_args "${m[@]}" blocksize-preferred=64K blocksize-maximum=32K -- \
    blocksize-policy blocksize-preferred=65536 blocksize-maximum
bad_args "${m[@]}" blocksize-minimum=4K blocksize-write-disconnect=4K -- \
    blocksize-policy blocksize-write-disconnect=4096 blocksize-minimum
# nbdkit 1.32 lets this one through (its check compares the maximum with itself), then fails
# every connection: the preferred 4096 is over the maximum.
bad_args "${m[@]}" blocksize-minimum=512 blocksize-maximum=1000 -- \
    blocksize-policy blocksize-maximum=1000 "multiple of blocksize-minimum"

# Valid alone, invalid with the default preferred size of 4096: the connection fails.
start_server "${m[@]}" blocksize-maximum=1000
expect_fail nbdinfo "$uri" 2>"$tmp/nbdinfo.err"
cat "$tmp/nbdinfo.err"
grep -q "preferred 4096" "$server_log" || fail "the server log does not say why: $(cat "$server_log")"
kill -0 "$server_pid" || fail "the server died"
echo OK
