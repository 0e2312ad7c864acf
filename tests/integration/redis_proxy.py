"""TCP proxies between batchd and a real redis-server, to make races
deterministic. Both relay each connection batchd opens on a connection of
its own to Redis (TcpProxy); they differ in what they can hold back.

RedisProxy reads RESP both ways just enough to pair each reply with its
command (Redis answers a connection's commands in order), and can hold
chosen commands on their way to Redis, or chosen replies on their way back:

    p = RedisProxy(redis_port)
    p.hold_command(lambda args: args[0] == b"EVALSHA" and ..., 0.3)   # once
    p.hold_reply(lambda args: args[0] == b"MGET" and ..., 0.4)        # once
    ... batchd's [redis] url = redis://127.0.0.1:{p.port}/0
    p.close()

A held command delays everything behind it on its connection, as a slow
network would; other connections go on. Each rule fires once.

ConnProxy works per connection on raw bytes: it can hold the replies on
chosen connections (and relay them later), cut the pub/sub ones, or cut a
command connection once a command holding a marker went through, before
its reply is relayed."""

import socket
import threading
import time


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


class Conn:
    """One proxied connection: batchd's end (client) and Redis's (server)."""

    def __init__(self, client, server):
        self.client, self.server = client, server
        self.lock = threading.Lock()

    def kill(self):
        for sock in (self.client, self.server):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class TcpProxy:
    """Listens on 127.0.0.1:<port>, connects each client to target_port and
    pumps both ways; by itself it relays every byte as it comes (a backend
    that is reachable from some moment on), and subclasses say what to do
    with each piece read: _to_server(c, data) and _to_client(c, data) relay
    it (or hold it) and return False to end the connection. Either side ending or failing ends
    both; _ended(c) is then called once per direction. port: where to
    listen (0: any free port), e.g. where batchd was told a backend is."""

    def __init__(self, target_port, port=0):
        self.target = target_port
        self.lsock = socket.create_server(("127.0.0.1", port))
        self.port = self.lsock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _conn(self, client, server):
        return Conn(client, server)

    def _accept(self):
        while True:
            try:
                client, _ = self.lsock.accept()
            except OSError:
                return
            c = self._conn(client, socket.create_connection(("127.0.0.1", self.target)))
            self.conns.append(c)
            threading.Thread(target=self._pump, args=(c, c.client, self._to_server), daemon=True).start()
            threading.Thread(target=self._pump, args=(c, c.server, self._to_client), daemon=True).start()

    def _pump(self, c, src, relay):
        try:
            while True:
                data = src.recv(65536)
                if not data or not relay(c, data):
                    break
        except OSError:
            pass
        finally:
            c.kill()
            self._ended(c)

    def _to_server(self, c, data):
        c.server.sendall(data)
        return True

    def _to_client(self, c, data):
        c.client.sendall(data)
        return True

    def _ended(self, c):
        pass

    def close(self):
        # shutdown first: a thread blocked in accept() keeps a closed
        # listening socket alive, and would accept batchd's reconnect.
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.lsock.close()
        for c in self.conns:
            c.kill()


class RedisProxy(TcpProxy):
    """Holds chosen commands or replies, each rule once (module docstring)."""

    def __init__(self, redis_port):
        self.rules_cmd = []    # [pred, delay, fired]
        self.rules_reply = []
        self.held = []         # (kind, args) of what was held, for asserts
        self.lock = threading.Lock()
        super().__init__(redis_port)

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

    @staticmethod
    def _hold(delay):
        """A rule's hold: seconds, or a threading.Event the test sets (10 s
        at most), so a race can be released exactly when the test says."""
        if hasattr(delay, "wait"):
            delay.wait(10.0)
        elif delay:
            time.sleep(delay)

    def _conn(self, client, server):
        c = Conn(client, server)
        c.commands, c.replies = _Resp(), _Resp()
        c.pending = []  # commands sent, oldest first, for pairing replies (under c.lock)
        return c

    def _to_server(self, c, data):
        for raw, args in c.commands.feed(data):
            self._hold(self._match(self.rules_cmd, args, "command"))
            with c.lock:
                c.pending.append(args)
            c.server.sendall(raw)
        return True

    def _to_client(self, c, data):
        for raw, _ in c.replies.feed(data):
            with c.lock:
                args = c.pending.pop(0) if c.pending else None
            self._hold(self._match(self.rules_reply, args, "reply"))
            c.client.sendall(raw)
        return True


class ConnProxy(TcpProxy):
    """Per connection, holds the replies (and relays them later), or cuts
    the connection once a command holding a marker went through, before
    its reply is relayed. Connections accepted while hold_new is set start
    held; `cut` is set once a connection has been cut that way."""

    class Conn(Conn):
        """A Conn that can hold what Redis answers."""

        def __init__(self, client, server, held):
            super().__init__(client, server)
            self.pubsub, self.sent = False, b""
            self.held, self.buf = held, b""
            self.cut_on, self.cutting = None, False

        def hold(self):
            with self.lock:
                self.held = True

        def release(self):
            with self.lock:
                self.held = False
                buf, self.buf = self.buf, b""
                try:
                    self.client.sendall(buf)
                except OSError:
                    pass  # a connection batchd gave up on

    def __init__(self, target_port):
        self.hold_new = False
        self.cut = threading.Event()
        super().__init__(target_port)

    def _conn(self, client, server):
        return self.Conn(client, server, self.hold_new)

    def _to_server(self, c, data):
        with c.lock:
            c.sent += data
            c.pubsub = c.pubsub or b"SUBSCRIBE" in data
            if c.cut_on and c.cut_on in data:
                c.cutting = True  # the next reply is not relayed
        c.server.sendall(data)
        return True

    def _to_client(self, c, data):
        with c.lock:
            if c.cutting:
                return False
            if c.held:
                c.buf += data
            else:
                c.client.sendall(data)
        return True

    def _ended(self, c):
        if c.cutting:
            self.cut.set()

    def commands(self):
        return [c for c in self.conns if not c.pubsub]

    def pubsubs(self):
        return [c for c in self.conns if c.pubsub]

    def hold_commands(self):
        """Holds the replies on the command connections open now."""
        held = self.commands()
        for c in held:
            c.hold()
        return held

    def cut_after(self, marker):
        """Cuts the command connection that sends `marker` once its reply
        comes back from Redis, without relaying it."""
        for c in self.commands():
            with c.lock:
                c.cut_on = marker

    def kill_pubsub(self):
        for c in self.pubsubs():
            c.kill()
            c.pubsub = False
