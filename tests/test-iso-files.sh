#!/usr/bin/env bash
# The iso plugin: an ISO 9660 image made at start-up from directories (merged), served read-only.
# isoinfo and xorriso find every file with its contents; the list of files and the image's size
# are the ones nbdkit serves for the same command line; the temporary image is gone at exit.
#
# nbdkit 1.32 adds xorriso's "-as mkisofs" whatever prog= says, so prog=genisoimage fails there;
# that case is checked against genisoimage's own output instead. Run against nbdkit
# (NBDFORGE=nbdkit) the test also stops earlier, where it looks for the image in $TMPDIR while it is
# served: nbdkit unlinks its image at once and keeps it open.
source "$(dirname "$0")/lib/functions.sh"

mkdir -p "$tmp/d1/sub/deeper" "$tmp/d2" "$tmp/images"
echo hello > "$tmp/d1/hello.txt"
random_file "$tmp/d1/sub/random.bin" 300K
echo "a long file name survives Joliet and Rock Ridge" > "$tmp/d1/sub/deeper/a long file name.txt"
echo second > "$tmp/d2/from-d2.txt"
export TMPDIR="$tmp/images"

# check_iso IMAGE: every file is there with its contents.
check_iso() {
    isoinfo -R -f -i "$1" | sort > "$1.list"
    cat "$1.list"
    for f in /hello.txt /sub/random.bin "/sub/deeper/a long file name.txt" /from-d2.txt; do
        grep -qxF "$f" "$1.list" || fail "$1: $f is not listed"
    done
    isoinfo -R -x /sub/random.bin -i "$1" > "$tmp/extracted"
    same_file "$tmp/extracted" "$tmp/d1/sub/random.bin"
    [ "$(isoinfo -R -x /from-d2.txt -i "$1")" = second ] || fail "$1: from-d2.txt differs"
    [ "$(isoinfo -J -x "/sub/deeper/a long file name.txt" -i "$1")" = \
      "a long file name survives Joliet and Rock Ridge" ] || fail "$1: the Joliet name is not found"
    xorriso -indev "$1" -ls / 2>/dev/null | grep -q "'hello.txt'" || fail "$1: xorriso does not list hello.txt"
}

start_server iso "$tmp/d1" dir="$tmp/d2" params='-JrT -V "My Disk"'
[ "$(nbdinfo --is read_only "$uri"; echo $?)" = 0 ] || fail "the ISO is not read-only"
nbdcopy "$uri" "$tmp/ours.iso"
[ "$(ls "$tmp/images")" != "" ] || fail "no temporary image in \$TMPDIR"
expect_fail nbdsh -u "$uri" -c 'h.pwrite(b"x", 0)'
stop_server "$server_pid"
[ -z "$(ls "$tmp/images")" ] || fail "the temporary image was left behind: $(ls "$tmp/images")"
check_iso "$tmp/ours.iso"
isoinfo -d -i "$tmp/ours.iso" | grep -q "Volume id: My Disk" || fail "params= did not set the volume id"

start_reference iso "$tmp/d1" dir="$tmp/d2" params='-JrT -V "My Disk"'
nbdcopy "$uri" "$tmp/theirs.iso"
stop_server "$server_pid"
check_iso "$tmp/theirs.iso"
diff -u "$tmp/theirs.iso.list" "$tmp/ours.iso.list" || fail "the files differ from nbdkit's"
[ "$(stat -c %s "$tmp/ours.iso")" -eq "$(stat -c %s "$tmp/theirs.iso")" ] ||
    fail "size $(stat -c %s "$tmp/ours.iso"), nbdkit's $(stat -c %s "$tmp/theirs.iso")"

# prog=genisoimage: the same image genisoimage writes itself, but for its timestamps.
start_server iso "$tmp/d1" prog=genisoimage params=-JrT
nbdcopy "$uri" "$tmp/geniso.iso"
stop_server "$server_pid"
genisoimage -quiet -JrT "$tmp/d1" > "$tmp/direct.iso"
[ "$(stat -c %s "$tmp/geniso.iso")" -eq "$(stat -c %s "$tmp/direct.iso")" ] || fail "prog=genisoimage: size"
isoinfo -R -f -i "$tmp/geniso.iso" | grep -qxF /sub/random.bin || fail "prog=genisoimage: files missing"

bad_args iso -- "dir=<DIRECTORY>"
bad_args iso "$tmp/nonexistent" -- "dir=$tmp/nonexistent"
bad_args iso "$tmp/d1/hello.txt" -- "dir=$tmp/d1/hello.txt" "not a directory"
bad_args iso "$tmp/d1" prog=no-such-isoprog -- "prog=no-such-isoprog"
bad_args iso "$tmp/d1" params=--no-such-option -- "params=--no-such-option"
bad_args iso "$tmp/d1" colour=red -- colour
[ -z "$(ls "$tmp/images")" ] || fail "a failed start left an image behind: $(ls "$tmp/images")"
# --help describes the parameters; --dump-plugin names the plugin and its magic key.
"${server_cmd[@]}" iso --help > "$tmp/help"
grep -q -- 'params=' "$tmp/help" || fail "iso --help does not describe params="
"${server_cmd[@]}" iso --dump-plugin > "$tmp/dump"
grep -qx 'name=iso' "$tmp/dump" || fail "iso --dump-plugin"
grep -qx 'magic_config_key=dir' "$tmp/dump" || fail "iso --dump-plugin: the magic key is not dir"
echo OK
