"""Serve a model with a real Triton Inference Server through PyTriton, our Predictor behind it.

Triton does the HTTP/gRPC endpoints and the dynamic batching; PyTriton hands each batch to a Python
function that runs ``runtime.Predictor`` (onnxruntime, or TensorRT for a ``.plan``). Ports: HTTP on
``port`` (the checking front of :mod:`tmdeploy.kserve`, Triton's own HTTP endpoint behind it on a loopback
port), gRPC on ``port + 1``, metrics on ``port + 2`` unless given.

Two facts of nvidia-pytriton 0.7 this module works around or checks (both measured):
- its Python backend stub loads ``libpython3.X.so`` through the system library path, which can find
  another build of the same Python; the running interpreter's LIBDIR goes first on LD_LIBRARY_PATH;
- it needs numpy < 2 (its own requirement): with numpy 2 the server answers with empty outputs.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tmdeploy import kserve, runtime, signals
from tmdeploy.engines.triton import check_batching, model_name, model_signature
from tmdeploy.errors import TmdeployError, UsageError, first_line
from tmdeploy.optional import require

MONITOR_S = 0.5  # how often serve() checks that Triton still runs
START_S = 300  # how long tritonserver may take to open its HTTP port


def library_path_with(libdir: str, current: str | None) -> str:
    """``current`` LD_LIBRARY_PATH with ``libdir`` first (once)."""
    rest = [p for p in (current or "").split(os.pathsep) if p and p != libdir]
    return os.pathsep.join([libdir, *rest])


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"  # 0.0.0.0: every interface
    port: int = 8000  # HTTP
    grpc_port: int | None = None  # None: port + 1
    metrics_port: int | None = None  # None: port + 2
    max_batch: int = 64  # the largest batch Triton's dynamic batcher forms
    max_queue_delay_us: int = 100  # how long a request may wait for others to batch with
    name: str | None = None  # the model's name in the server's URLs; None: the file's stem
    providers: str | None = None  # onnxruntime providers, comma-separated; None: tensorrt, cuda, cpu as available

    @property
    def ports(self) -> tuple[int, int, int]:
        """HTTP, gRPC and metrics ports."""
        return (self.port, self.port + 1 if self.grpc_port is None else self.grpc_port,
                self.port + 2 if self.metrics_port is None else self.metrics_port)

    def validate(self) -> None:
        """The options alone; the batch size against an engine's profile is checked with the model."""
        for port in (self.port, self.grpc_port, self.metrics_port):
            if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535):
                raise UsageError(f"port {port!r}: expected an integer in 1..65535")
        for what, port in zip(("gRPC", "metrics"), self.ports[1:]):  # PORT+1, PORT+2 unless given
            if port > 65535:
                raise UsageError(f"port {self.port}: the {what} port would be {port}, beyond 65535 (the server "
                                 f"needs PORT, PORT+1 and PORT+2); choose a lower --port")
        if self.name is not None:
            model_name("model", self.name)


def check_ports_free(host: str, *ports: int) -> None:
    """Fail fast when a port is taken: Triton would otherwise talk to whatever listens there, or hang.

    Binding (with SO_REUSEADDR, as servers do) fails for a port something listens on, whether it is
    another Triton or a silent TCP listener, and succeeds for one a closed server left in TIME_WAIT.
    """
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise UsageError(f"--host {host}: not an address this machine can listen on ({err})") from None
    family, _, _, _, address = infos[0]
    for port in ports:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address[0], port))
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    raise TmdeployError(f"port {port} on {host} is already in use (another server?); "
                                        f"choose another --port (the server needs PORT, PORT+1 and PORT+2)") from None
                raise TmdeployError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


def _import_pytriton():
    require("pytriton.triton", "nvidia-pytriton", "nvidia-pytriton")
    if int(np.__version__.split(".")[0]) >= 2:
        raise TmdeployError(f"nvidia-pytriton needs numpy<2 (its Triton backend returns empty outputs with numpy "
                            f"{np.__version__}): pip install 'numpy<2'")


def _infer_function(predictor: runtime.Predictor):
    from pytriton.decorators import batch

    @batch
    def infer(**inputs):
        (images,) = inputs.values()
        # one bad image must not fail the requests batched with it: NaN in, NaN out for that row only
        return predictor.run(images, check_finite=False)

    return infer


def _signals_through_gevent() -> None:
    """PyTriton waits for Triton with tritonclient.http, whose gevent hub runs our signal handler when a signal
    comes meanwhile; the hub prints what the handler raises (a traceback and a timestamp) before it passes it
    on to the main greenlet, unless the type is in the hub's NOT_ERROR, gevent's setting for exactly this."""
    from gevent.hub import Hub

    if not issubclass(signals.Interrupted, Hub.NOT_ERROR):
        Hub.NOT_ERROR = (*Hub.NOT_ERROR, signals.Interrupted)


def _quiet_stop() -> None:
    """Before our stop of Triton: a tritonserver still starting exits non-zero on the SIGINT that stops it, and
    PyTriton warns "exited with failure" for it; that one is ours, not a failure. Its exit callback runs in
    another thread after the stop, so the level stays (PyTriton logs nothing else at WARNING after a stop)."""
    logging.getLogger("pytriton.server.triton_server").setLevel(logging.ERROR)


