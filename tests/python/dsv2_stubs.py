"""Python stubs for dsv2's public API, generated at test time from
proto/inference.proto with grpcio-tools (PyPI), importable afterwards as
`inference_pb2` / `inference_pb2_grpc`."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def generate(out_dir):
    """Compiles proto/inference.proto into out_dir and puts it on sys.path."""
    from grpc_tools import protoc
    import grpc_tools
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{ROOT}/proto", f"-I{include}", f"--python_out={out_dir}",
                      f"--grpc_python_out={out_dir}", f"{ROOT}/proto/inference.proto"])
    if rc != 0:
        raise RuntimeError(f"grpc_tools.protoc failed with {rc}")
    sys.path.insert(0, out_dir)
