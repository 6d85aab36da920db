"""Larq Compute Engine peer of scripts/peer-bench.sh: ResNet18-CIFAR as a binary network (W1A1:
every conv after the first has sign weights and sign inputs, `larq.layers.QuantConv2D` with
`ste_sign` quantizers, one-padding as LCE's optimized kernels want; the first conv and the dense
layer float, BatchNorm after each conv, which the converter folds into the binary convs' output
transform), random weights, converted with `larq_compute_engine.convert_keras_model` and timed
with LCE's interpreter, one thread, under its kernel options.

Needs TF_USE_LEGACY_KERAS=1 (larq needs Keras 2: tf-keras). Usage: python lce_worker.py OUT_DIR
"""

import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import larq as lq  # noqa: E402
import larq_compute_engine as lce  # noqa: E402
from larq_compute_engine.tflite.python.interpreter import Interpreter  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def build():
    tf.random.set_seed(11)
    k = tf.keras
    bin_kw = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                  kernel_constraint="weight_clip", use_bias=False)

    def bn(x):
        return k.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)

    def qconv(x, c, ks, s):
        return bn(lq.layers.QuantConv2D(c, ks, strides=s, padding="same", pad_values=1.0,
                                        **bin_kw)(x))

    inp = k.Input((common.SIZE, common.SIZE, 3))
    x = bn(k.layers.Conv2D(common.STAGES[0], 3, padding="same", use_bias=False)(inp))
    for cin, cout, s in common.blocks():
        y = qconv(x, cout, 3, s)
        y = qconv(y, cout, 3, 1)
        sc = qconv(x, cout, 1, s) if (s != 1 or cin != cout) else x
        x = k.layers.Add()([y, sc])
    x = k.layers.GlobalAveragePooling2D()(x)
    out = k.layers.Dense(common.CLASSES)(x)
    model = k.Model(inp, out)
    # Random BatchNorm statistics, so that the output transforms are not all identity.
    rng = np.random.default_rng(3)
    for layer in model.layers:
        if isinstance(layer, k.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([1 + 0.1 * rng.standard_normal(g.shape).astype(np.float32),
                               0.1 * rng.standard_normal(b.shape).astype(np.float32),
                               0.1 * rng.standard_normal(m.shape).astype(np.float32),
                               (1 + 0.1 * rng.random(v.shape)).astype(np.float32)])
    return model


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    flat = lce.convert_keras_model(build())
    path = os.path.join(out, "resnet18-cifar-w1a1-lce.tflite")
    with open(path, "wb") as f:
        f.write(flat)
    x = [np.random.default_rng(1).standard_normal((1, common.SIZE, common.SIZE, 3))
         .astype(np.float32)]
    v = f"Larq Compute Engine {lce.__version__}"
    engines = {}
    for key, opts, what in [
        ("lce-default", {}, "default options"),
        ("lce-indirect-bgemm", {"use_indirect_bgemm": True}, "use_indirect_bgemm=True"),
        ("lce-xnnpack", {"use_xnnpack": True}, "use_xnnpack=True"),
        ("lce-indirect-xnnpack", {"use_indirect_bgemm": True, "use_xnnpack": True},
         "use_indirect_bgemm=True, use_xnnpack=True"),
    ]:
        interp = Interpreter(flat, num_threads=1, **opts).interpreter
        engines[key] = {"run": (lambda i: lambda: i.predict(x))(interp),
                        "precision": "W1A1, float first conv",
                        "label": f"{v}, {what}", "bytes": len(flat)}
    common.serve(engines)


if __name__ == "__main__":
    main()
