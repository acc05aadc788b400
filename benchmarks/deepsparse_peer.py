"""DeepSparse peer of the benchmarks: runs INSIDE the DeepSparse venv (never imports sparsejit).

    python deepsparse_peer.py MODEL.onnx THREADS BATCH REPEATS

Compiles MODEL.onnx with deepsparse.compile_model, runs a seeded random input (shape read from
the model) once to warm up, then REPEATS timed runs, and prints one JSON line:
{"median_s": ..., "times": [...], "engine": "deepsparse 1.8.0"}. Driven by common.deepsparse_time.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")


def main() -> None:
    path, threads, batch, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    import deepsparse
    import numpy as np
    import onnx

    model = onnx.load(path, load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in inits)
    dims = [d.dim_value if d.dim_value > 0 else batch for d in inp.type.tensor_type.shape.dim]
    dims[0] = batch
    x = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
    engine = deepsparse.compile_model(path, batch_size=batch, num_cores=threads)
    engine.run([x])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.run([x])
        times.append(time.perf_counter() - start)
    engine_name = f"deepsparse {deepsparse.__version__}"
    print(json.dumps({"median_s": float(np.median(times)), "times": times, "engine": engine_name}))


if __name__ == "__main__":
    main()
