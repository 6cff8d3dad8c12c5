#!/usr/bin/env bash
# The magic parameter: a bare value after the plugin is its magic key (memory: size; file:
# file; null: size), and key=value forms mean the same.
source "$(dirname "$0")/lib/functions.sh"

# size_of ARGS...: start a server with ARGS and print the size it serves.
size_of() {
    start_server "$@"
    size=$(nbdinfo --size "$uri")
}

size_of memory 1G; [ "$size" -eq 1073741824 ] || fail "memory 1G: $size"
size_of memory size=1G; [ "$size" -eq 1073741824 ] || fail "memory size=1G: $size"
size_of memory 1048576; [ "$size" -eq 1048576 ] || fail "memory 1048576: $size"
size_of memory 3k; [ "$size" -eq 3072 ] || fail "memory 3k: $size"
size_of null 5M; [ "$size" -eq 5242880 ] || fail "null 5M: $size"

random_file "$tmp/disk.img" 3M
(cd "$tmp" && exec "${server_cmd[@]}" -f -U "$tmp/rel.sock" file disk.img </dev/null >"$tmp/rel.log" 2>&1) &
server_pids+=("$!")
server_logs+=("$tmp/rel.log")
wait_for_socket "$tmp/rel.sock" "$!"
nbdcopy "nbd+unix:///?socket=$tmp/rel.sock" "$tmp/copy.img"
same_file "$tmp/disk.img" "$tmp/copy.img"

start_server file file="$tmp/disk.img"
[ "$(nbdinfo --size "$uri")" -eq 3145728 ] || fail "file file=..."
echo OK
