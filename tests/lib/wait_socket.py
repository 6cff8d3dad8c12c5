"""wait_socket.py PATH PID [SECONDS]: wait until the server PID accepts connections on the Unix
socket PATH.  Exit 0 when it does; 1 if PID exits first or time runs out.  (A socket file can
exist a moment before the server listens on it, so this connects rather than checks the file.)
"""

import os
import socket
import sys
import time


def exited(pid):
    """True if pid is gone or a zombie (exited, not yet reaped by its parent)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True


def wait_socket(path, pid, seconds=30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if exited(pid):
            return "server (pid %d) exited before listening on %s" % (pid, path)
        if os.path.exists(path):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                return None
            except OSError:
                pass
            finally:
                s.close()
        time.sleep(0.05)
    return "server (pid %d) did not listen on %s within %ds" % (pid, path, seconds)


if __name__ == "__main__":
    error = wait_socket(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 30)
    if error:
        sys.exit(error)