def _end_helper_processes(timeout_s: float = 10.0) -> None:
    """Every process PyTriton started is gone before the command exits, so whoever sees the exit (a service
    manager, a test) finds none left: its multiprocessing children are joined (killed if they hang), and the
    standard library's resource tracker, which ignores SIGINT and SIGTERM and would end only on noticing our
    exit, a moment after it, is stopped and waited for. ``_stop`` is private, but it is the one way the
    standard library stops its tracker (its own tests use it); a public one does not exist."""
    import multiprocessing
    from multiprocessing import resource_tracker

    for child in multiprocessing.active_children():
        child.terminate()
        child.join(timeout_s)
        if child.is_alive():
            child.kill()
            child.join()
    resource_tracker._resource_tracker._stop()


def _wait_started(triton, port: int) -> None:
    """Until Triton's HTTP endpoint takes connections; a TmdeployError as soon as tritonserver exits instead.

    PyTriton's own wait polls a server that has exited for two minutes, then says it timed out.
    """
    deadline = time.monotonic() + START_S
    while True:
        if not triton.is_alive():
            raise TmdeployError("tritonserver exited while starting (its log is on stdout)")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TmdeployError(f"tritonserver did not open its HTTP port within {START_S} s") from None
            time.sleep(0.1)


def _loopback_port() -> int:
    """A free port on 127.0.0.1 for Triton's own HTTP endpoint, behind the front; Triton binds it a moment later."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running(model_path, **options):
    """Start Triton with the model bound and ready behind the checking HTTP front (:mod:`tmdeploy.kserve`);
    yields the ``pytriton.triton.Triton``; stops it on exit, however the block ends (a signal included).

    ``options``: the fields of :class:`ServeOptions`.
    """
    opts = ServeOptions(**options)
    opts.validate()
    model_path = Path(model_path)
    name = model_name(model_path, opts.name)
    sig = model_signature(model_path)
    check_batching(opts.max_batch, None, opts.max_queue_delay_us, 1, sig.batch_range)
    check_ports_free(opts.host, *opts.ports)
    _import_pytriton()
    _signals_through_gevent()
    from pytriton.client.exceptions import PyTritonClientError
    from pytriton.exceptions import PyTritonError
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    os.environ["LD_LIBRARY_PATH"] = library_path_with(sysconfig.get_config_var("LIBDIR"),
                                                      os.environ.get("LD_LIBRARY_PATH"))
    http_port, grpc_port, metrics_port = opts.ports
    upstream_port = _loopback_port()
    config = TritonConfig(http_address="127.0.0.1", http_port=upstream_port, grpc_address=opts.host,
                          grpc_port=grpc_port, metrics_address=opts.host, metrics_port=metrics_port)

    def tensors(specs):
        return [Tensor(name=s.name, dtype=np.dtype(s.dtype), shape=s.dims) for s in specs]

    with contextlib.ExitStack() as stack:
        predictor = stack.enter_context(runtime.load(model_path, providers=opts.providers))
        stack.enter_context(kserve.front(opts.host, http_port, kserve.Contract.of(name, sig, opts.max_batch),
                                         upstream_port))
        with signals.deferred():  # a signal now would come between tritonserver's fork and the handle stop() uses
            triton = Triton(config=config)
            stack.callback(_end_helper_processes)  # after Triton's stop (the stack runs callbacks last first)
            stack.callback(triton.stop)
            stack.callback(_quiet_stop)
            triton._run_server()  # PyTriton's start of the process alone (its run() is this and connect())
        _wait_started(triton, upstream_port)
        try:
            triton.connect()  # waits until Triton is ready
            triton.bind(
                model_name=name, infer_func=_infer_function(predictor),
                inputs=tensors(sig.inputs), outputs=tensors(sig.outputs),
                config=ModelConfig(max_batch_size=opts.max_batch,
                                   batcher=DynamicBatcher(max_queue_delay_microseconds=opts.max_queue_delay_us)),
                strict=True,
            )
        except (PyTritonError, PyTritonClientError, TimeoutError) as err:
            raise TmdeployError(f"Triton did not start serving {name}: {type(err).__name__}: "
                                f"{first_line(err)}") from None
        yield triton


def serve(model_path, **options) -> None:
    """Serve until SIGINT (Ctrl-C) or SIGTERM (how service managers stop), then stop Triton cleanly.

    The signal comes out as :class:`tmdeploy.signals.Interrupted` (the command line exits 130 or 143). If
    Triton stops by itself, a TmdeployError (exit 1), so that a service manager restarts the command.
    ``options`` as for ``running``. Call from the main thread (it handles the signals).
    """
    opts = ServeOptions(**options)
    with signals.handled(), running(model_path, **options) as triton:
        log.warning("serving %s at http://%s:%d (Triton HTTP/gRPC, dynamic batching); Ctrl-C or SIGTERM stops",
                    model_name(model_path, opts.name), opts.host, opts.port)
        while triton.is_alive():  # not triton.serve(): it takes a signal for a normal end and returns
            time.sleep(MONITOR_S)
    raise TmdeployError("the Triton server stopped by itself (crashed or killed); the model is no longer served")
