"""Request smuggling and answer desync through the proxy, against a raw app
server that keeps every byte it gets (raw_upstream.py).

Each request mutation goes out followed, on the same client connection, by a
pipelined innocent `GET /second`; then `GET /third` goes out on a new client
connection. The pool has ONE connection to the app, so a desync left behind
by the mutation shows on the next request through it. Checked every time:

  * every message the app received parses as strict HTTP/1.1, carries
    batchd's marks (Via: 1.1 batchd, X-Forwarded-For ending in the client)
    and at most one framing header, consistent with its body (one exactly
    when there is a body); the app saw exactly the targets batchd should
    have forwarded, in order: never /smuggled or another path from a body;
  * the client reads strictly framed answers, one per request, in order,
    each the app's answer to that very request (its JSON names the
    upstream message), and /third gets the answer to /third;
  * a rejected mutation gets its status with a short {"error": ...} JSON
    body, then the connection closes, and the app saw nothing of it.

Answer mutations (the app's scripted bytes for GET /a, then a pipelined
GET /b): the client gets one strictly framed answer per request (framing
written by batchd), and /b gets the app's answer to /b (or a 502), never
bytes of the answer before it.

All problems of one case are collected and reported together, so a failure
says everything that went wrong, not just the first thing.
"""

import json
import re
import socket
import subprocess
import time

import pytest

from harness import made_for_the_test
from raw_upstream import (HOLD, Incomplete, RawUpstream, StrictError, field_values, read_fields,
                          read_framed_body, read_line)

SMUG = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
SECOND = b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n"
THIRD = b"GET /third HTTP/1.1\r\nHost: x\r\n\r\n"
HELLO_CHUNKED = b"5\r\nhello\r\n0\r\n\r\n"
CLTE_BODY = b"0\r\n\r\n" + SMUG  # chunked: empty, then a request; by length: all body
TIMEOUT = 4.0


# A connection batchd never ends shows as a forced shutdown (see finish).
BATCHD = "shutdown_grace_ms = 2000\n"


def upstream_conf(port, timeout_ms=3000, pool_size=1):
    return (f"[upstream]\nurl = http://127.0.0.1:{port}\npool_size = {pool_size}\n"
            f"timeout_ms = {timeout_ms}\nconnect_timeout_ms = 1000\n")


# --- the client side: a strict answer reader ------------------------------------

STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) ([\t\x20-\x7e\x80-\xff]*)")


class Answer:
    def __init__(self, status, reason, headers, body, framing, raw):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.framing = framing
        self.raw = raw

    def values(self, name):
        return field_values(self.headers, name.lower())

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Answer {self.status} {self.headers} {self.body[:200]!r}>"


def parse_answer(buf, pos, head_request=False):
    """One answer from buf[pos:] as batchd must write it: (Answer, next)."""
    line, p = read_line(buf, pos)
    m = STATUS_LINE.fullmatch(line)
    if not m:
        raise StrictError(f"bad status line: {line[:120]!r}")
    status = int(m.group(1))
    fields, p = read_fields(buf, p)
    cl, te = field_values(fields, "content-length"), field_values(fields, "transfer-encoding")
    raw = lambda end: bytes(buf[pos:end])  # noqa: E731
    if 100 <= status < 200 or status == 204:
        if cl or te:  # RFC 9110 8.6, RFC 9112 6.1: MUST NOT
            raise StrictError(f"a {status} answer with framing headers: Content-Length {cl}, "
                              f"Transfer-Encoding {te}")
        return Answer(status, m.group(2), fields, b"", None, raw(p)), p
    if status == 304 or head_request:
        if len(cl) + len(te) > 1:
            raise StrictError(f"a {status} answer with framing headers: Content-Length {cl}, "
                              f"Transfer-Encoding {te}")
        return Answer(status, m.group(2), fields, b"", None, raw(p)), p
    if not cl and not te:
        raise StrictError(f"{status} answer not framed (no Content-Length, no chunked): its end "
                          f"would be the connection's; head {bytes(buf[pos:p])!r}")
    body, framing, trailers, exts, p = read_framed_body(buf, p, fields, f"answer {status}")
    if exts:
        raise StrictError(f"chunk extensions in an answer batchd framed: {exts}")
    return Answer(status, m.group(2), fields, body, framing, raw(p)), p


