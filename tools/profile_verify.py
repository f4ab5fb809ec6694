"""Where `verify_tflite`'s time goes, per network: the profile behind
results/benchmarks/bench_verify_profile*.txt.

    PYTHONPATH=. python tools/profile_verify.py SAMPLES cnn3,cnn5,cnn7 [MODELS] [ROUNDING]

MODELS: the folder of `tools/bench_verify.py --models` (its int8 files). ROUNDING: the
rounding model (default: `verify_tflite`'s default). Per network, after a warm-up:

* the wall time of `verify_tflite` on SAMPLES samples (batch 256) and the top functions
  of a cProfile of the main thread by own time (built-ins included: TensorFlow's and
  NumPy's kernels show as `{method ...}` / `{built-in ...}` lines);
* a stage breakdown on one batch of 256 run one stage at a time (no overlap): reading
  the file and building the program, the interpreter, the interval pass and the clean
  point pass op by op, and the certificate from the bounds.
"""
import cProfile, io, os, pstats, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import cactus_keras
from cactus_keras import export
from cactus_keras.export import verify as verify_module
from cactus_keras.export.integer_intervals import IntervalArithmetic
from cactus_keras.export.integer_margins import certify_propagation
from cactus_keras.export.integer_propagation import IntegerProgram
from cactus_keras.export.integer_simulation import KernelSimulation
from cactus_keras.export.model_file import load_integer_graph
from cactus_keras.int8.rounding import DEFAULT_ROUNDING

n = int(sys.argv[1])
models = sys.argv[3] if len(sys.argv) > 3 else "runs/bench_verify_models"
rounding = sys.argv[4] if len(sys.argv) > 4 else DEFAULT_ROUNDING
data = cactus_keras.data.load("fashion_mnist")
x, y = data.x_test[:n], data.y_test[:n]
package = os.path.dirname(cactus_keras.__file__)
print(f"## package {package}: verify_tflite on {n} samples, batch 256, epsilon 0.01, "
      f"rounding {rounding}, after a warm-up")


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def stages(path, xb, yb):
    """Seconds per stage on one batch, one stage at a time."""
    rows = []
    graph, t = timed(load_integer_graph, path)
    rows.append(("read file", t))
    program, t = timed(IntegerProgram, graph)
    rows.append(("build program", t))
    (interp, _), t = timed(verify_module.make_interpreter, graph.path)
    rows.append(("make interpreter", t))
    run = verify_module.InterpreterRunner(interp)
    q = verify_module.quantize_input(graph, xb)
    run(q)
    _, t = timed(run, q)
    rows.append(("interpreter (clean)", t))
    lower, upper = verify_module.input_interval(graph, xb, 0.01, (0.0, 1.0), rounding)
    q64 = q.astype(np.int64)
    for label, arithmetic, lo, hi in (
            ("interval", IntervalArithmetic(rounding), lower, upper),
            ("point", KernelSimulation("xnnpack"), q64, q64)):
        originals = [rule.__call__ for rule in program.rules]
        times = []

        def wrap(rule, fn):
            def call(*args):
                out, t = timed(fn, *args)
                times.append((f"{rule.op.index} {rule.op.name}", t))
                return out
            return call

        for rule in program.rules:
            rule.__call__ = wrap(rule, rule.__call__)
        try:
            # Rules are called as rule(...): route through the instance attribute.
            result, total = timed(_run, program, arithmetic, lo, hi)
        finally:
            for rule, fn in zip(program.rules, originals):
                rule.__call__ = fn
        rows.append((f"{label} pass", total))
        rows.extend((f"  {label} op {name}", t) for name, t in times)
        if label == "interval":
            bounds = result
    _, t = timed(certify_propagation, graph, bounds, yb)
    rows.append(("certificate from bounds", t))
    return rows


def _run(program, arithmetic, lo, hi):
    rules = program.rules

    class Rule:  # calls the (wrapped) instance attribute
        def __init__(self, rule):
            self.rule = rule
            self.__dict__.update({k: v for k, v in rule.__dict__.items() if k != "__call__"})

        def __call__(self, *args):
            return self.rule.__dict__["__call__"](*args)

    program.rules = [Rule(r) for r in rules]
    try:
        return program.run(arithmetic, lo, hi, rounding=rounding)
    finally:
        program.rules = rules


for arch in sys.argv[2].split(","):
    path = os.path.join(models, f"{arch}.int8.tflite")
    export.verify_tflite(path, x[:32], y[:32], 0.01, batch_size=256, rounding=rounding,
                         verbose=0)
    pr = cProfile.Profile()
    t = time.perf_counter()
    pr.enable()
    export.verify_tflite(path, x, y, 0.01, batch_size=256, rounding=rounding, verbose=0)
    pr.disable()
    wall = time.perf_counter() - t
    print(f"### {arch}: {wall:.2f} s wall ({1000 * wall / n:.3f} ms/sample)")
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(14)
    lines = [l for l in s.getvalue().splitlines() if l.strip() and ("(" in l or "{" in l)]
    print("\n".join(l.replace("/work/main/.venv/lib/python3.11/site-packages/", "")
                    .replace(package + "/", "cactus_keras/") for l in lines))
    rows = stages(path, x[:256], y[:256])
    rows = stages(path, x[:256], y[:256])  # warm: the second run counts
    print(f"#### {arch}: stages on one batch of 256, one at a time (seconds)")
    for name, t in rows:
        print(f"  {name:<40} {t:8.4f}")
