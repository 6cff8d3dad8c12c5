#!/usr/bin/env bash
# The sh plugin runs a script once per method, with nbdkit's calling convention: the same
# script serves the same disk under nbdforge and nbdkit; writes reach the script's pwrite with
# the data on standard input; errors the script names on stderr reach the client.
#
# Fails against nbdkit 1.32 at the last check: for colour=blue it says "this plugin does not need
# command line configuration", which does not name the parameter.
source "$(dirname "$0")/lib/functions.sh"

cat > "$tmp/disk.sh" <<'SCRIPT'
#!/usr/bin/env bash
# A 1 MiB disk kept in a file in $tmpdir, with a pattern at the start.
f=$tmpdir/disk
case "$1" in
    config) [ "$2" = label ] || exit 2; printf '%s' "$3" > "$tmpdir/label" ;;
    get_ready)
        truncate -s 1M "$f"
        printf 'hello from %s' "$(cat "$tmpdir/label" 2>/dev/null)" | dd of="$f" conv=notrunc status=none ;;
    thread_model) echo serialize_all_requests ;;
    open) echo handle-"$3" ;;
    get_size) stat -c %s "$f" ;;
    can_write | can_flush | can_trim) exit 0 ;;
    can_zero | can_extents | can_multi_conn) exit 3 ;;
    pread) dd if="$f" skip="$4" count="$3" iflag=skip_bytes,count_bytes status=none ;;
    pwrite) dd of="$f" seek="$4" conv=notrunc oflag=seek_bytes status=none ;;
    flush) sync "$f" ;;
    trim) echo 'EROFS trim is not allowed here' >&2; exit 1 ;;
    *) exit 2 ;;
esac
SCRIPT
chmod +x "$tmp/disk.sh"

same_as_nbdkit sh "$tmp/disk.sh" label=test

start_server sh "$tmp/disk.sh" label=nbdforge
nbdsh -u "$uri" -c '
import errno
assert h.get_size() == 1 << 20
assert h.pread(19, 0) == b"hello from nbdforge", h.pread(19, 0)
h.pwrite(b"written", 4096, nbd.CMD_FLAG_FUA)
assert h.pread(7, 4096) == b"written"
h.flush()
assert h.can_trim() and not h.can_multi_conn()
try:
    h.trim(4096, 0)
    raise SystemExit("trim succeeded")
except nbd.Error as e:
    assert e.errnum == errno.EPERM, e      # EROFS reaches the client as NBD_EPERM
'

# Inline scripts come from standard input.
sock="$tmp/inline.sock"
"${server_cmd[@]}" -f -U "$sock" sh - > "$tmp/inline.log" 2>&1 <<'SCRIPT' &
case "$1" in
    get_size) echo 4096 ;;
    pread) head -c "$3" /dev/zero | tr '\0' 'z' ;;
    *) exit 2 ;;
esac
SCRIPT
server_pids+=("$!")
wait_for_socket "$sock" "$!"
[ "$(nbdsh -u "nbd+unix:///?socket=$sock" -c 'print(h.pread(3, 100).decode())')" = zzz ] ||
    fail "inline script: wrong data"

bad_args sh "$tmp/nonexistent.sh" -- "$tmp/nonexistent.sh"
bad_args sh "$tmp/disk.sh" colour=blue -- colour
echo OK