class Client:
    """A raw client connection that reads answers strictly."""

    def __init__(self, port=None, sock=None):
        self.sock = sock or socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buf = bytearray()
        self.eof = False
        self.interim = []

    def close(self):
        self.sock.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"nothing more within the deadline; have {bytes(self.buf[:300])!r}")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError(f"nothing more within the deadline; have {bytes(self.buf[:300])!r}") from None
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            raise EOFError(f"batchd closed the connection; unread: {bytes(self.buf[:300])!r}")
        self.buf += data

    def read_answer(self, timeout=TIMEOUT, head_request=False):
        """The next final answer (1xx ones are kept in self.interim)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                a, end = parse_answer(self.buf, 0, head_request)
            except Incomplete:
                self._fill(deadline)
                continue
            del self.buf[:end]
            if a.status < 200:
                self.interim.append(a)
                continue
            return a

    def read_to_eof(self, timeout=TIMEOUT):
        """Bytes received until batchd closes; TimeoutError if it does not."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._fill(deadline)
        except EOFError:
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out


class Problems(list):
    def attempt(self, what, fn, *a, **kw):
        """fn(*a, **kw), or None with the exception recorded as a problem."""
        try:
            return fn(*a, **kw)
        except (StrictError, EOFError, TimeoutError, OSError, ValueError) as e:
            self.append(f"{what}: {type(e).__name__}: {e}")
            return None

    def check(self):
        if self:
            pytest.fail("\n".join(["problems:"] + [f"  - {p}" for p in self]), pytrace=False)


@pytest.fixture
def raw_upstream():
    """raw_upstream(script=None) -> RawUpstream, stopped after the test."""
    yield from made_for_the_test(RawUpstream, RawUpstream.stop)


# --- shared checks ------------------------------------------------------------------


def last_element(value):
    return value.split(",")[-1].strip()


def check_upstream(up, expected_targets, problems, first=None):
    """What the app received. `first`: (target, body the client sent) for
    a request that must have come with exactly one framing header."""
    for c in up.conns:
        if c.error:
            problems.append(f"upstream connection {c.index} is not strict HTTP/1.1: {c.error}; "
                            f"its bytes: {bytes(c.raw[:600])!r}")
        elif c.parsed_upto != len(c.raw):
            problems.append(f"upstream connection {c.index}: {len(c.raw) - c.parsed_upto} bytes after the "
                            f"last complete message: {bytes(c.raw[c.parsed_upto:c.parsed_upto + 300])!r}")
    for m in up.messages():
        via = m.values("via")
        if len(via) != 1 or last_element(via[0]) != "1.1 batchd":
            problems.append(f"upstream got {m.method} {m.target} without batchd's Via: {via} (not written by "
                            f"batchd?) raw {m.raw[:300]!r}")
        xff = m.values("x-forwarded-for")
        if len(xff) != 1 or last_element(xff[0]) != "127.0.0.1":
            problems.append(f"upstream got {m.method} {m.target} without batchd's X-Forwarded-For: {xff} "
                            f"raw {m.raw[:300]!r}")
        framing = m.values("content-length") + m.values("transfer-encoding")
        if m.body and len(framing) != 1:
            problems.append(f"upstream got {m.target} with a body and framing {framing}")
        if first and m.target == first[0] and first[1] and len(framing) != 1:
            problems.append(f"upstream got {m.target} (sent with a {len(first[1])}-byte body) with framing "
                            f"headers {framing}")
    targets = up.targets()
    if targets != expected_targets:
        problems.append(f"upstream saw targets {targets}, expected {expected_targets}")


