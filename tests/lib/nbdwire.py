"""A small raw NBD client for tests that must send what libnbd refuses to send.

libnbd (nbdsh, nbdinfo) is a well-behaved client: it will not send unknown options, malformed
option data, unknown command flags or 64-bit extended headers (the installed libnbd 1.14 predates
them).  The tests in this directory use this module to put exact bytes on the wire and check the
server's exact answer.  It follows the NBD protocol document (doc/proto.md in the NBD project):
fixed newstyle handshake, option haggling, compact and extended request headers, and simple,
structured and extended replies.

Everything is blocking and synchronous; a test sends a message and reads the answer.  Errors in
what the server sends raise ProtocolError so the test fails with a description of the bytes.
"""

import socket
import struct

# Magic numbers.
NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OLDSTYLE_MAGIC = 0x00420281861253
OPTION_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
EXTENDED_REQUEST_MAGIC = 0x21E41C71
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF
EXTENDED_REPLY_MAGIC = 0x6E8A278C

# Handshake flags (server) and client flags.
FLAG_FIXED_NEWSTYLE = 1
FLAG_NO_ZEROES = 2
FLAG_C_FIXED_NEWSTYLE = 1
FLAG_C_NO_ZEROES = 2

# Options.
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10
OPT_EXTENDED_HEADERS = 11

# Option replies.
REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR = 1 << 31
REP_ERR_UNSUP = REP_ERR + 1
REP_ERR_POLICY = REP_ERR + 2
REP_ERR_INVALID = REP_ERR + 3
REP_ERR_PLATFORM = REP_ERR + 4
REP_ERR_TLS_REQD = REP_ERR + 5
REP_ERR_UNKNOWN = REP_ERR + 6
REP_ERR_SHUTDOWN = REP_ERR + 7
REP_ERR_BLOCK_SIZE_REQD = REP_ERR + 8
REP_ERR_TOO_BIG = REP_ERR + 9
REP_ERR_EXT_HEADER_REQD = REP_ERR + 10

# NBD_REP_INFO types.
INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# Transmission flags.
FLAG_HAS_FLAGS = 1 << 0
FLAG_READ_ONLY = 1 << 1
FLAG_SEND_FLUSH = 1 << 2
FLAG_SEND_FUA = 1 << 3
FLAG_ROTATIONAL = 1 << 4
FLAG_SEND_TRIM = 1 << 5
FLAG_SEND_WRITE_ZEROES = 1 << 6
FLAG_SEND_DF = 1 << 7
FLAG_CAN_MULTI_CONN = 1 << 8
FLAG_SEND_RESIZE = 1 << 9
FLAG_SEND_CACHE = 1 << 10
FLAG_SEND_FAST_ZERO = 1 << 11

# Commands.
CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7

# Command flags.
CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4
CMD_FLAG_PAYLOAD_LEN = 1 << 5

# Structured reply flags and chunk types.
REPLY_FLAG_DONE = 1
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_BLOCK_STATUS_EXT = 6
REPLY_TYPE_ERROR = (1 << 15) + 1
REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2

# base:allocation status bits.
STATE_HOLE = 1
STATE_ZERO = 2

# Errors on the wire.
EPERM = 1
EIO = 5
ENOMEM = 12
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ENOTSUP = 95
ESHUTDOWN = 108

_NAMES = {}
for _name, _value in list(globals().items()):
    if _name.startswith(("REP_", "OPT_", "CMD_", "REPLY_TYPE_")) and isinstance(_value, int):
        _NAMES.setdefault(_name.split("_")[0], {})[_value] = _name


def name_of(kind, value):
    """name_of("REP", 2**31+1) -> "REP_ERR_UNSUP" (for messages)."""
    return _NAMES.get(kind, {}).get(value, "%s %d (%#x)" % (kind, value, value))


class ProtocolError(Exception):
    """The server sent something the protocol does not allow, or closed the connection."""


class Closed(ProtocolError):
    """The server closed the connection."""


