"""Drive a Chorus coordinator with Triton's own HTTP client (tritonclient.http, unmodified).

Usage: triton_check.py HOST:PORT fixtures/digits/expected.json
Checks server live/ready/metadata, the repository index, model metadata and readiness, and
infer with JSON and with binary tensors, for ensembles and single member models, against the
Python-computed expectations; compressed requests and responses (gzip, deflate); and the
classification extension (`class_count`) with the models' class names. Exits non-zero on the
first mismatch.
"""

import json
import sys

import numpy as np
import tritonclient.http as httpclient

ENSEMBLES = ["digits_soft", "digits_hard", "digits_fusion"]
MODELS = ["logreg", "random_forest", "mlp", "svc", "gboost", "stacker"]


def expectation(expected, name):
    return expected["ensembles"].get(name) or expected["models"][name]


def check_infer(client, expected, name, x, binary):
    want = expectation(expected, name)
    score = "probabilities" if "probabilities" in want else "agreement"
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outputs = [
        httpclient.InferRequestedOutput("label", binary_data=binary),
        httpclient.InferRequestedOutput(score, binary_data=binary),
    ]
    result = client.infer(name, [inp], outputs=outputs, request_id=f"{name}-{binary}")
    labels = result.as_numpy("label")
    assert labels.dtype == np.int64, labels.dtype
    assert labels.tolist() == want["label"], f"{name} binary={binary}: labels differ"
    scores = result.as_numpy(score)
    np.testing.assert_allclose(scores, np.array(want[score], dtype=np.float32), atol=1e-5)
    response = result.get_response()
    assert response["id"] == f"{name}-{binary}", response.get("id")
    if name in ENSEMBLES:
        assert response["parameters"]["degraded"] is False, response["parameters"]


def check_default_outputs(client, name, x):
    """No outputs requested: every output comes back (tritonclient asks for binary)."""
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(name, [inp])
    names = {o["name"] for o in result.get_response()["outputs"]}
    assert "label" in names, names


DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def check_compression(client, expected, name, x):
    """Compressed request bodies and responses give the same answer as plain ones."""
    want = expectation(expected, name)["label"]
    for algorithm in ("gzip", "deflate"):
        for binary in (False, True):
            inp = httpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            outputs = [httpclient.InferRequestedOutput("label", binary_data=binary)]
            result = client.infer(name, [inp], outputs=outputs,
                                  request_compression_algorithm=algorithm,
                                  response_compression_algorithm=algorithm)
            assert result.as_numpy("label").tolist() == want, f"{name} {algorithm} binary={binary}"


def check_classification(client, expected, name, x):
    """class_count=3: the top three classes of each row, as b"<score>:<index>:<label>"."""
    want = expectation(expected, name)
    score = "probabilities" if "probabilities" in want else "agreement"
    k = 3 if score == "probabilities" else 1
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    for binary in (False, True):
        outputs = [httpclient.InferRequestedOutput(score, binary_data=binary, class_count=k)]
        top = client.infer(name, [inp], outputs=outputs).as_numpy(score)
        assert top.shape == (x.shape[0], k), top.shape
        for row, entries in enumerate(top):
            fields = [e.decode() if isinstance(e, bytes) else e for e in entries]
            parsed = [f.split(":") for f in fields]
            scores = [float(p[0]) for p in parsed]
            assert scores == sorted(scores, reverse=True), fields
            if score == "probabilities":
                probs = want["probabilities"][row]
                best = int(np.argmax(probs))
                assert int(parsed[0][1]) == best and parsed[0][2] == DIGITS[best], (name, row, fields)
                assert abs(scores[0] - probs[best]) < 1e-5, (scores[0], probs[best])


def main():
    url, expected_path = sys.argv[1], sys.argv[2]
    with open(expected_path) as f:
        expected = json.load(f)
    x = np.array(expected["x"], dtype=np.float32)
    client = httpclient.InferenceServerClient(url=url)

    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "chorus", metadata
    assert "binary_tensor_data" in metadata["extensions"], metadata

    index = {entry["name"]: entry for entry in client.get_model_repository_index()}
    for name in ENSEMBLES + MODELS:
        assert index[name]["state"] == "READY", index.get(name)

    for name in ENSEMBLES + MODELS:
        assert client.is_model_ready(name), name
        metadata = client.get_model_metadata(name)
        platform = "ensemble" if name in ENSEMBLES else "onnxruntime_onnx"
        assert metadata["platform"] == platform, metadata
        width = 50 if name == "stacker" else 64
        assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, width]}], metadata
    for name in ENSEMBLES + [m for m in MODELS if m != "stacker"]:
        for binary in (False, True):
            check_infer(client, expected, name, x, binary)
        check_default_outputs(client, name, x[:3])
        check_compression(client, expected, name, x)
        check_classification(client, expected, name, x[:20])
    assert client.is_model_ready("logreg", model_version="1")

    try:
        client.get_model_metadata("no_such_model")
    except Exception as error:  # tritonclient raises InferenceServerException
        assert "no_such_model" in str(error), error
    else:
        raise AssertionError("metadata of an unknown model must fail")
    print("tritonclient checks passed")


if __name__ == "__main__":
    main()
