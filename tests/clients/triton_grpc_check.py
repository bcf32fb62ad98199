"""Drive a Chorus coordinator with Triton's own gRPC client (tritonclient.grpc, unmodified).

Usage: triton_grpc_check.py GRPC_HOST:PORT HTTP_HOST:PORT fixtures/digits/expected.json
Checks server live/ready/metadata, the repository index, model metadata, readiness and
configuration, infer with raw contents (tritonclient's way) and with typed contents (through
tritonclient's own generated stub), for every ensemble and member model, against the Python
expectations and against the REST answer to the same rows, byte for byte; degraded-answer
parameters; one stream carrying many requests, a bad one among them; and the statistics that
Triton's tools read. Exits non-zero on the first mismatch.
"""

import json
import queue
import sys

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

ENSEMBLES = ["digits_soft", "digits_hard", "digits_fusion"]
MODELS = ["logreg", "random_forest", "mlp", "svc", "gboost", "stacker"]


def expectation(expected, name):
    return expected["ensembles"].get(name) or expected["models"][name]


def score_of(want):
    return "probabilities" if "probabilities" in want else "agreement"


def rest_outputs(http, name, x, outputs):
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    requested = [httpclient.InferRequestedOutput(o, binary_data=True) for o in outputs]
    result = http.infer(name, [inp], outputs=requested)
    return {o: result.as_numpy(o) for o in outputs}


def check_infer(client, http, expected, name, x):
    want = expectation(expected, name)
    outputs = ["label", score_of(want)]
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    requested = [grpcclient.InferRequestedOutput(o) for o in outputs]
    result = client.infer(name, [inp], outputs=requested, request_id=f"{name}-raw", client_timeout=30.0)
    labels = result.as_numpy("label")
    assert labels.dtype == np.int64, labels.dtype
    assert labels.tolist() == want["label"], f"{name}: labels differ"
    np.testing.assert_allclose(result.as_numpy(outputs[1]), np.array(want[outputs[1]], dtype=np.float32), atol=1e-5)
    response = result.get_response(as_json=True)
    assert response["id"] == f"{name}-raw", response.get("id")
    if name in ENSEMBLES:
        assert response["parameters"]["degraded"]["bool_param"] is False, response["parameters"]
        assert response["parameters"]["members_used"]["string_param"], response["parameters"]
    rest = rest_outputs(http, name, x, outputs)
    for o in outputs:
        got = result.as_numpy(o)
        assert got.dtype == rest[o].dtype and got.tobytes() == rest[o].tobytes(), f"{name}.{o}: gRPC differs from REST"


DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def check_classification_and_compression(client, expected, name, x):
    """class_count over gRPC, with gzip-compressed messages both ways."""
    want = expectation(expected, name)
    if "probabilities" not in want:
        return
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    outputs = [grpcclient.InferRequestedOutput("probabilities", class_count=2)]
    result = client.infer(name, [inp], outputs=outputs, compression_algorithm="gzip")
    top = result.as_numpy("probabilities")
    assert top.shape == (x.shape[0], 2), top.shape
    for row, entries in enumerate(top):
        score, index, label = entries[0].decode().split(":")
        best = int(np.argmax(want["probabilities"][row]))
        assert int(index) == best and label == DIGITS[best], (name, row, entries)


def check_typed_contents(channel, http, name, x):
    """Typed `contents` instead of raw bytes, through tritonclient's generated stub."""
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = service_pb2.ModelInferRequest(model_name=name, id=f"{name}-typed")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.flatten().tolist())
    request.outputs.add(name="label")
    response = stub.ModelInfer(request)
    assert response.id == f"{name}-typed"
    label = np.frombuffer(response.raw_output_contents[0], dtype=np.int64)
    rest = rest_outputs(http, name, x, ["label"])["label"]
    assert label.tobytes() == rest.tobytes(), f"{name}: typed contents answer differs from REST"


def check_stream(client, expected, x):
    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    sent = 0
    for i in range(40):
        name = ENSEMBLES[i % 3]
        inp = grpcclient.InferInput("input", [1, 64], "FP32")
        inp.set_data_from_numpy(x[i : i + 1])
        client.async_stream_infer(name, [inp], request_id=f"s-{i}")
        sent += 1
    bad = grpcclient.InferInput("input", [1, 64], "FP32")
    bad.set_data_from_numpy(x[:1])
    client.async_stream_infer("no_such_model", [bad], request_id="s-bad")
    sent += 1
    seen, errors = set(), []
    for _ in range(sent):
        result, error = answers.get(timeout=60)
        if error is not None:
            errors.append(str(error))
            continue
        response = result.get_response()
        i = int(response.id.split("-")[1])
        name = ENSEMBLES[i % 3]
        assert response.model_name == name, (response.model_name, name)
        assert result.as_numpy("label").tolist() == [expectation(expected, name)["label"][i]], response.id
        seen.add(response.id)
    client.stop_stream()
    assert seen == {f"s-{i}" for i in range(40)}, sorted(seen)
    assert len(errors) == 1 and "no_such_model" in errors[0], errors


