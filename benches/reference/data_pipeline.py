#!/usr/bin/env python3
"""Reference data pipeline for `weft bench data`: pyarrow + Pillow + numpy.

The same work as weft's eval pipeline, done the way open_clip / torchvision do it:
read the Parquet row groups (image bytes + caption), decode with Pillow, convert to RGB,
resize the shorter side to S (bicubic), center-crop S x S, scale to [0, 1], normalize with
CLIP's mean/std, CHW float32, stack batches; tokenize captions with the same tokenizer.json
(Hugging Face `tokenizers`) when one is given. With N workers, row groups are handed to N
processes that send finished batches back as they finish (as torch's DataLoader workers do).

usage: data_pipeline.py PATHS... [--image-size 224] [--batch-size 64] [--workers N]
                        [--tokenizer FILE --context-length 32] [--json]
"""
import argparse
import glob
import io
import json
import multiprocessing as mp
import os
import time

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32).reshape(3, 1, 1)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32).reshape(3, 1, 1)


def files_of(paths):
    out = []
    for p in paths:
        if os.path.isdir(p):
            out += sorted(glob.glob(os.path.join(p, "**", "*.parquet"), recursive=True))
        elif any(c in p for c in "*?["):
            out += sorted(glob.glob(p))
        else:
            out.append(p)
    return sorted(set(out))


def columns(schema):
    names = schema.names
    if "image" in names:
        return "image", ("text" if "text" in names else "caption")
    for c in ("jpg", "png", "webp"):
        if c in names:
            return c, ("caption" if "caption" in names else "txt")
    raise SystemExit(f"unknown layout: {names}")


def transform(data, size):
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return (x - MEAN) / STD


def units_of(files):
    return [(f, g) for f in files for g in range(pq.ParquetFile(f).num_row_groups)]


_TOK = {}


def tokenizer(path, ctx):
    if path not in _TOK:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(path)
        tok.enable_truncation(ctx)
        tok.enable_padding(length=ctx, pad_id=0, pad_token="[PAD]")
        _TOK[path] = tok
    return _TOK[path]


def run_unit(args):
    """One row group to batches (the last one may be short), like one DataLoader worker task."""
    (f, g), size, batch_size, tok_path, ctx = args
    tok = tokenizer(tok_path, ctx) if tok_path else None
    pf = pq.ParquetFile(f)
    icol, tcol = columns(pf.schema_arrow)
    table = pf.read_row_group(g, columns=[icol, tcol])
    images = table.column(icol).to_pylist()
    texts = table.column(tcol).to_pylist()
    batches, imgs, caps = [], [], []

    def flush():
        batch = {"images": np.stack(imgs)}
        if tok is not None:
            batch["ids"] = np.array([e.ids for e in tok.encode_batch(caps)], dtype=np.int64)
        batches.append(batch)

    for im, t in zip(images, texts):
        data = im["bytes"] if isinstance(im, dict) else im
        if data is None or not t:
            continue
        imgs.append(transform(data, size))
        caps.append(t)
        if len(imgs) == batch_size:
            flush()
            imgs, caps = [], []
    if imgs:
        flush()
    return batches


def bench(units, workers, args):
    jobs = [(u, args.image_size, args.batch_size, args.tokenizer, args.context_length) for u in units]
    start = time.perf_counter()
    n = 0
    if workers == 1:
        for job in jobs:
            n += sum(b["images"].shape[0] for b in run_unit(job))
    else:
        # Batches stream back to the parent as each row group finishes, pickled through a pipe
        # (torch's DataLoader would use shared memory; this reference has no torch).
        with mp.Pool(workers) as pool:
            for batches in pool.imap_unordered(run_unit, jobs):
                n += sum(b["images"].shape[0] for b in batches)
    secs = time.perf_counter() - start
    return {"workers": workers, "images": n, "seconds": secs, "images_per_s": n / secs}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("paths", nargs="+")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--tokenizer")
    p.add_argument("--context-length", type=int, default=32)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    units = units_of(files_of(args.paths))
    results = [bench(units, 1, args)]
    if args.workers > 1:
        results.append(bench(units, args.workers, args))
    if args.json:
        print(json.dumps({"bench": "data-reference", "results": results}, indent=2))
    else:
        for r in results:
            print(f"workers {r['workers']:>2}: {r['images']} images in {r['seconds']:.2f} s = {r['images_per_s']:.1f} images/s")


if __name__ == "__main__":
    main()