def check_relayed(a, problems, what):
    """An answer batchd relayed from the app: its head is batchd's."""
    via = a.values("via")
    if not via or last_element(via[-1]) != "1.1 batchd":
        problems.append(f"{what}: no 'Via: 1.1 batchd' (head not written by batchd?): {a!r}")


def check_app_answer(a, up, target, problems, what):
    """a is the app's answer to the upstream message for `target`."""
    if a is None:
        return
    if a.status != 200:
        problems.append(f"{what}: status {a.status}, expected the app's 200 for {target}: {a!r}")
        return
    check_relayed(a, problems, what)
    try:
        j = a.json()
    except ValueError:
        problems.append(f"{what}: body is not the app's JSON answer: {a.body[:300]!r}")
        return
    if not isinstance(j, dict) or j.get("path") != target:
        problems.append(f"{what}: the answer is the app's answer to {j.get('path') if isinstance(j, dict) else j!r}, "
                        f"not to {target}")
        return
    msgs = [m for m in up.messages() if m.target == target]
    if len(msgs) != 1 or msgs[0].seq != j.get("seq"):
        problems.append(f"{what}: answer to upstream message #{j.get('seq')}, but the upstream got {target} as "
                        f"{[m.seq for m in msgs]}")


def check_error(a, statuses, problems, what, code=None):
    """A batchd error answer: the status, a short {"error": "..."} JSON body."""
    if a.status not in statuses:
        problems.append(f"{what}: status {a.status}, expected one of {statuses}: {a!r}")
    ctype = a.values("content-type")
    if not ctype or not ctype[0].startswith("application/json"):
        problems.append(f"{what}: Content-Type {ctype}, expected application/json")
    if len(a.body) > 200:
        problems.append(f"{what}: error body of {len(a.body)} bytes is not short")
    try:
        j = a.json()
    except ValueError:
        problems.append(f"{what}: error body is not JSON: {a.body[:200]!r}")
        return
    if not (isinstance(j, dict) and list(j) == ["error"] and isinstance(j["error"], str) and j["error"]):
        problems.append(f"{what}: error body is not {{\"error\": \"...\"}}: {j!r}")
    elif code and j["error"] != code:
        problems.append(f"{what}: error {j['error']!r}, expected {code!r}")


def third_request(b, up, problems):
    c = Client(b.port)
    try:
        c.send(THIRD)
        a = problems.attempt("GET /third on a new connection", c.read_answer)
    finally:
        c.close()
    return a


def finish(b, up, problems):
    """Stops batchd so that everything it sent is in, and the app has seen
    each of its connections end. Every client is gone by now: a batchd that
    does not exit promptly holds a connection that never ends."""
    try:
        b.stop(timeout=8)
    except subprocess.TimeoutExpired:
        problems.append("batchd did not exit within 8 s of SIGTERM: " + " | ".join(b.log().splitlines()[-4:]))
        b.proc.kill()
        b.wait()
    forced = [ln for ln in b.log().splitlines() if "shutdown grace expired" in ln or "shutdown_forced" in ln]
    if forced:
        problems.append("batchd held a client connection after its client had left, until the forced end "
                        "of shutdown: " + " | ".join(forced))
    problems.attempt("upstream connections closed after batchd stopped", up.wait_all_closed)


# --- request mutations ---------------------------------------------------------------


class Case:
    def __init__(self, id, raw, expect, body=b"", statuses=(400,), extra=None):
        self.id = id
        self.raw = raw              # the whole mutation: head and body, for target /first
        self.expect = expect        # "forward", "reject" or "either" (RFC allows both)
        self.body = body            # the body the app must get when forwarded
        self.statuses = statuses    # when rejected
        self.extra = extra          # extra check of the forwarded /first message


