"""The HTTP front of ``tmdeploy serve``: KServe v2 requests checked against the model before Triton sees them.

Triton's HTTP frontend allocates an input's buffer from the shape a JSON request declares, before anything
counts the values sent or compares the shape with the model: in Triton 2.51 (nvidia-pytriton 0.7) a
declared ``[2**63-1]`` kills the server (measured). So Triton's HTTP endpoint listens on 127.0.0.1 only,
and every request to the served port passes this front: an infer request is checked here (input names,
datatype, shape against the model, batch within max_batch, the element count against the shape in Python
ints, the body size), then forwarded byte for byte; GET and HEAD (health, metadata, statistics) are
forwarded; other POSTs are refused. gRPC requests go to Triton directly: its gRPC frontend takes the values
as sent, and its core refuses a shape or size that does not match the model before allocating (measured
for the same requests). A proxy on the standard library's ThreadingHTTPServer: a checking pass-through
needs no framework, and the serving (batching, inference) stays Triton's.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import logging
import math
import re
import socket
import sys
import threading
import urllib.parse
import zlib
from dataclasses import dataclass

import numpy as np

from tmdeploy.errors import TmdeployError
from tmdeploy.sanitize import clean

log = logging.getLogger(__name__)

JSON_CHARS_PER_VALUE = 48  # room for "-1.2345678901234567e-308, " and some indentation
BODY_SLACK = 1 << 20  # the JSON around the values: names, parameters, requested outputs
OPEN_DIMS_BODY = 256 << 20  # the bound when a graph leaves H or W open, so the size is not known ahead
# Headers that belong to one connection, not to the request (RFC 9110 §7.6.1); the front sets its own.
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "host",
        "content-length", "content-encoding", "expect", "server", "date"}
_INFER = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")


class BadRequest(Exception):
    """The request does not fit the model: answered with ``status`` and a one-line JSON error."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InputRule:
    name: str
    datatype: str  # KServe's name: FP32, UINT8
    dims: tuple[int, ...]  # without the batch axis; -1 where the graph leaves it open
    itemsize: int


@dataclass(frozen=True)
class Contract:
    """What an infer request to the served model must be."""

    model: str
    inputs: tuple[InputRule, ...]
    max_batch: int

    @classmethod
    def of(cls, model: str, signature, max_batch: int) -> Contract:
        """From ``engines.triton.model_signature``: the same tensors Triton's model config declares."""
        return cls(model, tuple(InputRule(s.name, s.triton_type.removeprefix("TYPE_"), tuple(s.dims),
                                          np.dtype(s.dtype).itemsize) for s in signature.inputs), max_batch)

    @property
    def max_body(self) -> int:
        """The largest body a valid request can need: max_batch images as JSON text."""
        if any(d < 1 for rule in self.inputs for d in rule.dims):
            return OPEN_DIMS_BODY
        values = sum(math.prod(rule.dims) for rule in self.inputs) * self.max_batch
        return BODY_SLACK + values * JSON_CHARS_PER_VALUE


def _quote(value, limit: int = 64) -> str:
    return clean(value)[:limit]


def _shape(dims) -> str:
    return "[" + ", ".join("batch" if d is None else "any" if d < 0 else str(d) for d in dims) + "]"


def _number_check(datatype: str):
    if datatype.startswith("FP"):
        return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    info = np.iinfo(datatype.lower())
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and info.min <= v <= info.max


