"""Shared helpers for the Python end-to-end tests: start the server under test, check results.

The server under test is the command in $NBDFORGE (default: the repository's
target/release/nbdforge).  It is started in the foreground (-f) on a Unix socket in a private
temporary directory, so tests can run in parallel without clashing.  Each test is a script whose
main() raises on failure; run(main) turns that into an exit status, prints the server's stderr when
the test fails, and stops every server the test started.

Tests that use libnbd must run under /usr/bin/python3 (the system Python that has the `nbd`
module); the runner (tests/run) does that.
"""

import atexit
import errno as errno_module
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

from wait_socket import wait_socket

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_tmpdirs = []
_servers = []


def server_command():
    """The server under test as an argv prefix ($NBDFORGE may hold a command with arguments)."""
    cmd = os.environ.get("NBDFORGE")
    if not cmd:
        target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
        cmd = os.path.join(target, "release", "nbdforge")
    return shlex.split(cmd)


def tmpdir():
    """A private temporary directory, removed when the test exits."""
    d = tempfile.mkdtemp(prefix="nbdforge-test-")
    _tmpdirs.append(d)
    return d


class CheckFailed(AssertionError):
    pass


def check(cond, message):
    if not cond:
        raise CheckFailed(message)


def check_eq(got, want, what):
    if got != want:
        raise CheckFailed("%s: got %r, want %r" % (what, got, want))


class Server:
    """The server under test, running in the foreground on a private Unix socket.

    Server(["memory", "1G"], options=["-r"]) runs `$NBDFORGE -f -U SOCK -r memory 1G`.
    wrapper=["prlimit", "--as=1000000000", "--"] runs it under a command that execs it (so the
    pid is still the server's)."""

    def __init__(self, args, options=(), socket_path=None, wait=True, wrapper=()):
        self.dir = tmpdir()
        self.sock = socket_path or os.path.join(self.dir, "nbd.sock")
        self.uri = "nbd+unix:///?socket=" + self.sock
        self.stderr_path = os.path.join(self.dir, "server.stderr")
        self.argv = (list(wrapper) + server_command() + ["-f", "-U", self.sock] + list(options)
                     + list(args))
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=self._stderr, stderr=self._stderr)
        self.pid = self.proc.pid
        self.returncode = None
        _servers.append(self)
        if wait:
            self.wait_ready()

    def uri_for(self, export):
        return "nbd+unix:///%s?socket=%s" % (export, self.sock)

    def wait_ready(self, timeout=30):
        error = wait_socket(self.sock, self.pid, timeout)
        if error:
            self.proc.poll()
            raise CheckFailed("%s\n%s\n%s" % (error, shlex.join(self.argv), self.stderr()))

    def alive(self):
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Send sig and wait for exit; returns the exit status (negative: killed by signal)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise CheckFailed("server did not exit within %ds of signal %d" % (timeout, sig))
        self.returncode = self.proc.returncode
        self._stderr.close()
        return self.returncode

    def stderr(self):
        if not self._stderr.closed:
            self._stderr.flush()
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.stop()
        elif self.proc.poll() is None:
            # The test failed, possibly with a client still connected: don't wait for it.
            self.proc.kill()
            self.proc.wait()


def _cleanup():
    for s in _servers:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()
    for d in _tmpdirs:
        shutil.rmtree(d, ignore_errors=True)


atexit.register(_cleanup)


def run(main):
    """Run a test's main(); exit 0 on success, 1 with a traceback and server logs on failure."""
    name = os.path.basename(sys.argv[0])
    try:
        main()
    except BaseException as e:  # noqa: B902 - report anything, including SystemExit from libs
        if isinstance(e, SystemExit) and not e.code:
            raise
        traceback.print_exc()
        for s in _servers:
            print("--- server %s (pid %d) stderr ---" % (shlex.join(s.argv), s.pid), file=sys.stderr)
            print(s.stderr(), file=sys.stderr)
        print("FAIL: %s" % name, file=sys.stderr)
        _cleanup()
        os._exit(1)
    print("PASS: %s" % name)


# --- libnbd helpers ---

def status_field(pid, field):
    """A number from /proc/PID/status (VmRSS, VmHWM, Threads; kB for the memory ones)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise CheckFailed("no %s for pid %d" % (field, pid))


def nbdsh_within(uri, script, what, timeout=10):
    """Runs `script` in nbdsh on a new connection to `uri`; it must succeed within `timeout` s.
    Returns how long it took."""
    start = time.monotonic()
    try:
        p = subprocess.run(["nbdsh", "-u", uri, "-c", script], capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CheckFailed("%s: nbdsh not served within %d s" % (what, timeout))
    check(p.returncode == 0, "%s: nbdsh failed: %s" % (what, p.stderr.strip()))
    return time.monotonic() - start


def nbd_handle(uri=None, strict=True, structured=True):
    """A libnbd handle, connected to uri if given.  strict=False lets libnbd send requests it
    would otherwise refuse (out of range, unadvertised flags) so the server's checks are tested."""
    import nbd
    h = nbd.NBD()
    if not strict:
        h.set_strict_mode(0)
    if not structured:
        h.set_request_structured_replies(False)
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    if uri:
        h.connect_uri(uri)
    return h


def expect_errno(want, func, *args, what=None):
    """Call a libnbd function that must fail with errno want (an int, e.g. errno.EINVAL)."""
    import nbd
    what = what or getattr(func, "__name__", str(func))
    try:
        func(*args)
    except nbd.Error as e:
        if e.errnum != want:
            raise CheckFailed("%s: failed with errno %s (%s), want %s"
                              % (what, e.errnum, e.string, errno_module.errorcode.get(want, want)))
        return e
    raise CheckFailed("%s: succeeded, want failure with %s"
                      % (what, errno_module.errorcode.get(want, want)))


def extents(h, length, offset, flags=0):
    """block_status for base:allocation as a list of (length, flags) pairs."""
    import nbd
    out = []

    def cb(metacontext, off, entries, err):
        if metacontext == nbd.CONTEXT_BASE_ALLOCATION:
            out.extend(zip(entries[0::2], entries[1::2]))
        return 0

    h.block_status(length, offset, cb, flags)
    return out


def read_chunks(h, length, offset):
    """pread_structured: returns (data, [(chunk offset, chunk length, nbd.READ_DATA/HOLE)])."""
    chunks = []

    def cb(buf, off, status, err):
        chunks.append((off, len(buf), status))
        return 0

    data = h.pread_structured(length, offset, cb)
    return data, sorted(chunks)