def post(lines, body=b"", method=b"POST"):
    return (method + b" /first HTTP/1.1\r\nHost: x\r\n" + b"".join(ln + b"\r\n" for ln in lines) + b"\r\n"
            + body)


def cl(n):
    return b"Content-Length: %d" % n


def expect_header(name, value):
    def check(m, problems):
        got = m.values(name)
        if got != [value]:
            problems.append(f"forwarded /first has {name} {got}, expected [{value!r}]")
    return check


def chunked_smug():
    return b"%x\r\n" % len(SMUG) + SMUG + b"\r\n0\r\n\r\n"


TE_OBFUSCATIONS = [
    # (id, TE field lines, expected with CL as well, expected alone (chunked
    # body), statuses when rejected alone). RFC 9112 6.3: a request whose
    # last coding is not chunked gets 400; 6.1: an unknown coding, 501.
    ("te_xchunked", [b"Transfer-Encoding: xchunked"], "reject", "reject", (400,)),
    ("te_space_before_colon", [b"Transfer-Encoding : chunked"], "reject", "reject", (400,)),
    ("te_tab", [b"Transfer-Encoding:\tchunked"], "reject", "forward", (400,)),
    ("te_chunked_identity", [b"Transfer-Encoding: chunked, identity"], "reject", "reject", (400,)),
    ("te_identity_chunked", [b"Transfer-Encoding: identity, chunked"], "reject", "either", (400, 501)),
    ("te_identity_chunked_twice", [b"Transfer-Encoding: identity, chunked"] * 2, "reject", "reject", (400, 501)),
    ("te_two_headers", [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"], "reject", "reject", (400,)),
    ("te_obs_fold", [b"Transfer-Encoding:", b" chunked"], "reject", "either", (400,)),
]

REQUEST_CASES = [
    Case("cl_te", post([cl(len(CLTE_BODY)), b"Transfer-Encoding: chunked"], CLTE_BODY), "reject"),
    Case("te_cl", post([b"Transfer-Encoding: chunked", cl(len(CLTE_BODY))], CLTE_BODY), "reject"),
]
for _id, _lines, _with_cl, _alone, _statuses in TE_OBFUSCATIONS:
    REQUEST_CASES.append(Case(f"{_id}-with_cl", post([cl(len(CLTE_BODY))] + _lines, CLTE_BODY), _with_cl,
                              body=CLTE_BODY))
    REQUEST_CASES.append(Case(f"{_id}-alone", post(_lines, HELLO_CHUNKED), _alone, body=b"hello",
                              statuses=_statuses))
REQUEST_CASES += [
    # A whitespace-led line right after the request line: RFC 9112 2.2 says
    # reject, or ignore the line (then the length comes from Content-Length).
    Case("te_leading_space_line-with_cl",
         b"POST /first HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: x\r\n" + cl(len(CLTE_BODY)) + b"\r\n\r\n"
         + CLTE_BODY, "either", body=CLTE_BODY),
    # The same line after Host: an obs-fold of Host's value.
    Case("te_folded_into_host-with_cl", post([b" Transfer-Encoding: chunked", cl(len(CLTE_BODY))], CLTE_BODY),
         "either", body=CLTE_BODY),
    # The critical one: Connection may name hop-by-hop fields, but not the framing.
    Case("connection_content_length", post([b"Connection: content-length", cl(len(SMUG))], SMUG), "forward",
         body=SMUG, extra=expect_header("content-length", str(len(SMUG)))),
    Case("connection_list_names_content_length",
         post([b"Connection: keep-alive, Content-Length", cl(len(SMUG))], SMUG), "forward", body=SMUG,
         extra=expect_header("content-length", str(len(SMUG)))),
    Case("connection_transfer_encoding",
         post([b"Connection: transfer-encoding", b"Transfer-Encoding: chunked"], chunked_smug()), "forward",
         body=SMUG),
    Case("connection_host", post([b"Connection: host"], method=b"GET"), "forward",
         extra=expect_header("host", "x")),
    Case("connection_x_forwarded_for",
         post([b"Connection: x-forwarded-for", b"X-Forwarded-For: 1.2.3.4"], method=b"GET"), "forward"),
    Case("connection_via", post([b"Connection: via", b"Via: 1.0 front"], method=b"GET"), "forward"),
    Case("duplicate_cl_same", post([cl(5), cl(5)], b"hello"), "reject"),
    Case("duplicate_cl_different", post([cl(5), cl(5 + len(SMUG))], b"hello" + SMUG), "reject"),
    Case("cl_plus", post([b"Content-Length: +5"], b"hello"), "reject"),
    Case("cl_hex", post([b"Content-Length: 0x5"], b"hello"), "reject"),
    Case("cl_space_inside", post([b"Content-Length: 1 0"], b"hello" + SMUG[:5]), "reject"),
    # RFC 9112 5.2: reject, or replace the fold with SP before forwarding.
    Case("obs_fold_other_header", post([b"X-Folded: a", b" b", cl(5)], b"hello"), "either", body=b"hello"),
    # RFC 9110 5.5: CR, LF, NUL in a value: reject, or replace with SP.
    Case("bare_cr_in_header", post([b"X-Bad: a\rb", cl(5)], b"hello"), "either", body=b"hello"),
    Case("nul_in_header", post([b"X-Bad: a\x00b", cl(5)], b"hello"), "either", body=b"hello"),
    # RFC 9112 2.2: a bare LF may be taken as a line end; batchd must then
    # forward CRLF lines (or reject).
    Case("bare_lf_lines", b"GET /first HTTP/1.1\nHost: x\n\n", "either"),
    Case("bare_lf_hides_cl", post([b"X-A: b\n" + cl(len(SMUG))], SMUG), "either", body=SMUG),
    # Chunk errors on a proxied route: 400, like everywhere else.
    Case("chunk_bad_size", post([b"Transfer-Encoding: chunked"], b"zz\r\nhello\r\n0\r\n\r\n"), "reject"),
    Case("chunk_size_bare_lf", post([b"Transfer-Encoding: chunked"], b"5\nhello\r\n0\r\n\r\n"), "reject"),
    Case("chunk_size_overflow", post([b"Transfer-Encoding: chunked"], b"fffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
         "reject"),
    # RFC 9112 7.1: chunk data is followed by CRLF. llhttp built without
    # LLHTTP_STRICT_MODE skips any two bytes there.
    Case("chunk_data_without_crlf", post([b"Transfer-Encoding: chunked"], b"5\r\nhelloXX0\r\n\r\n"), "reject"),
    Case("chunk_extension_50k",
         post([b"Transfer-Encoding: chunked"], b"5;" + b"a" * 50_000 + b"\r\nhello\r\n0\r\n\r\n"), "reject",
         statuses=(400, 431)),
    Case("chunk_extension_small", post([b"Transfer-Encoding: chunked"], b"5;name=value\r\nhello\r\n0\r\n\r\n"),
         "forward", body=b"hello"),
    Case("chunked_with_trailers", post([b"Transfer-Encoding: chunked"], b"5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n"),
         "forward", body=b"hello"),
]


@pytest.mark.parametrize("case", REQUEST_CASES, ids=[c.id for c in REQUEST_CASES])
def test_request_mutation(start_batchd, raw_upstream, case):
    up = raw_upstream()
    b = start_batchd(batchd=BATCHD, extra=upstream_conf(up.port))
    problems = Problems()
    c = Client(b.port)
    c.send(case.raw + SECOND)
    first = problems.attempt("answer to the mutation", c.read_answer)
    outcome = None
    if first is not None:
        if first.status == 200:
            outcome = "forward"
        elif first.status >= 400 and first.status < 500 or first.status == 501:
            outcome = "reject"
        else:
            problems.append(f"mutation answered {first.status}: {first!r}")
    print(f"outcome: {outcome}; answer: {first!r}")
    if outcome and case.expect != "either" and outcome != case.expect:
        problems.append(f"batchd chose to {outcome} (answer {first.status} {first.body[:120]!r}), "
                        f"expected {case.expect}")
    if outcome == "reject":
        check_error(first, case.statuses, problems, "rejection")
        rest = problems.attempt("the connection closes after the rejection", c.read_to_eof)
        if rest:
            problems.append(f"bytes after the rejection (the pipelined request was served?): {rest[:300]!r}")
    elif outcome == "forward":
        second = problems.attempt("answer to the pipelined /second", c.read_answer)
    c.close()
    third = third_request(b, up, problems)
    finish(b, up, problems)

    if outcome == "reject" or (outcome is None and case.expect == "reject"):
        check_upstream(up, ["/third"], problems)
    else:
        check_upstream(up, ["/first", "/second", "/third"], problems, first=("/first", case.body))
        if outcome == "forward":
            check_app_answer(first, up, "/first", problems, "answer to the mutation")
            check_app_answer(second, up, "/second", problems, "answer to /second")
            fwd = [m for m in up.messages() if m.target == "/first"]
            if len(fwd) == 1 and case.expect != "reject":
                if fwd[0].body != case.body:
                    problems.append(f"the app got /first with body {fwd[0].body[:200]!r}, "
                                    f"expected {case.body[:200]!r}")
                if case.extra:
                    case.extra(fwd[0], problems)
    check_app_answer(third, up, "/third", problems, "answer to /third on a new connection")
    problems.check()


# --- answer mutations ------------------------------------------------------------------

PIPELINE_AB = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"
OK_HELLO = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
FAKE_B = b'{"path": "/b", "seq": 1, "fake": "bytes sent with the answer to /a"}'

ANSWER_CASES = [
    # (id, the app's bytes for /a, what the client must get for /a:
    #  (status, body) exactly, or "502" for {"error":"bad_upstream_response"},
    #  or "either" for (200, b"hello") or that 502)
    ("connection_content_length", b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello",
     (200, b"hello")),
    ("304_with_length", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: \"e\"\r\n\r\n", (304, b"")),
    ("204_with_length", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", (204, b"")),
    ("100_then_200", b"HTTP/1.1 100 Continue\r\n\r\n" + OK_HELLO, (200, b"hello")),
    ("cl_and_te", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n" + HELLO_CHUNKED,
     "either"),
    ("te_and_cl", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n" + HELLO_CHUNKED,
     "either"),
    ("two_content_lengths", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello!!", "502"),
    ("same_content_length_twice", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
     "either"),
    ("obs_fold", b"HTTP/1.1 200 OK\r\nX-Fold: a\r\n b\r\nContent-Length: 5\r\n\r\nhello", "either"),
    ("nul_in_header", b"HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\nContent-Length: 5\r\n\r\nhello", "either"),
    ("bare_lf", b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello", "either"),
    ("extra_bytes_after_answer", OK_HELLO + b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsmuggle", (200, b"hello")),
    ("two_answers_one_write",
     OK_HELLO + b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(FAKE_B) + FAKE_B, (200, b"hello")),
]


def check_a(a, expect, problems):
    if a is None:
        return
    if expect == "502" or (expect == "either" and a.status == 502):
        check_error(a, (502,), problems, "answer to /a", code="bad_upstream_response")
        return
    want = (200, b"hello") if expect == "either" else expect
    if (a.status, a.body) != want:
        problems.append(f"answer to /a is {a.status} {a.body[:200]!r}, expected {want[0]} {want[1]!r}"
                        + (" or a 502" if expect == "either" else ""))
    check_relayed(a, problems, "answer to /a")
    if a.status not in (204, 304) and a.framing not in ("length", "chunked"):
        problems.append(f"answer to /a not framed: {a!r}")


@pytest.mark.parametrize("raw,expect", [c[1:] for c in ANSWER_CASES], ids=[c[0] for c in ANSWER_CASES])
def test_answer_mutation(start_batchd, raw_upstream, raw, expect):
    up = raw_upstream(script={"/a": raw})
    b = start_batchd(batchd=BATCHD, extra=upstream_conf(up.port))
    problems = Problems()
    c = Client(b.port)
    t0 = time.monotonic()
    c.send(PIPELINE_AB)
    # 2 s: an answer that has no body (304) must not wait for one.
    a = problems.attempt("answer to /a", c.read_answer, timeout=2.0)
    if a is not None and time.monotonic() - t0 > 2.0:
        problems.append(f"answer to /a took {time.monotonic() - t0:.2f}s")
    bb = problems.attempt("answer to /b", c.read_answer) if a is not None else None
    print(f"answer to /a: {a!r}\ninterim: {c.interim}\nanswer to /b: {bb!r}")
    c.close()
    third = third_request(b, up, problems)
    finish(b, up, problems)
    check_a(a, expect, problems)
    check_app_answer(bb, up, "/b", problems, "answer to /b")
    check_app_answer(third, up, "/third", problems, "answer to /third on a new connection")
    check_upstream(up, ["/a", "/b", "/third"], problems)
    problems.check()


def test_answer_for_an_unsent_request_is_never_relayed(start_batchd, raw_upstream):
    """The app answers /a and, in the same write, a made-up answer "for /b",
    then never answers the real /b: the client must get the gateway's 504
    for /b, not the made-up answer."""
    fake = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(FAKE_B) + FAKE_B
    up = raw_upstream(script={"/a": OK_HELLO + fake, "/b": HOLD})
    b = start_batchd(batchd=BATCHD, extra=upstream_conf(up.port, timeout_ms=1000))
    problems = Problems()
    c = Client(b.port)
    c.send(PIPELINE_AB)
    a = problems.attempt("answer to /a", c.read_answer)
    bb = problems.attempt("answer to /b", c.read_answer) if a is not None else None
    c.close()
    if a is not None and (a.status, a.body) != (200, b"hello"):
        problems.append(f"answer to /a: {a!r}")
    if bb is not None:
        check_error(bb, (504,), problems, "answer to /b (held by the app)", code="upstream_timeout")
    third = third_request(b, up, problems)
    finish(b, up, problems)
    check_app_answer(third, up, "/third", problems, "answer to /third on a new connection")
    check_upstream(up, ["/a", "/b", "/third"], problems)
    problems.check()


# --- the checks themselves -----------------------------------------------------------
# The sweep passes only as far as these readers are strict: each must refuse
# what batchd must never send, or a passing sweep proves nothing.

GOOD_REQUEST = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"
BAD_REQUESTS = {
    "bare_lf": b"GET /x HTTP/1.1\nHost: x\r\n\r\n",
    "bare_cr": b"GET /x HTTP/1.1\r\nHost: x\ry\r\n\r\n",
    "obs_fold": b"GET /x HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    "space_before_colon": b"GET /x HTTP/1.1\r\nHost : x\r\n\r\n",
    "nul_in_value": b"GET /x HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "no_host": b"GET /x HTTP/1.1\r\nX-A: a\r\n\r\n",
    "two_hosts": b"GET /x HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    "cl_and_te": b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                 + HELLO_CHUNKED,
    "two_cl": b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "cl_plus": b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
    "te_not_chunked": b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" + HELLO_CHUNKED,
    "chunk_size": b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "chunk_no_crlf": b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
    "space_in_target": b"GET /x y HTTP/1.1\r\nHost: x\r\n\r\n",
    "http2_line": b"GET /x HTTP/2.0\r\nHost: x\r\n\r\n",
}
GOOD_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
BAD_ANSWERS = {
    "unframed_200": b"HTTP/1.1 200 OK\r\nX-A: a\r\n\r\nhello",
    "204_with_cl": b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    "cl_and_te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n" + HELLO_CHUNKED,
    "two_cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "bare_lf": b"HTTP/1.1 200 OK\nContent-Length: 5\r\n\r\nhello",
    "obs_fold": b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 5\r\n\r\nhello",
    "nul": b"HTTP/1.1 200 OK\r\nX-A: a\x00\r\nContent-Length: 5\r\n\r\nhello",
    "chunk_ext": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\n\r\n",
    "http10": b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello",
}


@pytest.mark.parametrize("raw", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_strict_request_reader_refuses(raw):
    from raw_upstream import parse_request
    with pytest.raises(StrictError):
        parse_request(bytearray(raw), 0)


@pytest.mark.parametrize("raw", BAD_ANSWERS.values(), ids=BAD_ANSWERS.keys())
def test_strict_answer_reader_refuses(raw):
    with pytest.raises(StrictError):
        parse_answer(bytearray(raw), 0)


def test_strict_readers_take_good_messages_and_wait_for_the_rest():
    from raw_upstream import parse_request
    chunked = (b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;e=1\r\nhello\r\n0\r\nX-T: t\r\n\r\n")
    two = bytearray(chunked + GOOD_REQUEST)
    m, end = parse_request(two, 0)
    assert (m.target, m.body, m.framing, m.trailers) == ("/x", b"hello", "chunked", [("X-T", "t")])
    m2, end2 = parse_request(two, end)
    assert (m2.method, m2.body, end2) == ("GET", b"", len(two))
    for cut in range(len(chunked)):
        with pytest.raises(Incomplete):
            parse_request(bytearray(chunked[:cut]), 0)
    a, end = parse_answer(bytearray(GOOD_ANSWER + b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"), 0)
    assert (a.status, a.body, a.framing) == (200, b"hello", "length")
    a, _ = parse_answer(bytearray(GOOD_ANSWER + b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"), end)
    assert (a.status, a.body) == (304, b"")
    with pytest.raises(Incomplete):
        parse_answer(bytearray(GOOD_ANSWER[:-1]), 0)


def test_raw_upstream_records_every_byte_and_answers_by_script():
    """The app server itself: bytes kept per connection, strict errors
    recorded (and the connection's write side shut), scripts obeyed."""
    up = RawUpstream(script={"/s": b"HTTP/1.1 204 No Content\r\n\r\n", "/h": HOLD})
    try:
        with socket.create_connection(("127.0.0.1", up.port), timeout=TIMEOUT) as s:
            s.sendall(GOOD_REQUEST + b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")
            c = Client(sock=s)
            a = c.read_answer()
            assert a.status == 200 and a.json()["path"] == "/x" and a.json()["seq"] == 0
            assert c.read_answer().status == 204
            s.sendall(b"GET /h HTTP/1.1\r\nHost: x\r\n\r\nGET /after-hold HTTP/1.1\r\nHost: x\r\n\r\n")
            up.wait(lambda: len(up.messages()) == 4, what="4 messages")
            with pytest.raises(TimeoutError):
                c.read_answer(timeout=0.3)  # held: nothing for /h, nor after it
        with socket.create_connection(("127.0.0.1", up.port), timeout=TIMEOUT) as s:
            s.sendall(b"GET /x HTTP/1.1\nHost: x\r\n\r\n")
            assert s.recv(100) == b""  # refused: no answer, write side shut
        up.wait_all_closed()
        assert up.targets() == ["/x", "/s", "/h", "/after-hold"]
        assert bytes(up.received[1]) == b"GET /x HTTP/1.1\nHost: x\r\n\r\n"
        assert "bare LF" in up.conns[1].error and up.conns[0].error is None
    finally:
        up.stop()
