"""ONNX Runtime peer of scripts/peer-bench.sh: ResNet18-CIFAR as an ONNX graph with random
weights (BatchNorm folded into the conv biases, as ONNX Runtime's optimizer would fold it anyway),
timed in fp32 and after static int8 quantization (U8S8: uint8 activations, int8 weights,
per-channel, QDQ format, MinMax calibration on a few random inputs) -- the configuration that is
fastest on AVX2 (docs/PEERS.md in shared/: S8S8 is slower).

Usage: python ort_worker.py OUT_DIR   (then the protocol of common.py on stdin/stdout)
"""

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def build(path, seed=11):
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    n = [0]

    def name(p):
        n[0] += 1
        return f"{p}{n[0]}"

    def conv(x, cin, cout, k, s, relu):
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        b = (0.1 * rng.standard_normal(cout)).astype(np.float32)
        wn, bn, y = name("w"), name("b"), name("conv")
        inits.extend([numpy_helper.from_array(w, wn), numpy_helper.from_array(b, bn)])
        p = k // 2
        nodes.append(helper.make_node("Conv", [x, wn, bn], [y], kernel_shape=[k, k],
                                      strides=[s, s], pads=[p, p, p, p]))
        return relu_(y) if relu else y

    def relu_(x):
        y = name("relu")
        nodes.append(helper.make_node("Relu", [x], [y]))
        return y

    x = conv("input", 3, common.STAGES[0], 3, 1, True)
    for cin, cout, s in common.blocks():
        y = conv(x, cin, cout, 3, s, True)
        y = conv(y, cout, cout, 3, 1, False)
        sc = conv(x, cin, cout, 1, s, False) if (s != 1 or cin != cout) else x
        a = name("add")
        nodes.append(helper.make_node("Add", [y, sc], [a]))
        x = relu_(a)
    g, f = name("gap"), name("flat")
    nodes.append(helper.make_node("GlobalAveragePool", [x], [g]))
    nodes.append(helper.make_node("Flatten", [g], [f], axis=1))
    w = (rng.standard_normal((common.CLASSES, common.STAGES[-1])) * 0.05).astype(np.float32)
    inits += [numpy_helper.from_array(w, "fc_w"),
              numpy_helper.from_array(np.zeros(common.CLASSES, np.float32), "fc_b")]
    nodes.append(helper.make_node("Gemm", [f, "fc_w", "fc_b"], ["logits"], transB=1))
    graph = helper.make_graph(
        nodes, "resnet18_cifar", [helper.make_tensor_value_info(
            "input", TensorProto.FLOAT, [1, 3, common.SIZE, common.SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, common.CLASSES])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


class Calib(CalibrationDataReader):
    def __init__(self, n=8, seed=5):
        rng = np.random.default_rng(seed)
        self.data = iter([{"input": rng.standard_normal((1, 3, common.SIZE, common.SIZE))
                           .astype(np.float32)} for _ in range(n)])

    def get_next(self):
        return next(self.data, None)


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    fp32 = os.path.join(out, "resnet18-cifar-fp32.onnx")
    pre = os.path.join(out, "resnet18-cifar-fp32-pre.onnx")
    int8 = os.path.join(out, "resnet18-cifar-int8-u8s8-qdq.onnx")
    build(fp32)
    quant_pre_process(fp32, pre)
    quantize_static(pre, int8, Calib(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    x = {"input": np.random.default_rng(1).standard_normal((1, 3, common.SIZE, common.SIZE))
         .astype(np.float32)}
    s32, s8 = session(fp32), session(int8)
    v = f"ONNX Runtime {ort.__version__}"
    common.serve({
        "ort-fp32": {"run": lambda: s32.run(None, x), "precision": "fp32",
                     "label": f"{v}, fp32", "bytes": os.path.getsize(fp32)},
        "ort-int8": {"run": lambda: s8.run(None, x), "precision": "W8A8",
                     "label": f"{v}, static int8 U8S8 per-channel QDQ, MinMax",
                     "bytes": os.path.getsize(int8)},
    })


if __name__ == "__main__":
    main()
