"""cProfile of `verify_tflite` per network (main thread; the point simulation runs in a
second thread): the profile behind results/benchmarks/bench_verify_profile.txt.

    PYTHONPATH=. python tools/profile_verify.py SAMPLES cnn3,cnn5,cnn7 [MODELS]

MODELS: the folder of `tools/bench_verify.py --models` (its int8 files).
"""
import cProfile, pstats, sys, os, time, io
os.environ["TF_CPP_MIN_LOG_LEVEL"]="3"
import numpy as np, cactus_keras
from cactus_keras import export
n = int(sys.argv[1])
models = sys.argv[3] if len(sys.argv) > 3 else "runs/bench_verify_models"
data = cactus_keras.data.load("fashion_mnist")
x, y = data.x_test[:n], data.y_test[:n]
print(f"## package {os.path.dirname(cactus_keras.__file__)}: verify_tflite on {n} samples, batch 256, floor_ceil, after a warm-up; top functions by own time (main thread)")
for arch in sys.argv[2].split(","):
    path=os.path.join(models, f"{arch}.int8.tflite")
    export.verify_tflite(path, x[:32], y[:32], 0.01, batch_size=256, verbose=0)
    pr = cProfile.Profile()
    t=time.perf_counter()
    pr.enable()
    export.verify_tflite(path, x, y, 0.01, batch_size=256, verbose=0)
    pr.disable()
    print(f"### {arch}: {time.perf_counter()-t:.2f} s wall")
    s=io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(10)
    lines=[l for l in s.getvalue().splitlines() if l.strip() and ("(" in l or "ncalls" in l)]
    print("\n".join(l.replace("/work/main/.venv/lib/python3.11/site-packages/","").replace("/tmp/i24/before/","").replace("/tmp/i24/after/","") for l in lines))
