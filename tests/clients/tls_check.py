"""Triton's own Python clients with ssl=True against a Chorus coordinator serving TLS.

usage: tls_check.py HTTP_ADDR GRPC_ADDR CA [CLIENT_CERT CLIENT_KEY]

With a client certificate it checks mutual TLS: the clients connect with it, and a client
without it is refused on both ports. Prints `tls checks passed` at the end.
"""

import socket
import ssl
import sys

import gevent.ssl
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

http_addr, grpc_addr, ca = sys.argv[1:4]
identity = sys.argv[4:6] if len(sys.argv) >= 6 else None
row = np.full((1, 64), 0.5, dtype=np.float32)


def http_client(with_identity):
    options = {"ca_certs": ca}
    if with_identity:
        options.update(certfile=identity[0], keyfile=identity[1])
    return httpclient.InferenceServerClient(
        url=http_addr,
        ssl=True,
        ssl_options=options,
        ssl_context_factory=gevent.ssl.create_default_context,
    )


def grpc_client(with_identity):
    kwargs = {"root_certificates": ca}
    if with_identity:
        kwargs.update(certificate_chain=identity[0], private_key=identity[1])
    return grpcclient.InferenceServerClient(url=grpc_addr, ssl=True, **kwargs)


def infer_http(client):
    inp = httpclient.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(row, binary_data=True)
    result = client.infer("digits_soft", [inp])
    return result.as_numpy("label")


def infer_grpc(client):
    inp = grpcclient.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(row)
    result = client.infer("digits_soft", [inp])
    return result.as_numpy("label")


with_identity = identity is not None
http = http_client(with_identity)
assert http.is_server_live() and http.is_server_ready()
label_http = infer_http(http)
grpc = grpc_client(with_identity)
assert grpc.is_server_live() and grpc.is_server_ready()
label_grpc = infer_grpc(grpc)
assert list(label_http) == list(label_grpc), (label_http, label_grpc)
print("https and grpcs answer", label_http)

# Plain HTTP on the TLS port is refused (the handshake fails, nothing is served in clear).
host, port = http_addr.rsplit(":", 1)
with socket.create_connection((host, int(port)), timeout=5) as s:
    s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    s.settimeout(5)
    try:
        reply = s.recv(100)
    except (ConnectionResetError, socket.timeout):
        reply = b""
    assert not reply.startswith(b"HTTP/1.1 200"), reply

if with_identity:
    # Without a client certificate both ports refuse.
    refused = 0
    try:
        infer_http(http_client(False))
    except Exception as e:  # the handshake or the first read fails
        refused += 1
        print("https without a client certificate refused:", type(e).__name__)
    try:
        infer_grpc(grpc_client(False))
    except Exception as e:
        refused += 1
        print("grpcs without a client certificate refused:", type(e).__name__)
    assert refused == 2, refused

print("tls checks passed")
