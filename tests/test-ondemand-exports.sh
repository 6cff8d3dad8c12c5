#!/usr/bin/env bash
# The ondemand plugin: a file system per export name, made in dir= on first use and kept across
# connections and servers. Exports a and b are made, written, read back after reconnecting and
# after a restart; their files are in dir=; a second client of a busy export is refused (as by
# nbdkit, with its message), waits with wait=true, and is let in with share=true; names with '.',
# '/' or ':' and names over 255 bytes are refused; "" is the export "default"; nbdinfo --list
# lists what nbdkit lists for the same directory.
#
# Against nbdkit 1.32 (NBDFORGE=nbdkit) the test stops at the checks of our log messages (nbdkit
# says "a: filesystem is locked by another client"); it has no share= either.
source "$(dirname "$0")/lib/functions.sh"

mkdir -p "$tmp/ours" "$tmp/theirs"
for d in ours theirs; do
    : > "$tmp/$d/.hidden"      # dot files (a command's state) are never exports
    : > "$tmp/$d/not:export"
done
export_uri() { echo "nbd+unix:///$1?socket=$sock"; }

start_server ondemand dir="$tmp/ours" 16M label=ONDEMAND
export sock
nbdsh -u "$(export_uri a)" -c 'h.pwrite(b"export a", 1 << 20); h.flush()'
nbdsh -u "$(export_uri b)" -c 'h.pwrite(b"export b", 1 << 20)'
[ "$(nbdsh -u "$(export_uri a)" -c 'print(h.pread(8, 1 << 20).decode())')" = "export a" ] || fail "a was not kept"
[ "$(nbdsh -u "$(export_uri b)" -c 'print(h.pread(8, 1 << 20).decode())')" = "export b" ] || fail "b was not kept"
[ "$(nbdinfo --size "$(export_uri "")")" -eq $((16 << 20)) ] || fail "the default export's size"
for f in a b default; do
    [ "$(stat -c %s "$tmp/ours/$f")" -eq $((16 << 20)) ] || fail "$f is not a 16M file in dir="
done
blkid -p "$tmp/ours/a" | grep 'TYPE="ext4"' | grep -q 'LABEL="ONDEMAND"' || fail "a: $(blkid -p "$tmp/ours/a")"

# A second client of a busy export is refused, as nbdkit refuses it.
second_client() {
    nbdsh -c '
import nbd, os
uri = "nbd+unix:///a?socket=" + os.environ["sock"]
first = nbd.NBD()
first.connect_uri(uri)
second = nbd.NBD()
try:
    second.connect_uri(uri)
    print("allowed")
except nbd.Error:
    print("refused")
other = nbd.NBD()
other.connect_uri(uri.replace("///a", "///b"))
'
}
[ "$(second_client)" = refused ] || fail "a second client of export a was let in"
grep -q "ondemand: export 'a': the file system is locked by another client" "$server_log" ||
    fail "the refusal is not logged"

# Names the plugin refuses.
for name in a.b x:y "$(printf 'n%.0s' {1..256})"; do
    expect_fail nbdinfo --size "$(export_uri "$name")"
done
expect_fail nbdinfo --size "nbd+unix:///..%2Fescape?socket=$sock"
[ ! -e "$tmp/escape" ] || fail "a name escaped dir="
grep -q "export name 'a.b' refused" "$server_log" || fail "the refused name is not logged"
nbdinfo --list "$uri" | grep '^export=' > "$tmp/ours.list"
stop_server "$server_pid"

# The same with nbdkit: the same exports listed, the same refusal.
start_reference ondemand dir="$tmp/theirs" 16M label=ONDEMAND
nbdsh -u "$(export_uri a)" -c 'pass'
nbdsh -u "$(export_uri b)" -c 'pass'
nbdsh -u "$(export_uri "")" -c 'pass'
[ "$(second_client)" = refused ] || fail "nbdkit let a second client in"
# nbdkit lets go of export a a moment after second_client's first client has left; listing
# opens every export, so wait for it (a fresh-clone run once failed the listing here).
for ((i = 0; i < 50; i++)); do
    nbdinfo --size "$(export_uri a)" >/dev/null 2>&1 && break
    sleep 0.1
done
nbdinfo --list "$uri" | grep '^export=' > "$tmp/theirs.list"
stop_server "$server_pid"
sort "$tmp/ours.list" > "$tmp/ours.sorted"
sort "$tmp/theirs.list" > "$tmp/theirs.sorted"
cat "$tmp/ours.list"
diff -u "$tmp/theirs.sorted" "$tmp/ours.sorted" || fail "the export list differs from nbdkit's"
[ "$(head -1 "$tmp/ours.list")" = 'export="default":' ] || fail "the default export is not listed first"

# A new server finds the exports in dir=; share=true lets clients use one export together.
start_server ondemand dir="$tmp/ours" 16M share=true
[ "$(nbdsh -u "$(export_uri a)" -c 'print(h.pread(8, 1 << 20).decode())')" = "export a" ] ||
    fail "a was not kept across servers"
[ "$(second_client)" = allowed ] || fail "share=true: the second client was refused"
stop_server "$server_pid"

# wait=true: the second client waits until the first leaves.
start_server ondemand dir="$tmp/ours" 16M wait=true
nbdsh -c '
import nbd, os, threading, time
uri = "nbd+unix:///a?socket=" + os.environ["sock"]
first = nbd.NBD()
first.connect_uri(uri)
def leave():
    time.sleep(1)
    first.shutdown()
threading.Thread(target=leave).start()
start = time.monotonic()
second = nbd.NBD()
second.connect_uri(uri)
waited = time.monotonic() - start
assert waited > 0.8, waited
print("waited %.1f s" % waited)
'
stop_server "$server_pid"

# command=: the variables, and $disk is the export's file in dir=.
start_server ondemand dir="$tmp/ours" 1M fill=xyz command='truncate -s $size "$disk"; printf %s "$fill" > "$disk.made-by"'
nbdinfo --size "$(export_uri c)" >/dev/null
[ "$(cat "$tmp/ours/c.made-by")" = xyz ] || fail "the command did not run with its variables"
stop_server "$server_pid"

# A failing command: the open fails, no half-made export is kept.
start_server ondemand dir="$tmp/ours" 1M command='truncate -s 1M "$disk"; echo "no mkfs today" >&2; exit 2'
expect_fail nbdinfo --size "$(export_uri d)"
grep -q "ondemand: export 'd': command: exited with status 2: no mkfs today" "$server_log" ||
    fail "the failure is not logged: $(cat "$server_log")"
[ ! -e "$tmp/ours/d" ] || fail "a half-made export was kept"
stop_server "$server_pid"

bad_args ondemand 1M -- "dir=<EXPORTSDIR>"
bad_args ondemand dir="$tmp/ours" -- "size=<SIZE>"
bad_args ondemand dir="$tmp/nonexistent" 1M -- "dir=$tmp/nonexistent"
bad_args ondemand dir="$tmp/ours" 1M share=maybe -- "share=maybe"
bad_args ondemand dir="$tmp/ours" 1M disk=x -- "disk=x"
# --help describes the parameters; --dump-plugin names the plugin and its magic key.
"${server_cmd[@]}" ondemand --help > "$tmp/help"
grep -q -- 'share=' "$tmp/help" || fail "ondemand --help does not describe share="
"${server_cmd[@]}" ondemand --dump-plugin > "$tmp/dump"
grep -qx 'name=ondemand' "$tmp/dump" || fail "ondemand --dump-plugin"
grep -qx 'magic_config_key=size' "$tmp/dump" || fail "ondemand --dump-plugin: the magic key is not size"
echo OK