class OptionReply:
    def __init__(self, option, type, data):
        self.option, self.type, self.data = option, type, data

    @property
    def is_error(self):
        return bool(self.type & REP_ERR)

    def __repr__(self):
        return "OptionReply(%s, %s, %r)" % (
            name_of("OPT", self.option), name_of("REP", self.type), self.data[:64])


class Chunk:
    """One reply message: a simple reply is one chunk of type None with the DONE flag."""

    def __init__(self, cookie, flags, type, payload, offset=None, error=0):
        self.cookie, self.flags, self.type = cookie, flags, type
        self.payload, self.offset, self.error = payload, offset, error

    @property
    def done(self):
        return bool(self.flags & REPLY_FLAG_DONE)

    @property
    def is_error(self):
        return self.type is not None and bool(self.type & (1 << 15))

    def error_fields(self):
        """For an error chunk: (errno, message)."""
        err, mlen = struct.unpack(">IH", self.payload[:6])
        return err, self.payload[6:6 + mlen].decode("utf-8", "replace")

    def __repr__(self):
        return "Chunk(cookie=%d, flags=%#x, type=%s, len=%d, error=%d)" % (
            self.cookie, self.flags,
            "simple" if self.type is None else name_of("REPLY", self.type),
            len(self.payload), self.error)


class Reply:
    """All chunks of one request's reply, with helpers to interpret them."""

    def __init__(self, chunks):
        self.chunks = chunks

    @property
    def error(self):
        """errno of the reply: simple reply error, or the first error chunk's, or 0."""
        for c in self.chunks:
            if c.type is None and c.error:
                return c.error
            if c.is_error:
                return c.error_fields()[0]
        return 0

    @property
    def message(self):
        for c in self.chunks:
            if c.is_error:
                return c.error_fields()[1]
        return None

    def types(self):
        return [c.type for c in self.chunks]

    def read_data(self, offset, length):
        """Assemble the bytes of a READ reply; checks chunks cover [offset, offset+length)."""
        buf = bytearray(length)
        covered = bytearray(length)
        for c in self.chunks:
            if c.type is None:  # simple reply: data follows
                buf[:] = c.payload
                covered[:] = b"\1" * length
            elif c.type == REPLY_TYPE_OFFSET_DATA:
                (off,) = struct.unpack(">Q", c.payload[:8])
                data = c.payload[8:]
                _place(buf, covered, offset, length, off, len(data), data)
            elif c.type == REPLY_TYPE_OFFSET_HOLE:
                off, size = struct.unpack(">QI", c.payload[:12])
                _place(buf, covered, offset, length, off, size, bytes(size))
            elif c.type in (REPLY_TYPE_NONE,) or c.is_error:
                pass
            else:
                raise ProtocolError("unexpected chunk in READ reply: %r" % c)
        if self.error == 0 and covered != b"\1" * length:
            raise ProtocolError("READ reply chunks do not cover the request: %r" % self.chunks)
        return bytes(buf)

    def extents(self):
        """For BLOCK_STATUS: {context_id: [(length, flags), ...]} and {context_id: chunk type}."""
        result, kinds = {}, {}
        for c in self.chunks:
            if c.type == REPLY_TYPE_BLOCK_STATUS:
                (ctx,) = struct.unpack(">I", c.payload[:4])
                body = c.payload[4:]
                result[ctx] = [struct.unpack(">II", body[i:i + 8]) for i in range(0, len(body), 8)]
                kinds[ctx] = c.type
            elif c.type == REPLY_TYPE_BLOCK_STATUS_EXT:
                ctx, count = struct.unpack(">II", c.payload[:8])
                body = c.payload[8:]
                if len(body) % 16 or (count and count * 16 != len(body)):
                    raise ProtocolError("bad BLOCK_STATUS_EXT payload length %d, count %d"
                                        % (len(c.payload), count))
                result[ctx] = [struct.unpack(">QQ", body[i:i + 16]) for i in range(0, len(body), 16)]
                kinds[ctx] = c.type
        return result, kinds


