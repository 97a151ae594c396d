#!/usr/bin/env python3
"""A tcpbutler client in plain Python 3 (standard library only).

Written from the README's "The default wire format" section alone, to show
that the format can be spoken without tcpbutler. Start a server with
`deno task serve` (port 9000) and run:

    python3 examples/other_language/client.py 127.0.0.1 9000

It pings the server, sends a push and N requests (all pipelined), matches the
responses by id in whatever order they come, answers the server's pings and
requests, and ends with a graceful drain: by default it drains itself (sends
`drain`, waits for the answer, half-closes, waits for the server to close);
with --wait-drain it waits until the server drains it (a server shutdown).
It prints one line per event, for people and for tests.
"""

import argparse
import socket
import struct
import sys

# Frame kinds (README: "The default wire format").
REQUEST, RESPONSE, PUSH, ERROR, PING, PONG, DRAIN, REFUSED = 1, 2, 3, 4, 5, 6, 7, 8
HEADER = struct.Struct(">IBI")  # length, kind, id: unsigned, big-endian
HEADER_SIZE = HEADER.size  # 9
MAX_PAYLOAD = 8 * 1024 * 1024
PING_ID = 4242


def frame(kind, frame_id, payload=b""):
    """A whole frame: length counts kind + id + payload, so 5 + len(payload)."""
    return HEADER.pack(5 + len(payload), kind, frame_id) + payload


class ProtocolError(Exception):
    pass


class Connection:
    def __init__(self, host, port, timeout):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buffer = bytearray()
        self.eof = False
        self.write_closed = False

    def send(self, data):
        self.sock.sendall(data)

    def frames(self):
        """Reads once from the socket and returns the complete frames, if any."""
        chunk = self.sock.recv(65536)
        if not chunk:
            self.eof = True
            if self.buffer:
                raise ProtocolError(
                    "connection ended inside a frame (%d bytes)" % len(self.buffer)
                )
            return []
        self.buffer += chunk
        out = []
        while len(self.buffer) >= HEADER_SIZE:
            length, kind, frame_id = HEADER.unpack_from(self.buffer)
            if length < 5:
                raise ProtocolError("length %d is below 5" % length)
            if length - 5 > MAX_PAYLOAD:
                raise ProtocolError("payload of %d bytes is over the limit" % (length - 5))
            if kind < 1 or kind > REFUSED:
                raise ProtocolError("unknown kind %d" % kind)
            end = 4 + length
            if len(self.buffer) < end:
                break
            out.append((kind, frame_id, bytes(self.buffer[HEADER_SIZE:end])))
            del self.buffer[:end]
        return out

    def close_write(self):
        self.write_closed = True
        self.sock.shutdown(socket.SHUT_WR)

    def close(self):
        self.sock.close()


def show(payload):
    text = payload.decode("utf-8", errors="replace")
    return text if len(text) <= 60 else "<%d bytes>" % len(payload)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--requests", type=int, default=5, help="requests to send")
    parser.add_argument(
        "--expect-requests", type=int, default=0,
        help="requests from the server to answer before draining")
    parser.add_argument(
        "--fail", action="store_true",
        help="also send a request with payload 'fail' (a server may answer with an error)")
    parser.add_argument(
        "--wait-drain", action="store_true",
        help="wait for the server to drain this connection instead of draining it")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()

    conn = Connection(args.host, args.port, args.timeout)
    out = lambda line: print(line, flush=True)
    out("connected")

    # Ids: unsigned 32-bit, unique among this end's pending requests; from 1.
    pending = {}
    payloads = [("hello %d" % i).encode() for i in range(args.requests)]
    if args.requests > 0:
        payloads[0] = b""  # an empty payload is allowed
    if args.requests > 1:
        payloads[1] = "héllo ✓".encode()  # any bytes: UTF-8 here
    if args.requests > 2:
        payloads[2] = bytes(range(256)) * 1024  # 256 KiB: read over many recv()s
    if args.fail:
        payloads.append(b"fail")
    out_bytes = bytearray(frame(PING, PING_ID, b"are you there?"))
    out_bytes += frame(PUSH, 0, b"a push from python")
    for index, payload in enumerate(payloads):
        request_id = index + 1
        pending[request_id] = payload
        out_bytes += frame(REQUEST, request_id, payload)
    conn.send(bytes(out_bytes))  # everything pipelined in one write

    pong = False
    pushes = 0
    answered = 0
    drain_sent = False
    announced = False
    ok = True

    def finished_own_work():
        return not pending and pong and pushes >= 1 and answered >= args.expect_requests

    try:
        while not conn.eof:
            if finished_own_work() and not drain_sent and not args.wait_drain:
                out("draining")
                conn.send(frame(DRAIN, 0))
                drain_sent = True
            if finished_own_work() and args.wait_drain and not announced:
                out("waiting for drain")
                announced = True
            for kind, frame_id, payload in conn.frames():
                if kind == RESPONSE:
                    sent = pending.pop(frame_id, None)
                    if sent is None:
                        out("late response %d dropped" % frame_id)
                    elif payload == sent:
                        out("response %d ok %s" % (frame_id, show(payload)))
                    else:
                        out("response %d MISMATCH %s" % (frame_id, show(payload)))
                        ok = False
                elif kind == ERROR:
                    sent = pending.pop(frame_id, None)
                    out("error %d %s" % (frame_id, payload.decode("utf-8", errors="replace")))
                elif kind == PUSH:
                    pushes += 1
                    out("push %s" % show(payload))
                elif kind == PING:
                    conn.send(frame(PONG, frame_id, payload))
                    out("answered ping %d %s" % (frame_id, show(payload)))
                elif kind == PONG:
                    pong = frame_id == PING_ID
                    out("pong %d %s" % (frame_id, show(payload)))
                elif kind == REQUEST:
                    conn.send(frame(RESPONSE, frame_id, b"python got: " + payload))
                    answered += 1
                    out("answered request %d %s" % (frame_id, show(payload)))
                elif kind == REFUSED:
                    # The server is stopping and did not run this request:
                    # it is safe to send it again elsewhere. Here: report it.
                    pending.pop(frame_id, None)
                    ok = False
                    out("refused %d" % frame_id)
                elif kind == DRAIN:
                    if drain_sent:
                        # The answer to our drain: every request the server
                        # sent has arrived and been answered. Half-close and
                        # wait for the server to close.
                        out("drain answered")
                        conn.close_write()
                    else:
                        # The server is going away: no new requests from us,
                        # answer with a drain of our own.
                        out("drain received")
                        conn.send(frame(DRAIN, 0))
                        drain_sent = True
        out("eof")
    except (ProtocolError, OSError) as error:
        out("failed: %s" % error)
        ok = False
    finally:
        conn.close()
    if pending:
        out("unanswered requests: %s" % sorted(pending))
        ok = False
    out("done" if ok else "done with failures")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
