#!/usr/bin/env bash
# Debian's S3 plugin (nbdkit-S3-plugin, a Python script using boto3, written for nbdkit's python
# plugin) run unchanged by nbdforge's python plugin against the three-node Swift cluster of the
# S3 tests: a disk written through it reads back the same through it, through nbdkit running the
# same script, and through nbdforge's own S3 plugin (the same object names).
# timeout: 240
source "$(dirname "$0")/lib/functions.sh"
source "$(dirname "$0")/lib/swift.sh"

script=/usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-S3-plugin
[ -e "$script" ] || fail "$script is missing (package nbdkit-plugin-python)"
start_swift
s3 mb deb
args=(endpoint-url="$s3_endpoint" bucket=deb key=disk size=8M object-size=64K
      access-key="$s3_access_key" secret-key="$s3_secret_key")

random_file "$tmp/disk.img" 8M
start_server python "$script" "${args[@]}"
nbdcopy "$tmp/disk.img" "$uri"
nbdcopy "$uri" "$tmp/back.img"
stop_server "$server_pid"
same_file "$tmp/back.img" "$tmp/disk.img"

start_reference python "$script" "${args[@]}"
nbdcopy "$uri" "$tmp/theirs.img"
stop_server "$server_pid"
same_file "$tmp/theirs.img" "$tmp/disk.img"

start_server S3 "${args[@]}"
nbdcopy "$uri" "$tmp/native.img"
stop_server "$server_pid"
same_file "$tmp/native.img" "$tmp/disk.img"
echo OK
