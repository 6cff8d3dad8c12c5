/* The printf-style half of nbdkit's plugin ABI, for nbdforge.
 *
 * Stable Rust can neither define a C variadic function nor walk a va_list, so these few
 * functions format their message here, with vsnprintf (glibc's, which also knows "%m"), and
 * hand the finished string to the Rust side (exports.rs), which does the rest.  errno is kept
 * unchanged across every call: plugins call nbdkit_error and then return with errno set.
 */

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

/* Rust side (exports.rs). */
extern void nbdforge_cplugin_error (const char *msg);
extern void nbdforge_cplugin_debug (const char *msg);
extern const char *nbdforge_cplugin_intern (const char *s, size_t n);

#define EXPORT __attribute__ ((visibility ("default")))

/* The formatted message in a malloc'd buffer, or NULL if memory ran out. */
static char *
format (const char *fmt, va_list args)
{
  va_list copy;
  int len;
  char *buf;

  va_copy (copy, args);
  len = vsnprintf (NULL, 0, fmt, copy);
  va_end (copy);
  if (len < 0)
    return NULL;
  buf = malloc ((size_t) len + 1);
  if (buf != NULL)
    vsnprintf (buf, (size_t) len + 1, fmt, args);
  return buf;
}

EXPORT void
nbdkit_verror (const char *fmt, va_list args)
{
  int saved = errno;
  char *msg = format (fmt, args);

  nbdforge_cplugin_error (msg != NULL ? msg : fmt);
  free (msg);
  errno = saved;
}

EXPORT void
nbdkit_error (const char *fmt, ...)
{
  va_list args;

  va_start (args, fmt);
  nbdkit_verror (fmt, args);
  va_end (args);
}

EXPORT void
nbdkit_vdebug (const char *fmt, va_list args)
{
  int saved = errno;
  char *msg = format (fmt, args);

  nbdforge_cplugin_debug (msg != NULL ? msg : fmt);
  free (msg);
  errno = saved;
}

EXPORT void
nbdkit_debug (const char *fmt, ...)
{
  va_list args;

  va_start (args, fmt);
  nbdkit_vdebug (fmt, args);
  va_end (args);
}

EXPORT const char *
nbdkit_vprintf_intern (const char *fmt, va_list args)
{
  char *msg = format (fmt, args);
  const char *kept;

  if (msg == NULL) {
    nbdforge_cplugin_error ("nbdkit_printf_intern: out of memory");
    errno = ENOMEM;
    return NULL;
  }
  kept = nbdforge_cplugin_intern (msg, (size_t) -1);
  free (msg);
  return kept;
}

EXPORT const char *
nbdkit_printf_intern (const char *fmt, ...)
{
  va_list args;
  const char *r;

  va_start (args, fmt);
  r = nbdkit_vprintf_intern (fmt, args);
  va_end (args);
  return r;
}
