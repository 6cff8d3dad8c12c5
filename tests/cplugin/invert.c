/* invert: a C filter for nbdforge's tests of nbdkit's filter ABI (nbdkit 1.32, API 6).
 * Reads come back with every byte XORed with invert-byte= (default 0xff), writes are stored
 * XORed the same way; other parameters are passed on to the layer below.  Built with
 * -DFAKE_VERSION it claims another nbdkit release, which must be refused. */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

static uint8_t invert_byte = 0xff;

static int
invert_config (nbdkit_next_config *next, nbdkit_backend *nxdata, const char *key, const char *value)
{
  if (strcmp (key, "invert-byte") == 0)
    return nbdkit_parse_uint8_t ("invert-byte", value, &invert_byte);
  return next (nxdata, key, value);
}

static void
flip (void *buf, uint32_t count)
{
  uint8_t *b = buf;
  for (uint32_t i = 0; i < count; i++)
    b[i] ^= invert_byte;
}

static int
invert_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count, uint64_t offset,
              uint32_t flags, int *err)
{
  if (next->pread (next, buf, count, offset, flags, err) == -1)
    return -1;
  flip (buf, count);
  return 0;
}

static int
invert_pwrite (nbdkit_next *next, void *handle, const void *buf, uint32_t count, uint64_t offset,
               uint32_t flags, int *err)
{
  void *copy = malloc (count);
  int r;

  if (copy == NULL) {
    *err = errno;
    nbdkit_error ("malloc: %m");
    return -1;
  }
  memcpy (copy, buf, count);
  flip (copy, count);
  r = next->pwrite (next, copy, count, offset, flags, err);
  free (copy);
  return r;
}

/* Zeroes would not read back as zeroes: write them, inverted. */
static int
invert_can_zero (nbdkit_next *next, void *handle)
{
  return NBDKIT_ZERO_EMULATE;
}

static int
invert_can_extents (nbdkit_next *next, void *handle)
{
  return 0;
}

static struct nbdkit_filter filter = {
  .name        = "invert",
  .longname    = "nbdforge test filter: inverted bytes",
  .config      = invert_config,
  .config_help = "invert-byte=<N>  Byte to XOR the data with (default 0xff).",
  .pread       = invert_pread,
  .pwrite      = invert_pwrite,
  .can_zero    = invert_can_zero,
  .can_extents = invert_can_extents,
};

#ifdef FAKE_VERSION
struct nbdkit_filter *
filter_init (void)
{
  filter._api_version = NBDKIT_FILTER_API_VERSION;
  filter._version = "1.99.0";
  return &filter;
}
#else
NBDKIT_REGISTER_FILTER (filter)
#endif
