/* abitest: a C plugin for nbdforge's tests of nbdkit's plugin ABI.
 *
 * It calls every nbdkit_* function the server exports and checks what comes back: the pure
 * ones (parsing, interned strings, lists) while configuring, where a failed check stops the
 * server with a message naming the line; the per-connection ones (export name, peer, TLS) in
 * preconnect and open, whose results it serves in the first 512 bytes of the disk as text for
 * the test to compare with what the client knows.  The rest of the disk is 1 MiB of RAM.
 * Some writes are triggers: a write starting with "E" fails with nbdkit_set_error (ENOSPC),
 * "P" fails with errno (EPERM, errno_is_preserved), "S" calls nbdkit_shutdown, "D"
 * nbdkit_disconnect.  Built by tests/test-cplugin-abi.sh with gcc.
 */

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

/* Declared by newer headers than Debian's 1.32; the server exports them all the same. */
extern void nbdkit_disconnect (int force);
extern int nbdkit_parse_probability (const char *what, const char *str, double *r);
extern int nbdkit_parse_delay (const char *what, const char *str, unsigned *sec, unsigned *nsec);
extern char *nbdkit_peer_tls_dn (void);
extern char *nbdkit_peer_tls_issuer_dn (void);
extern char *nbdkit_peer_security_context (void);
extern void nbdkit_debug_hexdump (const void *buf, size_t len, const char *prefix, uint64_t start);

/* From nbdkit-filter.h, which a plugin cannot include beside nbdkit-plugin.h. */
struct nbdkit_extent { uint64_t offset; uint64_t length; uint32_t type; };
struct nbdkit_export { char *name; char *description; };
extern struct nbdkit_extents *nbdkit_extents_new (uint64_t start, uint64_t end);
extern void nbdkit_extents_free (struct nbdkit_extents *);
extern size_t nbdkit_extents_count (const struct nbdkit_extents *);
extern struct nbdkit_extent nbdkit_get_extent (const struct nbdkit_extents *, size_t);
extern struct nbdkit_exports *nbdkit_exports_new (void);
extern void nbdkit_exports_free (struct nbdkit_exports *);
extern size_t nbdkit_exports_count (const struct nbdkit_exports *);
extern struct nbdkit_export nbdkit_get_export (const struct nbdkit_exports *, size_t);

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

#define DISK_SIZE (1024 * 1024)
#define INFO_SIZE 512

/* -D abitest.level=N */
int abitest_debug_level = 0;

static unsigned char disk[DISK_SIZE];
static int64_t size = DISK_SIZE;
static char *password;
static int expect_level = -1;
static const char *marker;          /* file written by cleanup and unload */
static int ready, forked;