def _count_values(data, is_number) -> int:
    """The values in ``data``, a flat or nested JSON list (Triton takes both), each one a number of the type."""
    count, stack = 0, [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif is_number(item):
            count += 1
        else:
            raise BadRequest(f"value {_quote(json.dumps(item))[:32]} is not a number of the input's datatype")
    return count


def _check_input(rule: InputRule, tensor: dict, max_batch: int) -> int:
    """Check one input of the request; the bytes it takes from the binary part (0 for JSON data)."""
    what = f"input '{rule.name}'"
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise BadRequest(f"{what}: 'shape' must be a list of integers")
    expected = (None, *rule.dims)
    if len(shape) != len(expected):
        raise BadRequest(f"{what}: shape has rank {len(shape)}; the model takes {_shape(expected)}")
    if not 1 <= shape[0] <= max_batch:
        raise BadRequest(f"{what}: batch {shape[0]} is outside 1..{max_batch} (the server's max batch)")
    if any(got != want if want >= 0 else got < 1 for got, want in zip(shape[1:], rule.dims)):
        raise BadRequest(f"{what}: shape {shape} does not fit the model's {_shape(expected)}")
    if tensor.get("datatype") != rule.datatype:
        raise BadRequest(f"{what}: datatype '{_quote(tensor.get('datatype'))}'; the model takes {rule.datatype}")
    count = math.prod(shape)  # Python ints: exact however large the declared dimensions
    parameters = tensor.get("parameters", {})
    if not isinstance(parameters, dict):
        raise BadRequest(f"{what}: 'parameters' must be an object")
    if any(str(key).startswith("shared_memory") for key in parameters):
        raise BadRequest(f"{what}: shared-memory inputs are not served; send the values in the request")
    size = parameters.get("binary_data_size")
    if size is not None:
        if "data" in tensor or not isinstance(size, int) or isinstance(size, bool):
            raise BadRequest(f"{what}: binary_data_size must be an integer, and the input has no 'data' then")
        if size != count * rule.itemsize:
            raise BadRequest(f"{what}: binary_data_size {size} is not {count} values of {rule.itemsize} bytes "
                             f"(shape {shape})")
        return size
    if "data" not in tensor:
        raise BadRequest(f"{what}: no values: give 'data' or the binary_data_size parameter")
    values = _count_values(tensor["data"], _number_check(rule.datatype))
    if values != count:
        raise BadRequest(f"{what}: {values} values for shape {shape}, which holds {count}")
    return 0


def _unique_keys(pairs):
    """A JSON object whose keys are unique: with a key twice, Python's json keeps the last value and Triton's
    parser may take the first, so the request checked would not be the request served."""
    found = dict(pairs)
    if len(found) != len(pairs):
        raise BadRequest("a JSON object in the request names a key twice")
    return found


def check_request(contract: Contract, body: bytes, header_length: int | None) -> None:
    """Raise :class:`BadRequest` unless ``body`` is an infer request Triton can take for ``contract``'s model.

    ``header_length``: the Inference-Header-Content-Length of a request in the binary-tensor extension
    (its JSON first, then the inputs' bytes); None for plain JSON.
    """
    if header_length is not None and not 0 <= header_length <= len(body):
        raise BadRequest(f"Inference-Header-Content-Length {header_length} is outside the body's {len(body)} bytes")
    header, binary = (body, b"") if header_length is None else (body[:header_length], body[header_length:])
    try:  # UTF-8 only, as Triton reads it (json.loads alone would also take UTF-16 and UTF-32)
        request = json.loads(header.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as err:
        raise BadRequest(f"the request is not JSON: {_quote(err, 160)}") from None
    inputs = request.get("inputs") if isinstance(request, dict) else None
    if not isinstance(inputs, list) or not all(isinstance(t, dict) for t in inputs):
        raise BadRequest("the request needs 'inputs', a list of objects")
    rules = {rule.name: rule for rule in contract.inputs}
    names = [t.get("name") for t in inputs]
    if len(names) != len(rules) or not all(isinstance(n, str) for n in names) or set(names) != set(rules):
        raise BadRequest(f"the model takes the inputs {', '.join(rules)}, each once; the request gives "
                         f"{_quote(', '.join(map(str, names[:8])))}")
    taken = sum(_check_input(rules[t["name"]], t, contract.max_batch) for t in inputs)
    if taken != len(binary):
        raise BadRequest(f"the inputs declare {taken} binary bytes; the request carries {len(binary)}")


class _Handler(http.server.BaseHTTPRequestHandler):
    """One client connection: each request checked (POST), then forwarded to Triton."""

    protocol_version = "HTTP/1.1"  # keep-alive, as Triton's clients expect
    timeout = 300  # seconds a client may idle or stall mid-request before its connection is closed
    server: _FrontServer

    def log_message(self, format, *args) -> None:  # noqa: A002 (the base class's name)
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._forward(None)

    do_HEAD = do_GET

    def do_POST(self) -> None:
        try:
            body = self._checked_body()
        except BadRequest as err:
            self._answer_error(err.status, str(err))
            return
        self._forward(body)

    def _checked_body(self) -> bytes:
        contract = self.server.contract
        keep_alive = not self.close_connection
        self.close_connection = True  # until the body is read: its bytes must not be taken for the next request
        found = _INFER.fullmatch(urllib.parse.urlsplit(self.path).path)
        if not found or urllib.parse.unquote(found.group(1)) != contract.model or found.group(2) not in (None, "1"):
            raise BadRequest(f"tmdeploy serve takes POST only at /v2/models/{contract.model}[/versions/1]/infer",
                             404)
        for name in ("Content-Length", "Content-Encoding", "Inference-Header-Content-Length"):
            if len(self.headers.get_all(name, [])) > 1:  # which one counts would differ between servers
                raise BadRequest(f"the request gives {name} twice")
        if self.headers.get("Transfer-Encoding"):
            raise BadRequest("send the request with a Content-Length, without Transfer-Encoding", 411)
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise BadRequest("the request needs a Content-Length", 411) from None
        if not 0 <= length <= contract.max_body:
            raise BadRequest(f"a body of {length} bytes; a request to this model holds at most {contract.max_body}",
                             413)
        body = self.rfile.read(length)
        if len(body) != length:
            raise BadRequest(f"the body ended after {len(body)} of {length} bytes")
        self.close_connection = not keep_alive
        body = self._decoded(body, contract.max_body)
        header_length = self.headers.get("Inference-Header-Content-Length")
        try:
            header_length = None if header_length is None else int(header_length)
        except ValueError:
            raise BadRequest("Inference-Header-Content-Length must be an integer") from None
        check_request(contract, body, header_length)
        return body

    def _decoded(self, body: bytes, limit: int) -> bytes:
        """The body without its Content-Encoding (Triton's gzip and deflate), bounded like a plain one."""
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding == "identity":
            return body
        if encoding not in ("gzip", "deflate"):
            raise BadRequest(f"Content-Encoding '{_quote(encoding)}': use gzip, deflate or none", 415)
        inflate = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
        try:
            plain = inflate.decompress(body, limit + 1)
        except zlib.error as err:
            raise BadRequest(f"the {encoding} body does not decompress: {err}") from None
        if len(plain) > limit:
            raise BadRequest(f"the body decompresses to more than {limit} bytes", 413)
        if not inflate.eof:
            raise BadRequest(f"the {encoding} body is cut short")
        return plain

    def _forward(self, body: bytes | None) -> None:
        # One loopback connection a request: none is left open for Triton to wait on when it stops.
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=600)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
        except ValueError as err:  # a header http.client will not send on
            self._answer_error(400, f"a header that cannot be forwarded: {_quote(err)}")
            return
        except (OSError, http.client.HTTPException):
            self._answer_error(503, "the model server is not available (starting or stopped)")
            return
        finally:
            upstream.close()
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in _HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _answer_error(self, status: int, message: str) -> None:
        data = json.dumps({"error": message[:300]}).encode()
        log.debug("refused %s %s: %s", self.command, self.path[:200], message)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class _FrontServer(http.server.ThreadingHTTPServer):
    daemon_threads = True  # a client that holds its connection open must not hold up the exit

    def __init__(self, address, family: int, contract: Contract, upstream_port: int) -> None:
        self.address_family = family
        self.contract = contract
        self.upstream_port = upstream_port
        super().__init__(address, _Handler)

    def handle_error(self, request, client_address) -> None:
        """One log line, not socketserver's traceback on stderr: mostly a client that left mid-answer."""
        err = sys.exc_info()[1]
        (log.debug if isinstance(err, OSError) else log.warning)("request from %s failed: %s: %s",
                                                                  client_address[0], type(err).__name__, err)


@contextlib.contextmanager
def front(host: str, port: int, contract: Contract, upstream_port: int):
    """Listen on ``host:port`` and forward checked requests to Triton's HTTP endpoint on 127.0.0.1; yields the
    serving thread (it answers 503 until Triton is up)."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    try:
        server = _FrontServer(address[:2], family, contract, upstream_port)
    except OSError as err:
        raise TmdeployError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="tmdeploy-http-front", daemon=True)
    try:
        thread.start()
        yield thread
    finally:
        if thread.is_alive():
            server.shutdown()
        server.server_close()
