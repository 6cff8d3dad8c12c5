"""Helpers for the python plugin's tests: a plugin script that records each call it gets in a
log file (one JSON list per line), served by the server under test or by nbdkit.

A script starts with RECORDER and takes `log=PATH` as its first parameter after the script; its
callbacks call record("name", args...)."""

import json
import os
import time

from filterlogs import peer_server
from harness import Server

RECORDER = r'''
import builtins
import json

log_path = None


def record(*what):
    with builtins.open(log_path, "a") as f:
        f.write(json.dumps(what) + "\n")
'''


def serve(script, log, args=(), options=(), peer=False):
    """Serves `script` (a path) with log=`log` and `args`, by nbdkit when `peer`."""
    start = peer_server if peer else Server
    srv = start(["python", script, "log=" + log] + list(args), options=options)
    srv.log = log
    return srv


def calls(srv):
    """What the script recorded so far, as tuples."""
    if not os.path.exists(srv.log):
        return []
    with open(srv.log) as f:
        return [tuple(json.loads(line)) for line in f]


def wait_for_call(srv, call, timeout=5):
    """Waits until the script has recorded `call` (a tuple): connections close in threads of
    their own, after the client has gone."""
    deadline = time.monotonic() + timeout
    while call not in calls(srv) and time.monotonic() < deadline:
        time.sleep(0.05)
