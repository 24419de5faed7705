"""`tmdeploy serve`: a Triton Inference Server (PyTriton) with dynamic batching in front of a model file."""

from pathlib import Path

from tmdeploy.cli._common import api_option, api_values

SERVE = "tmdeploy.serve:ServeOptions"


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP/gRPC with Triton and dynamic batching")
    p.add_argument("model", type=Path, help="an .onnx file (or a TensorRT .plan with its sidecar)")
    api_option(p, "--host", SERVE, help="address to listen on (0.0.0.0: every interface)")
    api_option(p, "--port", SERVE, type=int, help="HTTP port; gRPC listens on PORT+1, metrics on PORT+2")
    api_option(p, "--max-batch", SERVE, type=int, help="largest batch Triton's dynamic batcher forms")
    api_option(p, "--max-queue-delay-us", SERVE, type=int,
               help="how long a request may wait for others to batch with (microseconds)")
    api_option(p, "--name", SERVE, shown="the file's stem", help="model name in the server's URLs")
    api_option(p, "--providers", SERVE, shown="tensorrt,cuda,cpu as available",
               help="onnxruntime providers, comma-separated")
    p.set_defaults(func=run)


def options(args):
    from tmdeploy.serve import ServeOptions

    return ServeOptions(**api_values(args, ServeOptions))


def run(args) -> int:
    from dataclasses import asdict

    from tmdeploy.serve import serve

    serve(args.model, **asdict(options(args)))
    return 0
