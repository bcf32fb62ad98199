"""Drive a Chorus coordinator with Triton's own HTTP client (tritonclient.http, unmodified).

Usage: triton_check.py HOST:PORT fixtures/digits/expected.json
Checks server live/ready/metadata, the repository index, model metadata and readiness, and
infer with JSON and with binary tensors, for ensembles and single member models, against the
Python-computed expectations. Exits non-zero on the first mismatch.
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
