#!/usr/bin/env bash
# Bad command lines exit 1 with a message that names what was wrong (the parameter and the
# value, or the file), and nothing starts listening: the socket is never created.
#
# Fails against nbdkit 1.32: for size=12Q it says "could not parse size: unknown suffix 'Q'",
# which does not repeat the value 12Q.
source "$(dirname "$0")/lib/functions.sh"

bad_args memory size=12Q -- size 12Q
bad_args memory 12Q -- 12Q
bad_args memory size=-1 -- size
bad_args memory -- size
bad_args nosuchplugin -- nosuchplugin
bad_args file "$tmp/does-not-exist.img" -- "$tmp/does-not-exist.img"
bad_args --no-such-option memory 1M -- no-such-option
bad_args --filter=nosuchfilter memory 1M -- nosuchfilter
bad_args memory 1M nosuchkey=1 -- nosuchkey
bad_args -- ""
echo OK
