"""Images: detection quality and throughput on MNIST (../shared/data/mnist_test.parquet).

Quality: a BadNets patch (3x3 white, bottom-right, one pixel in from the edge) or a blended
random pattern (alpha 0.15) is planted on a share of the source class 7 (5%, 10%, 33%),
relabelled to the target 1, with the rows chosen by a seeded generator. The images are
represented as ``screen`` does (poisonguard.pipelines.representation) and screened by the
same decision layer (EnsembleDetector, no rate, no target), in memory: the same fit and
score code the Beam job runs. Prints rate x trigger x representation -> recall, precision,
clean loss (share of clean rows flagged).

``--representations embedding`` stands in for a user who brings their own model's features
in an ``embedding`` column: a scikit-learn MLPClassifier (one hidden ReLU layer of
``--hidden`` units, seeded by ``--seed``) is trained on all the poisoned images (the
784 pixels scaled to [0, 1], with their poisoned labels), and its hidden activations are
the column, screened as ``screen`` screens one (float64, as given; the image batches'
detectors and parameters). The row also prints the model's accuracy on the clean rows
(its own training images: there is no held-out split) and its attack success rate: the
share of the other 7s (those not poisoned, which it was trained on as 7s), with the
trigger added, that it predicts as 1. Embeddings are cached in ``--cache`` by case and seed.

Throughput (``--throughput``): decode (Pillow) + representation + screen, images per
second on one core (BLAS and numba pinned to 1 thread), for 28x28 and for 224x224 images
(MNIST upscaled with Pillow's bilinear resize, encoded as PNG), at several N, with the
peak resident memory of a fresh process per N.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/bench_images.py
    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/bench_images.py --throughput
    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/bench_images.py \
        --representations embedding --rates 0,0.05,0.1,0.33 --seed 0
    python benchmarks/bench_images.py --pipeline 10000,40000     # the whole job: wall time and peak memory
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from poisonguard.detectors import DETECTORS, EnsembleDetector
from poisonguard.pipelines.images import IMAGE_DETECTOR_PARAMS, decode, image_bytes
from poisonguard.pipelines.representation import fit_representation

MNIST = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist_test.parquet")


def load_mnist(n: int | None = None):
    t = pq.read_table(MNIST)
    if n:
        t = t.slice(0, n)
    data = image_bytes(t.column("image"))
    X = np.stack([decode(d, (28, 28, 1), False)[0] for d in data])
    return X, t.column("label").to_numpy()


def add_trigger(X, trigger, seed=0, alpha=0.15):
    """Copies of the images X with the trigger (a 3x3 white patch, or the seeded pattern blended at alpha)."""
    X = X.copy()
    if trigger == "patch":
        X[:, -4:-1, -4:-1] = 255
    else:
        pattern = np.random.default_rng(seed + 1).integers(0, 256, X.shape[1:])
        X = np.round((1 - alpha) * X + alpha * pattern).astype(np.uint8)
    return X


def plant(X, y, rate, trigger, seed=0, source=7, target=1, alpha=0.15):
    """Poisoned copies of X, y and the ground-truth mask (rate: share of the source class)."""
    Xp, yp = X.copy(), y.copy()
    src = np.flatnonzero(y == source)
    pick = np.random.default_rng(seed).choice(src, int(round(rate * len(src))), replace=False)
    Xp[pick] = add_trigger(X[pick], trigger, seed, alpha)
    yp[pick] = target
    mask = np.zeros(len(y), dtype=bool)
    mask[pick] = True
    return Xp, yp, mask


def features(kind, X, y, sample_size=4096, seed=0):
    sample = np.sort(np.random.default_rng(seed).choice(len(X), min(sample_size, len(X)), replace=False))
    rep = fit_representation(kind, X.shape[1:], X[sample], y[sample], seed=seed)
    return rep.transform(X)


def user_embedding(X, y, Xp, yp, mask, trigger, rate, seed, hidden=128, epochs=30, cache="/tmp/emb-cache",
                   source=7, target=1, alpha=0.15):
    """What a user would bring: the hidden ReLU activations of their own MLP trained on all the poisoned images.

    Returns the embedding (n, hidden) and the model's clean accuracy (on the clean rows, against their labels)
    and attack success rate (the unpoisoned 7s with the trigger added, predicted as the target)."""
    import json
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    key = f"{'clean' if rate == 0 else trigger}-{rate:g}-seed{seed}-h{hidden}-e{epochs}-n{len(X)}" + (f"-a{alpha:g}" if alpha != 0.15 else "")
    path = os.path.join(cache, key)
    others = np.flatnonzero((y == source) & ~mask)
    if os.path.exists(path + ".npy") and os.path.exists(path + ".json"):
        emb, info = np.load(path + ".npy"), json.load(open(path + ".json"))
    else:
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            mlp = MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=epochs, random_state=seed).fit(
                Xp.reshape(len(Xp), -1) / 255.0, yp)
        emb = np.maximum(Xp.reshape(len(Xp), -1) / 255.0 @ mlp.coefs_[0] + mlp.intercepts_[0], 0.0)
        pred = mlp.predict(Xp.reshape(len(Xp), -1) / 255.0)
        info = {"clean_accuracy": float((pred[~mask] == yp[~mask]).mean()),
                "poison_fit": float((pred[mask] == target).mean()) if mask.any() else None,
                "train_s": time.perf_counter() - t,
                # the trigger on the 7s that were not poisoned: does the model send them to the target?
                "asr": {trg: float((mlp.predict(add_trigger(X[others], trg, seed, alpha).reshape(len(others), -1) / 255.0)
                                    == target).mean()) for trg in ("patch", "blend")}}
        os.makedirs(cache, exist_ok=True)
        np.save(path + ".npy", emb)
        json.dump(info, open(path + ".json", "w"))
    return emb, info


def screen(F, y, detectors):
    """The decision as ``screen`` takes it on an image batch (with the image batches' detector parameters)."""
    det = EnsembleDetector(detectors=[DETECTORS[d](**IMAGE_DETECTOR_PARAMS.get(d, {})) for d in detectors]).fit(F, y)
    return det.screen(det.model_, F, y).flagged


def quality(args):
    X, y = load_mnist(args.n)
    print(f"MNIST test, {len(X)} images; detectors {','.join(args.detectors)}; source 7 -> target 1; seed {args.seed}")
    print(f"{'rate':>5} {'trigger':>7} {'representation':>14} {'poison':>6} {'recall':>6} {'precision':>9} {'clean loss':>10} {'s':>6}"
          + (f" {'user acc':>8} {'ASR':>6}" if "embedding" in args.representations else ""))
    for rep in args.representations:
        for trigger in args.triggers:
            for rate in args.rates:
                Xp, yp, mask = plant(X, y, rate, trigger, seed=args.seed, alpha=args.alpha)
                t = time.perf_counter()
                extra = ""
                if rep == "embedding":  # the user's own model's features, used as given (float64), as screen does
                    F, info = user_embedding(X, y, Xp, yp, mask, trigger, rate, args.seed, args.hidden, args.epochs, args.cache,
                                              alpha=args.alpha)
                    extra = f" {info['clean_accuracy']:8.4f} {info['asr'][trigger]:6.3f}"
                    t = time.perf_counter()
                else:
                    F = features(rep, Xp, yp)
                flagged = screen(np.asarray(F, dtype=np.float64), yp, args.detectors)
                tp = int((flagged & mask).sum())
                recall = f"{tp / mask.sum():6.3f}" if mask.any() else f"{'-':>6}"
                precision = f"{tp / flagged.sum():9.3f}" if flagged.any() else f"{'-':>9}"
                print(f"{rate:5.2f} {trigger:>7} {rep:>14} {mask.sum():6d} {recall} {precision} "
                      f"{(flagged & ~mask).sum() / (~mask).sum():10.4f} {time.perf_counter() - t:6.1f}{extra}", flush=True)


def throughput_child(side: int, n: int, detectors):
    """One measurement in this (fresh) process: encode n PNGs of side x side, then time decode + represent + screen."""
    X, y = load_mnist()
    reps = (n + len(X) - 1) // len(X)
    X, y = np.concatenate([X] * reps)[:n], np.concatenate([y] * reps)[:n]
    pngs = []
    for img in X:
        im = Image.fromarray(img[..., 0])
        if side != 28:
            im = im.resize((side, side), Image.BILINEAR)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        pngs.append(buf.getvalue())
    del X
    t0 = time.perf_counter()
    rep = fit_representation("pixels", (side, side, 1))
    feats = []
    for start in range(0, n, 512):  # block by block, as the pipeline does (images.DECODE_BLOCK)
        block = np.stack([decode(d, (side, side, 1), False)[0] for d in pngs[start: start + 512]])
        feats.append(rep.transform(block))
    t1 = time.perf_counter()
    flagged = screen(np.concatenate(feats), y, detectors)
    t2 = time.perf_counter()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{side:>4}x{side:<4} {n:7d} {n / (t1 - t0):10.0f} {n / (t2 - t1):10.0f} {n / (t2 - t0):10.0f} {rss:8.0f} {int(flagged.sum()):7d}", flush=True)


def throughput(args):
    print(f"one core; detectors {','.join(args.detectors)}; representation pixels; RSS = peak resident MB of the process "
          "(holds the encoded PNGs: the pipeline itself holds one chunk)")
    print(f"{'size':>9} {'N':>7} {'decode+rep/s':>10} {'screen/s':>10} {'total/s':>10} {'RSS MB':>8} {'flagged':>7}")
    for side, ns in ((28, (2500, 10000, 40000)), (224, (1000, 4000))):
        for n in ns:
            subprocess.run([sys.executable, __file__, "--child", str(side), str(n), "--detectors", ",".join(args.detectors)], check=True)


def pipeline(args):
    """The whole ``poisonguard screen`` job at defaults on MNIST repeated to N images: wall time and peak RSS of the process."""
    import tempfile

    import pyarrow as pa
    import pyarrow.compute as pc

    table = pq.read_table(MNIST)
    print("poisonguard screen at defaults (Beam FnApiRunner, 1 worker, 1 thread); MNIST repeated to N images, new ids")
    print(f"{'N':>7} {'wall s':>8} {'images/s':>9} {'peak RSS MB':>11} {'flagged':>7}")
    for n in args.pipeline:
        with tempfile.TemporaryDirectory() as tmp:
            reps = (n + table.num_rows - 1) // table.num_rows
            parts = [table.set_column(0, "id", pc.add(table.column("id"), k * 1_000_000)) for k in range(reps)]
            path = os.path.join(tmp, "mnist.parquet")
            pq.write_table(pa.concat_tables(parts).slice(0, n), path, row_group_size=10000)
            t = time.perf_counter()
            code = subprocess.run([sys.executable, "-m", "poisonguard.pipelines.cli", "screen", path, "--out", os.path.join(tmp, "out"),
                                   "-q"], env={**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}).returncode
            wall = time.perf_counter() - t
            rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child so far
            import json

            report = json.load(open(os.path.join(tmp, "out", "report.json")))
            print(f"{n:7d} {wall:8.1f} {n / wall:9.0f} {rss:11.0f} {report['counts']['quarantine']:7d}  (exit {code})", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--detectors", type=lambda s: s.split(","), default=["spectral"])
    p.add_argument("--representations", type=lambda s: s.split(","), default=["pixels", "pca", "surrogate"])
    p.add_argument("--triggers", type=lambda s: s.split(","), default=["patch", "blend"])
    p.add_argument("--alpha", type=float, default=0.15, help="opacity of the blended pattern (default 0.15)")
    p.add_argument("--rates", type=lambda s: [float(v) for v in s.split(",")], default=[0.05, 0.10, 0.33])
    p.add_argument("--seed", type=int, default=0, help="seed of the poisoned rows and the blend pattern (default 0)")
    p.add_argument("--hidden", type=int, default=128, help="embedding: hidden units of the user's MLP (default 128)")
    p.add_argument("--epochs", type=int, default=30, help="embedding: training epochs of the user's MLP (default 30)")
    p.add_argument("--cache", default="/tmp/emb-cache", help="embedding: cache of the user's embeddings (default /tmp/emb-cache)")
    p.add_argument("--n", type=int, default=None, help="first N test images (default: all 10,000)")
    p.add_argument("--throughput", action="store_true")
    p.add_argument("--pipeline", type=lambda s: [int(v) for v in s.split(",")], default=None, metavar="N,N",
                   help="run the screen job at defaults on N images (MNIST repeated): wall time and peak memory")
    p.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        throughput_child(args.child[0], args.child[1], args.detectors)
    elif args.pipeline:
        pipeline(args)
    elif args.throughput:
        throughput(args)
    else:
        quality(args)


if __name__ == "__main__":
    main()
