#!/usr/bin/env bash
# systemd socket activation: libnbd's "[ CMD ]" syntax starts the server with a listening socket
# passed as fd 3 (LISTEN_PID/LISTEN_FDS), as a systemd socket unit would.
source "$(dirname "$0")/lib/functions.sh"

size=$(nbdinfo --size -- [ "${server_cmd[@]}" memory 3M ])
[ "$size" -eq 3145728 ] || fail "size over socket activation: $size"

random_file "$tmp/in.img" 8M
# The file plugin serves an existing file; nbdcopy fills it.
truncate -s 8M "$tmp/out.img"
nbdcopy -- "$tmp/in.img" [ "${server_cmd[@]}" file "$tmp/out.img" ]
same_file "$tmp/in.img" "$tmp/out.img"
echo OK