def check_config(client, http, name):
    config = client.get_model_config(name, as_json=True)["config"]
    rest = http.get_model_config(name)
    assert config["name"] == name == rest["name"], (config, rest)
    platform = "ensemble" if name in ENSEMBLES else "onnxruntime_onnx"
    assert config["platform"] == platform == rest["platform"], (config, rest)
    width = "50" if name == "stacker" else "64"
    assert int(config["max_batch_size"]) > 0 and rest["max_batch_size"] == int(config["max_batch_size"])
    assert config["input"][0]["name"] == "input" and config["input"][0]["data_type"] == "TYPE_FP32", config
    assert config["input"][0]["dims"] == [width] and rest["input"][0]["dims"] == [int(width)], (config, rest)
    if name in ENSEMBLES:
        steps = [s["model_name"] for s in config["ensemble_scheduling"]["step"]]
        rest_steps = [s["model_name"] for s in rest["ensemble_scheduling"]["step"]]
        assert steps == rest_steps and len(steps) >= 3, (steps, rest_steps)
        for step in steps:
            client.get_model_config(step)  # Triton's tools read every composing model's too


def check_statistics(client, http):
    everything = client.get_inference_statistics(as_json=True)["model_stats"]
    by_name = {(s["name"], s["version"]): s for s in everything}
    for name in ENSEMBLES + MODELS:
        assert (name, "1") in by_name, f"no statistics for {name}"
    soft = by_name[("digits_soft", "1")]
    executions = int(soft["execution_count"])
    assert executions > 0, soft
    stats = soft["inference_stats"]
    assert int(stats["success"]["count"]) == executions, soft
    assert int(stats["queue"]["count"]) == executions, soft
    assert stats["compute_input"]["count"] == stats["compute_infer"]["count"] == stats["compute_output"]["count"]
    logreg = http.get_inference_statistics("logreg")["model_stats"][0]
    assert logreg["name"] == "logreg" and logreg["version"] == "1", logreg
    assert logreg["execution_count"] > 0 and logreg["inference_stats"]["success"]["ns"] > 0, logreg


def main():
    grpc_url, http_url, expected_path = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(expected_path) as f:
        expected = json.load(f)
    x = np.array(expected["x"], dtype=np.float32)
    client = grpcclient.InferenceServerClient(url=grpc_url)
    http = httpclient.InferenceServerClient(url=http_url)

    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "chorus", metadata
    assert {"model_configuration", "statistics"} <= set(metadata["extensions"]), metadata

    index = {entry["name"]: entry for entry in client.get_model_repository_index(as_json=True)["models"]}
    for name in ENSEMBLES + MODELS:
        assert index[name]["state"] == "READY", index.get(name)

    for name in ENSEMBLES + MODELS:
        assert client.is_model_ready(name), name
        metadata = client.get_model_metadata(name, as_json=True)
        platform = "ensemble" if name in ENSEMBLES else "onnxruntime_onnx"
        assert metadata["platform"] == platform, metadata
        width = "50" if name == "stacker" else "64"
        assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", width]}], metadata
        check_config(client, http, name)
    channel = grpc.insecure_channel(grpc_url)
    for name in ENSEMBLES + [m for m in MODELS if m != "stacker"]:
        check_infer(client, http, expected, name, x)
        check_typed_contents(channel, http, name, x[:7])
        check_classification_and_compression(client, expected, name, x[:20])
    assert client.is_model_ready("logreg", model_version="1")
    check_stream(client, expected, x)
    check_statistics(client, http)

    try:
        client.get_model_metadata("no_such_model")
    except Exception as error:  # tritonclient raises InferenceServerException
        assert "no_such_model" in str(error), error
        assert error.status() == "StatusCode.NOT_FOUND", error.status()
    else:
        raise AssertionError("metadata of an unknown model must fail")
    print("tritonclient.grpc checks passed")


if __name__ == "__main__":
    main()
