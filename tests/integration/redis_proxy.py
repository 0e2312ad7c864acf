"""A TCP proxy between batchd and a real redis-server that can hold chosen
commands on their way to Redis, or chosen replies on their way back, to
make races deterministic. It reads RESP both ways just enough to pair each
reply with its command (Redis answers a connection's commands in order).

    p = RedisProxy(redis_port)
    p.hold_command(lambda args: args[0] == b"EVALSHA" and ..., 0.3)   # once
    p.hold_reply(lambda args: args[0] == b"MGET" and ..., 0.4)        # once
    ... batchd's [redis] url = redis://127.0.0.1:{p.port}/0
    p.close()

A held command delays everything behind it on its connection, as a slow
network would; other connections go on. Each rule fires once."""

import socket
import threading
import time

from harness import free_port


class _Resp:
    """Splits a byte stream into whole RESP values; returns the commands'
    argument lists (requests) or just marks values (replies)."""

    def __init__(self):
        self.buf = b""

    def feed(self, data):
        self.buf += data
        out = []
        while True:
            r = self._value(0)
            if r is None:
                return out
            end, value = r
            out.append((self.buf[:end], value))
            self.buf = self.buf[end:]

    def _line(self, i):
        j = self.buf.find(b"\r\n", i)
        return None if j < 0 else (j + 2, self.buf[i:j])

    def _value(self, i):
        r = self._line(i)
        if r is None:
            return None
        end, line = r
        t, rest = line[:1], line[1:]
        if t in (b"+", b"-", b":"):
            return end, rest
        if t == b"$":
            n = int(rest)
            if n < 0:
                return end, None
            if len(self.buf) < end + n + 2:
                return None
            return end + n + 2, self.buf[end:end + n]
        if t == b"*":
            n = int(rest)
            items = []
            for _ in range(max(n, 0)):
                r = self._value(end)
                if r is None:
                    return None
                end, v = r
                items.append(v)
            return end, items
        raise ValueError(f"not RESP: {line[:40]!r}")


def _shut(*socks):
    for x in socks:
        try:
            x.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class RedisProxy:
    def __init__(self, redis_port):
        self.redis_port = redis_port
        self.port = free_port()
        self.rules_cmd = []    # [pred, delay, fired]
        self.rules_reply = []
        self.held = []         # (kind, args) of what was held, for asserts
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(64)
        self.stopping = False
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def hold_command(self, pred, seconds):
        with self.lock:
            self.rules_cmd.append([pred, seconds, False])

    def hold_reply(self, pred, seconds):
        with self.lock:
            self.rules_reply.append([pred, seconds, False])

    def _match(self, rules, args, kind):
        with self.lock:
            for rule in rules:
                if not rule[2] and isinstance(args, list) and rule[0](args):
                    rule[2] = True
                    self.held.append((kind, args))
                    return rule[1]
        return 0

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            s = socket.create_connection(("127.0.0.1", self.redis_port))
            self.conns += [c, s]
            pending = []  # commands sent, oldest first, for pairing replies
            plock = threading.Lock()
            threading.Thread(target=self._up, args=(c, s, pending, plock), daemon=True).start()
            threading.Thread(target=self._down, args=(s, c, pending, plock), daemon=True).start()

    def _up(self, c, s, pending, plock):
        parser = _Resp()
        try:
            while True:
                data = c.recv(65536)
                if not data:
                    break
                for raw, args in parser.feed(data):
                    delay = self._match(self.rules_cmd, args, "command")
                    if delay:
                        time.sleep(delay)
                    with plock:
                        pending.append(args)
                    s.sendall(raw)
        except OSError:
            pass
        finally:
            _shut(c, s)

    def _down(self, s, c, pending, plock):
        parser = _Resp()
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    break
                for raw, _ in parser.feed(data):
                    with plock:
                        args = pending.pop(0) if pending else None
                    delay = self._match(self.rules_reply, args, "reply")
                    if delay:
                        time.sleep(delay)
                    c.sendall(raw)
        except OSError:
            pass
        finally:
            _shut(c, s)

    def close(self):
        self.stopping = True
        # shutdown first: a thread blocked in accept() keeps a closed
        # listening socket alive, and would accept batchd's reconnect.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for x in self.conns:
            try:
                x.close()
            except OSError:
                pass
