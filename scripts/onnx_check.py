#!/usr/bin/env python3
"""Checks an exported ONNX graph with the reference tools.

usage: onnx_check.py MODEL.onnx INPUT.npy EXPECTED.npy [--atol 1e-4]

1. `onnx.checker.check_model(model, full_check=True)` (structure, opset, shape inference);
2. runs MODEL on INPUT with onnxruntime (CPU) and compares its first output with EXPECTED.

Prints one JSON line (checker result, input/output names and declared shapes, output shape,
max abs diff) and exits 0 when the model is valid and the outputs agree within --atol, 1 when
they do not, 2 on bad usage. Run with the project's venv: `.venv/bin/python scripts/onnx_check.py`.
"""

import argparse
import json
import sys


def dims(value_info):
    shape = value_info.type.tensor_type.shape
    return [d.dim_param if d.dim_param else d.dim_value for d in shape.dim]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("input")
    ap.add_argument("expected")
    ap.add_argument("--atol", type=float, default=1e-4)
    args = ap.parse_args()

    import numpy as np
    import onnx
    import onnxruntime as ort

    report = {"model": args.model}
    model = onnx.load(args.model)
    try:
        onnx.checker.check_model(model, full_check=True)
        report["checker"] = "ok"
    except Exception as e:  # noqa: BLE001 - report any checker failure on one line
        report["checker"] = f"{type(e).__name__}: {e}".replace("\n", " ")
        print(json.dumps(report))
        return 1
    report["inputs"] = {v.name: dims(v) for v in model.graph.input}
    report["outputs"] = {v.name: dims(v) for v in model.graph.output}
    report["opset"] = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]

    x = np.load(args.input).astype(np.float32)
    want = np.load(args.expected).astype(np.float32)
    opts = ort.SessionOptions()
    sess = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    report["output_shape"] = list(got.shape)
    if got.shape != want.shape:
        report["error"] = f"output shape {list(got.shape)} != expected {list(want.shape)}"
        print(json.dumps(report))
        return 1
    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if got.size else 0.0
    report["max_abs_diff"] = diff
    report["atol"] = args.atol
    print(json.dumps(report))
    return 0 if diff <= args.atol else 1


if __name__ == "__main__":
    sys.exit(main())
