#!/usr/bin/env bash
# The cc plugin: a C plugin compiled at start-up (with gcc) and run through nbdkit's ABI.
# The same source serves the same bytes as under nbdkit's cc plugin; the source may come from
# stdin (-); CC=, CFLAGS= and EXTRA_CFLAGS= reach the compiler; other parameters reach the
# compiled plugin; an API version 1 plugin is writable through nbdsh and qemu-img; a compiler
# failure stops the server before it listens, naming the file.
# timeout: 240
source "$(dirname "$0")/lib/functions.sh"
cd "$tmp"

cat > v2.c <<'C'
#include <stdint.h>
#include <string.h>
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
#ifndef FILL
#define FILL 0
#endif
static int64_t size = 1024 * 1024;
static int v2_config (const char *key, const char *value)
{
  if (strcmp (key, "size") != 0) { nbdkit_error ("unknown parameter '%s'", key); return -1; }
  size = nbdkit_parse_size (value);
  return size == -1 ? -1 : 0;
}
static void *v2_open (int readonly) { return NBDKIT_HANDLE_NOT_NEEDED; }
static int64_t v2_get_size (void *h) { return size; }
static int v2_pread (void *h, void *buf, uint32_t count, uint64_t offset, uint32_t flags)
{
  unsigned char *b = buf;
  for (uint32_t i = 0; i < count; i++)
    b[i] = (unsigned char) ((offset + i) % 251) ^ FILL;
  return 0;
}
static struct nbdkit_plugin plugin = {
  .name = "ccv2", .version = "1.0", .config = v2_config, .open = v2_open,
  .get_size = v2_get_size, .pread = v2_pread,
};
NBDKIT_REGISTER_PLUGIN (plugin)
C

# Same bytes as nbdkit's cc plugin, with defaults and with EXTRA_CFLAGS.
same_as_nbdkit cc "$tmp/v2.c"
cp ours.img plain.img
same_as_nbdkit cc "$tmp/v2.c" EXTRA_CFLAGS=-DFILL=0x42 size=64K
[ "$(stat -c %s ours.img)" -eq 65536 ] || fail "size= did not reach the compiled plugin"
cmp -s ours.img <(head -c 64K plain.img) && fail "EXTRA_CFLAGS did not reach the compiler"
python3 -c 'import sys; d = open("ours.img", "rb").read(); sys.exit(d[300] != (300 % 251) ^ 0x42)' ||
    fail "EXTRA_CFLAGS: wrong data"

# CFLAGS replaces the flags; CC names the compiler; the source may come after them.
start_server cc CC=gcc "CFLAGS=-O0 -fPIC -shared -DFILL=7" "$tmp/v2.c"
nbdcopy "$uri" cflags.img
stop_server "$server_pid"
python3 -c 'import sys; d = open("cflags.img", "rb").read(); sys.exit(d[300] != (300 % 251) ^ 7)' ||
    fail "CFLAGS did not reach the compiler"

# The source from stdin.
server_count=$((server_count + 1))
sock="$tmp/stdin.sock"
"${server_cmd[@]}" -f -U "$sock" cc - < v2.c > stdin.log 2>&1 &
server_pid=$!
server_pids+=("$server_pid")
server_logs+=("$tmp/stdin.log")
wait_for_socket "$sock" "$server_pid"
nbdcopy "nbd+unix:///?socket=$sock" stdin.img
stop_server "$server_pid"
cmp stdin.img plain.img || fail "cc -: not the same disk"

# An API version 1 plugin: a writable RAM disk without flags.
cat > v1.c <<'C'
#include <stdint.h>
#include <string.h>
#include <errno.h>
#include <nbdkit-plugin.h>
#define THREAD_MODEL NBDKIT_THREAD_MODEL_SERIALIZE_ALL_REQUESTS
static unsigned char disk[4 * 1024 * 1024];
static void *v1_open (int readonly) { return NBDKIT_HANDLE_NOT_NEEDED; }
static int64_t v1_get_size (void *h) { return sizeof disk; }
static int v1_pread (void *h, void *buf, uint32_t count, uint64_t offset)
{ memcpy (buf, disk + offset, count); return 0; }
static int v1_pwrite (void *h, const void *buf, uint32_t count, uint64_t offset)
{ memcpy (disk + offset, buf, count); return 0; }
static int v1_flush (void *h) { return 0; }
static int v1_trim (void *h, uint32_t count, uint64_t offset)
{ memset (disk + offset, 0, count); return 0; }
static int v1_zero (void *h, uint32_t count, uint64_t offset, int may_trim)
{
  if (offset == 0) { errno = EOPNOTSUPP; return -1; }   /* the server writes zeroes instead */
  memset (disk + offset, 0, count);
  return 0;
}
static struct nbdkit_plugin plugin = {
  .name = "ccv1", .open = v1_open, .get_size = v1_get_size, .pread = v1_pread,
  .pwrite = v1_pwrite, .flush = v1_flush, .trim = v1_trim, .zero = v1_zero,
  .errno_is_preserved = 1,
};
NBDKIT_REGISTER_PLUGIN (plugin)
C
random_file data 4M
start_server cc "$tmp/v1.c"
qemu-img convert -n -f raw -O raw data "$uri"
qemu-img compare -f raw -F raw data "$uri" || fail "v1: qemu-img compare"
nbdsh -u "$uri" -c '
import nbd
assert h.can_flush() and h.can_trim() and h.can_zero() and h.can_fua()
h.pwrite(b"v1 write", 4096, nbd.CMD_FLAG_FUA)
assert h.pread(8, 4096) == b"v1 write"
h.zero(8192, 0)
assert h.pread(8192, 0) == bytes(8192)
h.zero(4096, 65536)
assert h.pread(4096, 65536) == bytes(4096)
try:
    h.zero(4096, 65536, nbd.CMD_FLAG_FAST_ZERO)
    assert False, "a version 1 plugin zeroed fast"
except nbd.Error as e:
    assert e.errnum == 95, e
h.flush()
'
stop_server "$server_pid"

# Failures stop the server before it listens, naming what failed.
printf 'this is not C\n' > bad.c
bad_args cc "$tmp/bad.c" -- "cc:" "compiling $tmp/bad.c"
bad_args cc "$tmp/v2.c" CC=/bin/false -- "cc:" "/bin/false"
bad_args cc "$tmp/v2.c" colour=red -- "ccv2: unknown parameter 'colour'"
bad_args cc "$tmp/missing.c" -- "cc:" "$tmp/missing.c"
bad_args cc -- "cc:" "script="

echo "PASS: $(basename "$0")"
