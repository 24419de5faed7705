"""`tmdeploy serve`: a Triton Inference Server (PyTriton) with dynamic batching in front of a model file."""

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP/gRPC with Triton and dynamic batching")
    p.add_argument("model", type=Path, help="an .onnx file (or a TensorRT .plan with its sidecar)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port; gRPC listens on PORT+1, metrics on PORT+2")
    p.add_argument("--max-batch", type=int, default=64, help="largest batch Triton's dynamic batcher forms")
    p.add_argument("--max-queue-delay-us", type=int, default=100,
                   help="how long a request may wait for others to batch with (microseconds)")
    p.add_argument("--name", default=None, help="model name in the server's URLs (default: the file's stem)")
    p.add_argument("--providers", default=None,
                   help="onnxruntime providers, comma-separated (default: tensorrt,cuda,cpu as available)")
    p.set_defaults(func=run)


def run(args) -> int:
    from tmdeploy.serve import serve

    serve(args.model, host=args.host, port=args.port, max_batch=args.max_batch,
          max_queue_delay_us=args.max_queue_delay_us, name=args.name, providers=args.providers)
    return 0