#define CHECK(cond)                                                     \
  do {                                                                  \
    if (!(cond)) {                                                      \
      nbdkit_error ("check failed at abitest.c:%d: %s", __LINE__, #cond); \
      return -1;                                                        \
    }                                                                   \
  } while (0)

/* The va_list forms, called the way a plugin's own logging wrapper would. */
static void
my_error (const char *fmt, ...)
{
  va_list args;
  va_start (args, fmt);
  nbdkit_verror (fmt, args);
  va_end (args);
}

static void
my_debug (const char *fmt, ...)
{
  va_list args;
  va_start (args, fmt);
  nbdkit_vdebug (fmt, args);
  va_end (args);
}

static const char *
my_intern (const char *fmt, ...)
{
  va_list args;
  const char *r;
  va_start (args, fmt);
  r = nbdkit_vprintf_intern (fmt, args);
  va_end (args);
  return r;
}

static void
append_marker (const char *what)
{
  FILE *fp;

  if (marker == NULL)
    return;
  fp = fopen (marker, "a");
  if (fp) {
    fprintf (fp, "%s\n", what);
    fclose (fp);
  }
}

static void
abitest_load (void)
{
  nbdkit_debug ("abitest loaded");
}

static void
abitest_unload (void)
{
  append_marker ("unload");
  free (password);
}

static int
abitest_config (const char *key, const char *value)
{
  if (strcmp (key, "size") == 0) {
    size = nbdkit_parse_size (value);
    if (size == -1)
      return -1;
    if (size > DISK_SIZE) {
      nbdkit_error ("size=%s: at most %d bytes", value, DISK_SIZE);
      return -1;
    }
  }
  else if (strcmp (key, "password") == 0) {
    free (password);
    if (nbdkit_read_password (value, &password) == -1)
      return -1;
  }
  else if (strcmp (key, "expect_level") == 0) {
    if (nbdkit_parse_int ("expect_level", value, &expect_level) == -1)
      return -1;
  }
  else if (strcmp (key, "verror") == 0) {
    my_error ("verror says %s (%d)", value, 42);
    return -1;
  }
  else if (strcmp (key, "marker") == 0)
    marker = value;               /* kept: config strings live as long as the server */
  else {
    nbdkit_error ("unknown parameter '%s'", key);
    return -1;
  }
  return 0;
}

/* Everything that needs no connection. */
static int
abitest_config_complete (void)
{
  int i; unsigned u; int8_t i8; uint8_t u8; int16_t i16; uint16_t u16;
  int32_t i32; uint32_t u32; int64_t i64; uint64_t u64;
  double d; unsigned sec, nsec;
  char *s, *cwd;
  const char *is;
  struct nbdkit_extents *ex;
  struct nbdkit_exports *el;
  struct nbdkit_extent e;
  struct nbdkit_export x;

  CHECK (nbdkit_parse_size ("1M") == 1048576);
  CHECK (nbdkit_parse_size ("4KiB") == 4096);
  CHECK (nbdkit_parse_size ("2s") == 1024);
  CHECK (nbdkit_parse_size ("12Q") == -1);
  CHECK (nbdkit_parse_size ("") == -1);

  CHECK (nbdkit_parse_bool ("on") == 1);
  CHECK (nbdkit_parse_bool ("No") == 0);
  CHECK (nbdkit_parse_bool ("maybe") == -1);

  CHECK (nbdkit_parse_int ("n", "-5", &i) == 0 && i == -5);
  CHECK (nbdkit_parse_int ("n", "5x", &i) == -1);
  CHECK (nbdkit_parse_int ("n", " 1", &i) == -1);
  CHECK (nbdkit_parse_unsigned ("n", "42", &u) == 0 && u == 42);
  CHECK (nbdkit_parse_unsigned ("n", "-1", &u) == -1);
  CHECK (nbdkit_parse_int8_t ("n", "-128", &i8) == 0 && i8 == -128);
  CHECK (nbdkit_parse_int8_t ("n", "128", &i8) == -1);
  CHECK (nbdkit_parse_uint8_t ("n", "255", &u8) == 0 && u8 == 255);
  CHECK (nbdkit_parse_uint8_t ("n", "256", &u8) == -1);
  CHECK (nbdkit_parse_int16_t ("n", "-32768", &i16) == 0 && i16 == -32768);
  CHECK (nbdkit_parse_uint16_t ("n", "0x10", &u16) == 0 && u16 == 16);
  CHECK (nbdkit_parse_uint16_t ("n", "65536", &u16) == -1);
  CHECK (nbdkit_parse_int32_t ("n", "010", &i32) == 0 && i32 == 8);
  CHECK (nbdkit_parse_uint32_t ("n", "4294967295", &u32) == 0 && u32 == 4294967295U);
  CHECK (nbdkit_parse_uint32_t ("n", "4294967296", &u32) == -1);
  CHECK (nbdkit_parse_int64_t ("n", "-9223372036854775808", &i64) == 0 && i64 == INT64_MIN);
  CHECK (nbdkit_parse_uint64_t ("n", "18446744073709551615", &u64) == 0 && u64 == UINT64_MAX);
  CHECK (nbdkit_parse_uint64_t ("n", "", &u64) == -1);

  CHECK (nbdkit_parse_probability ("p", "10%", &d) == 0 && d > 0.0999 && d < 0.1001);
  CHECK (nbdkit_parse_probability ("p", "1:4", &d) == 0 && d == 0.25);
  CHECK (nbdkit_parse_probability ("p", "often", &d) == -1);
  CHECK (nbdkit_parse_delay ("d", "1.5s", &sec, &nsec) == 0 && sec == 1 && nsec == 500000000);
  CHECK (nbdkit_parse_delay ("d", "120ms", &sec, &nsec) == 0 && sec == 0 && nsec == 120000000);
  CHECK (nbdkit_parse_delay ("d", "soon", &sec, &nsec) == -1);

  CHECK (nbdkit_read_password ("plain", &s) == 0 && strcmp (s, "plain") == 0);
  free (s);
  if (password)
    CHECK (strcmp (password, "sekret") == 0);

  s = nbdkit_realpath ("/");
  CHECK (s && strcmp (s, "/") == 0);
  free (s);
  CHECK (nbdkit_realpath ("/nonexistent/abitest") == NULL);
  s = nbdkit_absolute_path ("rel");
  cwd = getcwd (NULL, 0);
  CHECK (s && cwd && strncmp (s, cwd, strlen (cwd)) == 0 && strcmp (s + strlen (s) - 4, "/rel") == 0);
  free (s);
  free (cwd);

  CHECK (nbdkit_stdio_safe () == 1);

  is = nbdkit_strdup_intern ("abc");
  CHECK (is && strcmp (is, "abc") == 0);
  is = nbdkit_strndup_intern ("abcdef", 3);
  CHECK (is && strcmp (is, "abc") == 0);
  is = nbdkit_printf_intern ("%d-%s-%05.1f", 7, "x", 2.5);
  CHECK (is && strcmp (is, "7-x-002.5") == 0);
  is = my_intern ("%s=%u", "v", 12u);
  CHECK (is && strcmp (is, "v=12") == 0);
  my_debug ("vdebug says %s %d", "hello", 99);

  ex = nbdkit_extents_new (0, 1000);
  CHECK (ex != NULL);
  CHECK (nbdkit_add_extent (ex, 0, 100, NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO) == 0);
  CHECK (nbdkit_add_extent (ex, 100, 50, 0) == 0);
  CHECK (nbdkit_add_extent (ex, 150, 50, 0) == 0);        /* merged with the previous run */
  CHECK (nbdkit_extents_count (ex) == 2);
  e = nbdkit_get_extent (ex, 1);
  CHECK (e.offset == 100 && e.length == 100 && e.type == 0);
  e = nbdkit_get_extent (ex, 0);
  CHECK (e.type == (NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO));
  nbdkit_extents_free (ex);

  el = nbdkit_exports_new ();
  CHECK (el != NULL);
  CHECK (nbdkit_add_export (el, "x", "described") == 0);
  CHECK (nbdkit_use_default_export (el) == 0);
  CHECK (nbdkit_exports_count (el) == 2);
  x = nbdkit_get_export (el, 0);
  CHECK (strcmp (x.name, "x") == 0 && strcmp (x.description, "described") == 0);
  nbdkit_exports_free (el);

  CHECK (nbdkit_nanosleep (0, 1000) == 0);

  /* No connection here. */
  CHECK (nbdkit_export_name () == NULL);
  CHECK (nbdkit_is_tls () == -1);
  CHECK (nbdkit_peer_pid () == -1);

  /* nbdkit_debug keeps errno (plugins log, then return with errno set). */
  errno = EBUSY;
  nbdkit_debug ("abitest: errno is %m, level %d", abitest_debug_level);
  CHECK (errno == EBUSY);
  nbdkit_debug_hexdump ("abitest", 7, "hexdump: ", 0);

  if (expect_level != -1)
    CHECK (abitest_debug_level == expect_level);
  return 0;
}

static int
abitest_thread_model (void)
{
  return NBDKIT_THREAD_MODEL_PARALLEL;
}

static int
abitest_get_ready (void)
{
  ready = 1;
  return 0;
}

static int
abitest_after_fork (void)
{
  CHECK (ready);
  forked = 1;
  return 0;
}

static int64_t preconnect_pid = -1;

static int
abitest_preconnect (int readonly)
{
  preconnect_pid = nbdkit_peer_pid ();
  CHECK (preconnect_pid > 0);
  CHECK (nbdkit_export_name () == NULL);   /* not negotiated yet */
  return 0;
}

static int
abitest_list_exports (int readonly, int is_tls, struct nbdkit_exports *exports)
{
  if (nbdkit_add_export (exports, "alpha", "the first export") == -1)
    return -1;
  return nbdkit_use_default_export (exports);
}

static const char *
abitest_default_export (int readonly, int is_tls)
{
  return "beta";
}

struct handle {
  char info[INFO_SIZE];
  const char *description;
};

static void *
abitest_open (int readonly)
{
  struct handle *h;
  const char *name = nbdkit_export_name ();
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  char *dn, *issuer;
  int tls = nbdkit_is_tls ();

  if (name == NULL || !forked)
    return NULL;
  if (strcmp (name, "refuse") == 0) {
    nbdkit_error ("abitest: export 'refuse' is refused");
    nbdkit_set_error (EACCES);
    return NULL;
  }
  if (nbdkit_peer_name ((struct sockaddr *) &ss, &len) == -1)
    return NULL;
  dn = nbdkit_peer_tls_dn ();
  issuer = nbdkit_peer_tls_issuer_dn ();
  if (dn == NULL || issuer == NULL)
    return NULL;
  h = calloc (1, sizeof *h);
  if (h == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  /* Interned for the life of the connection. */
  h->description = nbdkit_printf_intern ("abitest export %s", name);
  snprintf (h->info, sizeof h->info,
            "export=%s pid=%lld uid=%lld gid=%lld preconnect_pid=%lld tls=%d family=%d "
            "dn=[%s] issuer=[%s] secctx=%s readonly=%d\n",
            name, (long long) nbdkit_peer_pid (), (long long) nbdkit_peer_uid (),
            (long long) nbdkit_peer_gid (), (long long) preconnect_pid, tls, ss.ss_family,
            dn, issuer, nbdkit_peer_security_context () == NULL ? "none" : "some", readonly);
  free (dn);
  free (issuer);
  return h;
}

static void
abitest_close (void *handle)
{
  free (handle);
}

static int64_t
abitest_get_size (void *handle)
{
  return size;
}

static const char *
abitest_export_description (void *handle)
{
  return ((struct handle *) handle)->description;
}

static int
abitest_block_size (void *handle, uint32_t *minimum, uint32_t *preferred, uint32_t *maximum)
{
  *minimum = 1;
  *preferred = 4096;
  *maximum = 8 * 1024 * 1024;
  return 0;
}

static int abitest_true (void *handle) { return 1; }
static int abitest_native (void *handle) { return NBDKIT_FUA_NATIVE; }

static int
abitest_pread (void *handle, void *buf, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct handle *h = handle;
  uint32_t n = 0;

  if (offset < INFO_SIZE) {
    n = INFO_SIZE - offset < count ? INFO_SIZE - offset : count;
    memcpy (buf, h->info + offset, n);
  }
  memcpy ((char *) buf + n, disk + offset + n, count - n);
  return 0;
}

static int
abitest_pwrite (void *handle, const void *buf, uint32_t count, uint64_t offset, uint32_t flags)
{
  switch (count > 0 ? *(const char *) buf : 0) {
  case 'E':
    nbdkit_error ("abitest: write of E refused with ENOSPC");
    nbdkit_set_error (ENOSPC);
    return -1;
  case 'P':
    nbdkit_error ("abitest: write of P refused with errno EPERM");
    errno = EPERM;
    return -1;
  }
  /* Stored before the triggers, which may let the client go at once. */
  memcpy (disk + offset, buf, count);
  switch (count > 0 ? *(const char *) buf : 0) {
  case 'S':
    nbdkit_shutdown ();
    break;
  case 'D':
    nbdkit_disconnect (1);
    break;
  }
  return 0;
}

static int
abitest_flush (void *handle, uint32_t flags)
{
  return 0;
}

static int
abitest_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  memset (disk + offset, 0, count);
  return 0;
}

static int
abitest_zero (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  if (flags & NBDKIT_FLAG_FAST_ZERO) {
    nbdkit_set_error (ENOTSUP);
    return -1;
  }
  memset (disk + offset, 0, count);
  return 0;
}

/* The first 64 KiB after the info block is a hole reading as zeroes until written. */
static int
abitest_extents (void *handle, uint32_t count, uint64_t offset, uint32_t flags,
                 struct nbdkit_extents *extents)
{
  uint64_t end = offset + count, at = offset;

  while (at < end) {
    uint64_t next;
    uint32_t type;

    if (at < INFO_SIZE) { next = INFO_SIZE; type = 0; }
    else if (at < 65536) { next = 65536; type = NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO; }
    else { next = size; type = 0; }
    if (nbdkit_add_extent (extents, at, next - at, type) == -1)
      return -1;
    if (flags & NBDKIT_FLAG_REQ_ONE)
      break;
    at = next;
  }
  return 0;
}

static int
abitest_cache (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  return 0;
}

static void
abitest_dump_plugin (void)
{
  printf ("abitest_dump=yes\n");
}

static void
abitest_cleanup (void)
{
  append_marker ("cleanup");
}

static struct nbdkit_plugin plugin = {
  .name               = "abitest",
  .longname           = "nbdforge ABI test plugin",
  .version            = "1.0",
  .description        = "Calls every nbdkit_* function and checks the results.",
  .load               = abitest_load,
  .unload             = abitest_unload,
  .config             = abitest_config,
  .config_complete    = abitest_config_complete,
  .config_help        = "size=<SIZE>  Size of the disk (at most 1M).",
  .magic_config_key   = "size",
  .thread_model       = abitest_thread_model,
  .get_ready          = abitest_get_ready,
  .after_fork         = abitest_after_fork,
  .preconnect         = abitest_preconnect,
  .list_exports       = abitest_list_exports,
  .default_export     = abitest_default_export,
  .open               = abitest_open,
  .close              = abitest_close,
  .get_size           = abitest_get_size,
  .export_description = abitest_export_description,
  .block_size         = abitest_block_size,
  .can_write          = abitest_true,
  .can_flush          = abitest_true,
  .is_rotational      = abitest_true,
  .can_trim           = abitest_true,
  .can_zero           = abitest_true,
  .can_fast_zero      = abitest_true,
  .can_fua            = abitest_native,
  .can_multi_conn     = abitest_true,
  .can_extents        = abitest_true,
  .can_cache          = abitest_native,
  .pread              = abitest_pread,
  .pwrite             = abitest_pwrite,
  .flush              = abitest_flush,
  .trim               = abitest_trim,
  .zero               = abitest_zero,
  .extents            = abitest_extents,
  .cache              = abitest_cache,
  .dump_plugin        = abitest_dump_plugin,
  .cleanup            = abitest_cleanup,
  .errno_is_preserved = 1,
};

NBDKIT_REGISTER_PLUGIN (plugin)
