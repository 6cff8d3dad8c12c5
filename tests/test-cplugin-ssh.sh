#!/usr/bin/env bash
# Debian's C ssh plugin (nbdkit-ssh-plugin.so, linked against libssh), loaded unchanged by
# nbdforge by path, reads and writes a file through a real OpenSSH server started here: the same
# bytes as the file and as nbdkit serves with the same .so; a write lands in the remote file.
source "$(dirname "$0")/lib/functions.sh"
source "$(dirname "$0")/lib/sshd.sh"
start_sshd

so=/usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-ssh-plugin.so
[ -e "$so" ] || fail "$so is missing (package nbdkit)"

random_file "$tmp/disk.img" 4M
same_as_nbdkit "$so" "${ssh_args[@]}" "$tmp/disk.img"
same_file "$tmp/ours.img" "$tmp/disk.img"

start_server "$so" "${ssh_args[@]}" "$tmp/disk.img"
grep -q "nbdkit-ssh-plugin.so" <("${server_cmd[@]}" "$so" --dump-plugin) || fail "--dump-plugin does not name the .so"
nbdsh -u "$uri" -c 'h.pwrite(b"written through Debian ssh plugin", 12345); h.flush()'
stop_server "$server_pid"
[ "$(dd if="$tmp/disk.img" bs=1 skip=12345 count=33 status=none)" = "written through Debian ssh plugin" ] ||
    fail "the write did not land in the remote file"
