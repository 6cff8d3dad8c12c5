#!/usr/bin/python3
# Large requests:
# - NBD_INFO_BLOCK_SIZE advertises a maximum payload of at least 64 MiB (and at most 1 GiB:
#   a server buffering gigabytes per request per client is a memory hazard);
# - a 64 MiB WRITE is served and a 64 MiB READ returns it;
# - a WRITE over the advertised maximum is refused with EINVAL after the server drains its
#   payload: the connection is still in sync and a READ afterwards works.
#
# Fails against nbdkit 1.32: it sends no NBD_INFO_BLOCK_SIZE for memory, and answers an
# oversize write with ENOMEM.
import os
import sys

sys.dont_write_bytecode = True  # keep tests/lib free of __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import Server, check, check_eq, run  # noqa: E402
from nbdwire import CMD_WRITE, EINVAL, INFO_BLOCK_SIZE, Client  # noqa: E402

MiB = 1 << 20


def main():
    with Server(["memory", "2G"]) as srv:
        with Client(srv.sock) as c:
            infos = c.connect_go(info_requests=[INFO_BLOCK_SIZE])
            check(INFO_BLOCK_SIZE in infos, "GO did not send NBD_INFO_BLOCK_SIZE")
            minimum, preferred, maximum = infos[INFO_BLOCK_SIZE]
            print("block size: min %d preferred %d max %d" % (minimum, preferred, maximum))
            check(maximum >= 64 * MiB, "maximum payload %d is under 64 MiB" % maximum)
            check(maximum <= 1024 * MiB, "maximum payload %d is over 1 GiB" % maximum)

            big = os.urandom(MiB) * 64
            check_eq(c.write(16 * MiB, big), 0, "64 MiB write")
            err, data, _ = c.read(16 * MiB, 64 * MiB)
            check(err == 0 and data == big, "64 MiB read back (error %d)" % err)

            over = (maximum // MiB + 1) * MiB
            cookie = c.send_request(CMD_WRITE, 0, over)
            filler = memoryview(bytes(MiB))
            for _ in range(over // MiB):
                c.sock.sendall(filler)
            reply = c.read_reply(cookie)
            check_eq(reply.error, EINVAL, "WRITE of %d bytes (over the maximum)" % over)
            err, data, _ = c.read(16 * MiB, MiB)
            check(err == 0 and data == big[:MiB], "read after refused oversize write")
            err, data, _ = c.read(0, MiB)
            check(err == 0 and data == bytes(MiB), "oversize write changed nothing")
            c.disconnect()


run(main)
