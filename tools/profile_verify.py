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
  point pass op by op, and the certificate from the bounds;
* the interval step of each CONV_2D / FULLY_CONNECTED on that batch split in three:
  the products (centre and radius convolutions / matrix products), the centring of the
  int8 input, and the rest (the float64 rounding tail and the copies back to NumPy).
"""
import cProfile, functools, io, os, pstats, sys, time
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

        def __getattr__(self, name):  # class attributes (e.g. narrow_inputs)
            return getattr(self.rule, name)

        def __call__(self, *args):
            return self.rule.__dict__["__call__"](*args)

    program.rules = [Rule(r) for r in rules]
    try:
        return program.run(arithmetic, lo, hi, rounding=rounding)
    finally:
        program.rules = rules


def affine_split(path, xb):
    """[(op, seconds of its interval step, {part: seconds})], warm (second of two runs):
    the products and the centring timed by wrapping the functions that compute them
    (their names in this checkout or in the one before the fused steps)."""
    from cactus_keras.export import integer_backend as backend

    graph = load_integer_graph(path)
    program = IntegerProgram(graph)
    lower, upper = verify_module.input_interval(graph, xb, 0.01, (0.0, 1.0), rounding)
    kept = program.run(IntervalArithmetic(rounding), lower, upper, keep=True).tensors
    kept[graph.entry] = (lower.reshape((len(xb),) + graph.tensors[graph.entry].shape),
                         upper.reshape((len(xb),) + graph.tensors[graph.entry].shape))
    split = {}
    originals = {}

    def timer(part, fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            split[part] = split.get(part, 0.0) + time.perf_counter() - start
            return out
        return call

    products = "_parts" if hasattr(backend, "_parts") else "_product"
    originals[products] = getattr(backend, products)
    setattr(backend, products, timer("products", originals[products]))
    if hasattr(backend, "_Steps"):  # the steps are made once and kept: time their method
        made = [backend._steps(backend._tensorflow())]
        for steps in made:
            steps.centred = timer("centring", steps.centred)
    else:
        originals["_centred"] = backend._centred
        backend._centred = timer("centring", backend._centred)
    out = []
    try:
        for rule in program.rules:
            if not hasattr(rule, "requantization") or not hasattr(rule, "linear"):
                continue
            value = kept[rule.inputs[0]]
            if getattr(rule, "narrow_inputs", False):  # as the pass hands them over: int8
                value = tuple(v.astype(np.int8) for v in value)
            for _ in range(2):
                split.clear()
                start = time.perf_counter()
                backend.affine_interval(rule, rounding, value)
                total = time.perf_counter() - start
            out.append((f"{rule.op.index} {rule.op.name}", total, dict(split)))
    finally:
        setattr(backend, products, originals[products])
        if "_centred" in originals:
            backend._centred = originals["_centred"]
        else:
            for steps in made:
                steps.centred = steps.centred.__wrapped__
    return out


for arch in sys.argv[2].split(","):
    path = os.path.join(models, f"{arch}.int8.tflite")
    for _ in range(2):  # warm: the batch shapes of the timed call, compiled where they will be
        export.verify_tflite(path, x, y, 0.01, batch_size=256, rounding=rounding, verbose=0)
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
    print(f"#### {arch}: the interval step of each affine op on one batch of 256 (seconds)")
    for name, total, split in affine_split(path, x[:256]):
        rest = total - sum(split.values())
        print(f"  {name:<20} total {total:8.4f}  products {split.get('products', 0):8.4f}  "
              f"centring {split.get('centring', 0):8.4f}  rest {rest:8.4f}")
