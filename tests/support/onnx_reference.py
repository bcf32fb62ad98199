"""Answers of the INT8 members and of digits_soft_int8 from this machine's onnxruntime.

Static QDQ INT8 kernels differ between CPUs (on AVX2 without VNNI, ONNX Runtime's u8s8 path
saturates where VNNI does not), so a few labels of the committed fixture, generated on another
CPU, need not hold here. tests/ensembles.rs compares Chorus with this instead: the same library
the workers load, on the same CPU. Prints JSON {name: {"label": [...], "probabilities": [...]}}.
"""
import json
import sys

import numpy as np
import onnxruntime as ort

root = sys.argv[1]
x = np.array(json.load(open(f"{root}/fixtures/digits/expected.json"))["x"], dtype=np.float32)
compressed = json.load(open(f"{root}/fixtures/digits/expected_compressed.json"))


def run(model):
    session = ort.InferenceSession(
        f"{root}/models/{model}/1/model.onnx", providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    outputs = session.run(None, {session.get_inputs()[0].name: x})
    return outputs[names.index("label")], outputs[names.index("probabilities")]


answers = {}
for name, entry in compressed["models"].items():
    # Dynamic INT8 members scale each call's input as a whole: this runs the whole set in one
    # call, as the test sends it.
    if entry["variant"] not in ("int8", "int8_dyn"):
        continue
    label, probabilities = run(name)
    answers[name] = {"label": label.tolist(), "probabilities": probabilities.tolist()}
for name, entry in compressed["ensembles"].items():
    mean = np.mean([run(member)[1] for member in entry["members"]], axis=0)
    answers[name] = {"label": mean.argmax(axis=1).tolist(), "probabilities": mean.tolist()}
print(json.dumps(answers))
