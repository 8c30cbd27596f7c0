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


def channel_from_ready_fields(fields):
    """A channel to the endpoint of `dsv2 up`'s ready line: TLS verified
    against the throw-away authority it names (tls_ca=; security is on by
    default), plaintext when it names none (--insecure)."""
    import grpc
    ca = fields.get("tls_ca")
    if ca is None:
        return grpc.insecure_channel(fields["endpoint"])
    with open(ca, "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    return grpc.secure_channel(fields["endpoint"], credentials)