def _place(buf, covered, req_off, req_len, off, size, data):
    if off < req_off or off + size > req_off + req_len or size == 0:
        raise ProtocolError("chunk [%d, +%d) outside request [%d, +%d)" % (off, size, req_off, req_len))
    rel = off - req_off
    if any(covered[rel:rel + size]):
        raise ProtocolError("chunks overlap at offset %d" % off)
    buf[rel:rel + size] = data
    covered[rel:rel + size] = b"\1" * size


class Client:
    """One connection to an NBD server over a Unix socket (or TCP with a (host, port) tuple)."""

    def __init__(self, address, timeout=30):
        if isinstance(address, tuple):
            self.sock = socket.create_connection(address, timeout=timeout)
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(address)
        self.handshake_flags = None
        self.client_flags = None
        self.structured = False
        self.extended = False
        self.export_size = None
        self.export_flags = None
        self.next_cookie = 1
        self.pending_reads = {}

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- bytes ---

    def send(self, data):
        self.sock.sendall(data)

    def recv_exact(self, n):
        parts, got = [], 0
        while got < n:
            part = self.sock.recv(min(n - got, 1 << 20))
            if not part:
                raise Closed("server closed the connection after %d of %d bytes" % (got, n))
            parts.append(part)
            got += len(part)
        return b"".join(parts)

    def is_closed_by_server(self, timeout=10):
        """True if the server closes the connection (EOF or reset) within timeout seconds."""
        old = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        finally:
            self.sock.settimeout(old)

    # --- handshake ---

    def handshake(self, client_flags=FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES):
        """Read the newstyle greeting and send client flags.  Returns the server's flags."""
        magic, opt_magic, flags = struct.unpack(">QQH", self.recv_exact(18))
        if magic != NBDMAGIC or opt_magic != IHAVEOPT:
            raise ProtocolError("bad greeting magic %#x %#x" % (magic, opt_magic))
        self.handshake_flags = flags
        self.client_flags = client_flags
        self.send(struct.pack(">I", client_flags))
        return flags

    def oldstyle_greeting(self):
        """Read an oldstyle greeting; returns (size, flags)."""
        magic, cliserv, size, flags = struct.unpack(">QQQI", self.recv_exact(28))
        self.recv_exact(124)
        if magic != NBDMAGIC or cliserv != OLDSTYLE_MAGIC:
            raise ProtocolError("bad oldstyle magic %#x %#x" % (magic, cliserv))
        self.export_size, self.export_flags = size, flags
        return size, flags

    # --- options ---

    def send_option(self, option, data=b"", declared_length=None):
        length = len(data) if declared_length is None else declared_length
        self.send(struct.pack(">QII", IHAVEOPT, option, length) + data)

    def read_option_reply(self):
        magic, option, rtype, length = struct.unpack(">QIII", self.recv_exact(20))
        if magic != OPTION_REPLY_MAGIC:
            raise ProtocolError("bad option reply magic %#x" % magic)
        if length > 64 << 20:
            raise ProtocolError("option reply length %d is absurd" % length)
        return OptionReply(option, rtype, self.recv_exact(length))

    def option(self, option, data=b""):
        """Send an option and read replies up to the final one (ACK or error).
        Returns the list of replies; the last one is the final reply."""
        self.send_option(option, data)
        replies = []
        while True:
            r = self.read_option_reply()
            if r.option != option:
                raise ProtocolError("reply for option %d to option %d" % (r.option, option))
            replies.append(r)
            if r.type == REP_ACK or r.is_error:
                return replies

    @staticmethod
    def export_data(name, info_requests=()):
        n = name.encode()
        return (struct.pack(">I", len(n)) + n + struct.pack(">H", len(info_requests))
                + b"".join(struct.pack(">H", i) for i in info_requests))

    @staticmethod
    def meta_data(name, queries):
        n = name.encode()
        out = struct.pack(">I", len(n)) + n + struct.pack(">I", len(queries))
        for q in queries:
            q = q.encode()
            out += struct.pack(">I", len(q)) + q
        return out

    @staticmethod
    def parse_infos(replies):
        """Turn NBD_REP_INFO replies into a dict {info type: fields}."""
        infos = {}
        for r in replies:
            if r.type != REP_INFO:
                continue
            (itype,) = struct.unpack(">H", r.data[:2])
            if itype == INFO_EXPORT:
                infos[itype] = struct.unpack(">QH", r.data[2:12])
            elif itype == INFO_BLOCK_SIZE:
                infos[itype] = struct.unpack(">III", r.data[2:14])
            else:
                infos[itype] = r.data[2:]
        return infos

    def opt_info(self, name="", info_requests=(), go=False):
        """INFO or GO.  Returns (final reply, infos dict).  On GO success enters transmission."""
        option = OPT_GO if go else OPT_INFO
        replies = self.option(option, self.export_data(name, info_requests))
        infos = self.parse_infos(replies)
        final = replies[-1]
        if final.type == REP_ACK:
            if INFO_EXPORT not in infos:
                raise ProtocolError("%s ACK without NBD_INFO_EXPORT" % name_of("OPT", option))
            if go:
                self.export_size, self.export_flags = infos[INFO_EXPORT]
        return final, infos

    def go(self, name="", info_requests=()):
        final, infos = self.opt_info(name, info_requests, go=True)
        if final.type != REP_ACK:
            raise ProtocolError("NBD_OPT_GO failed: %r" % final)
        return infos

    def opt_list(self):
        replies = self.option(OPT_LIST)
        if replies[-1].type != REP_ACK:
            raise ProtocolError("NBD_OPT_LIST failed: %r" % replies[-1])
        names = []
        for r in replies[:-1]:
            if r.type != REP_SERVER:
                raise ProtocolError("unexpected reply to LIST: %r" % r)
            (n,) = struct.unpack(">I", r.data[:4])
            names.append(r.data[4:4 + n].decode())
        return names

    def opt_structured_reply(self):
        r = self.option(OPT_STRUCTURED_REPLY)[-1]
        if r.type == REP_ACK:
            self.structured = True
        return r

    def opt_extended_headers(self):
        r = self.option(OPT_EXTENDED_HEADERS)[-1]
        if r.type == REP_ACK:
            self.extended = True
            self.structured = True
        return r

    def meta_context(self, option, name, queries):
        """LIST_ or SET_META_CONTEXT: returns (final reply, [(id, context name)])."""
        replies = self.option(option, self.meta_data(name, queries))
        contexts = []
        for r in replies[:-1]:
            if r.type != REP_META_CONTEXT:
                raise ProtocolError("unexpected reply to meta context option: %r" % r)
            (cid,) = struct.unpack(">I", r.data[:4])
            contexts.append((cid, r.data[4:].decode()))
        return replies[-1], contexts

    def export_name(self, name=""):
        """The old NBD_OPT_EXPORT_NAME: no reply header, just size and flags."""
        self.send_option(OPT_EXPORT_NAME, name.encode())
        self.export_size, self.export_flags = struct.unpack(">QH", self.recv_exact(10))
        if not (self.handshake_flags & FLAG_NO_ZEROES and self.client_flags & FLAG_C_NO_ZEROES):
            if self.recv_exact(124) != bytes(124):
                raise ProtocolError("EXPORT_NAME reply: the 124 reserved bytes are not zero")

    def connect_go(self, name="", structured=True, extended=False, meta=None, info_requests=()):
        """Handshake, optional reply negotiation and meta contexts, then GO.  Returns infos."""
        self.handshake()
        if extended:
            r = self.opt_extended_headers()
            if r.type != REP_ACK:
                raise ProtocolError("NBD_OPT_EXTENDED_HEADERS not acknowledged: %r" % r)
        elif structured:
            r = self.opt_structured_reply()
            if r.type != REP_ACK:
                raise ProtocolError("NBD_OPT_STRUCTURED_REPLY not acknowledged: %r" % r)
        if meta:
            final, contexts = self.meta_context(OPT_SET_META_CONTEXT, name, meta)
            if final.type != REP_ACK:
                raise ProtocolError("SET_META_CONTEXT failed: %r" % final)
            self.contexts = dict((n, i) for i, n in contexts)
        return self.go(name, info_requests)

    # --- transmission ---

    def request_bytes(self, cmd, offset=0, length=0, flags=0, cookie=None, payload=b"",
                      magic=None):
        """The bytes of one request (header + payload).  With extended headers the length is
        64-bit and a WRITE carries NBD_CMD_FLAG_PAYLOAD_LEN, as the spec requires."""
        if cookie is None:
            cookie = self.next_cookie
            self.next_cookie += 1
        if cmd == CMD_READ:
            # A simple reply does not say how much data follows: remember it.
            self.pending_reads[cookie] = length
        if self.extended:
            if cmd == CMD_WRITE:
                flags |= CMD_FLAG_PAYLOAD_LEN
            hdr = struct.pack(">IHHQQQ", magic or EXTENDED_REQUEST_MAGIC, flags, cmd, cookie,
                              offset, length)
        else:
            hdr = struct.pack(">IHHQQI", magic or REQUEST_MAGIC, flags, cmd, cookie, offset, length)
        return hdr + payload, cookie

    def send_request(self, cmd, offset=0, length=None, flags=0, payload=b"", cookie=None):
        if length is None:
            length = len(payload)
        data, cookie = self.request_bytes(cmd, offset, length, flags, cookie, payload)
        self.send(data)
        return cookie

    def read_chunk(self):
        """Read one reply message (a simple reply, or one structured or extended chunk)."""
        (magic,) = struct.unpack(">I", self.recv_exact(4))
        if magic == SIMPLE_REPLY_MAGIC:
            if self.extended:
                raise ProtocolError("simple reply after extended headers were negotiated")
            error, cookie = struct.unpack(">IQ", self.recv_exact(12))
            read_length = self.pending_reads.pop(cookie, 0)
            payload = self.recv_exact(read_length) if read_length and not error else b""
            return Chunk(cookie, REPLY_FLAG_DONE, None, payload, error=error)
        if magic == STRUCTURED_REPLY_MAGIC:
            if self.extended:
                raise ProtocolError("structured (compact) reply after extended headers")
            if not self.structured:
                raise ProtocolError("structured reply that was not negotiated")
            flags, rtype, cookie, length = struct.unpack(">HHQI", self.recv_exact(16))
            chunk = Chunk(cookie, flags, rtype, self.recv_exact(length))
        elif magic == EXTENDED_REPLY_MAGIC:
            if not self.extended:
                raise ProtocolError("extended reply that was not negotiated")
            flags, rtype, cookie, offset, length = struct.unpack(">HHQQQ", self.recv_exact(28))
            if length > 1 << 32:
                raise ProtocolError("extended reply payload length %d" % length)
            chunk = Chunk(cookie, flags, rtype, self.recv_exact(length), offset=offset)
        else:
            raise ProtocolError("bad reply magic %#x" % magic)
        if chunk.done:
            self.pending_reads.pop(cookie, None)
        return chunk

    def read_reply(self, cookie=None):
        """Read chunks until the DONE chunk of one request (the next reply if cookie is None)."""
        chunks = []
        while True:
            c = self.read_chunk()
            if cookie is None:
                cookie = c.cookie
            if c.cookie != cookie:
                raise ProtocolError("reply for cookie %d while waiting for %d" % (c.cookie, cookie))
            chunks.append(c)
            if c.done:
                return Reply(chunks)

    def command(self, cmd, offset=0, length=None, flags=0, payload=b""):
        """Send one request and wait for its whole reply."""
        cookie = self.send_request(cmd, offset, length, flags, payload)
        return self.read_reply(cookie)

    def read(self, offset, length, flags=0):
        """READ; returns (errno, data or None, reply)."""
        reply = self.command(CMD_READ, offset, length, flags)
        if reply.error:
            return reply.error, None, reply
        return 0, reply.read_data(offset, length), reply

    def write(self, offset, data, flags=0):
        return self.command(CMD_WRITE, offset, len(data), flags, data).error

    def disconnect(self):
        self.send_request(CMD_DISC)
