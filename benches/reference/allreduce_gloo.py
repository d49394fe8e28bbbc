"""torch.distributed Gloo all-reduce on 127.0.0.1: the reference for `weft bench allreduce`.

Prints, per size, the time of one all-reduce (sum, float32) and the algorithm and bus bandwidth
as nccl-tests defines them: algbw = bytes / time, busbw = algbw * 2 (n - 1) / n.

    python3 benches/reference/allreduce_gloo.py --nproc 2 --sizes 1M,16M,64M,256M [--json]
"""

import argparse
import json
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def parse_size(s: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    s = s.strip().upper().rstrip("B")
    if s and s[-1] in units:
        return int(float(s[:-1]) * units[s[-1]])
    return int(s)


def worker(rank: int, world: int, port: int, sizes, iters: int, warmup: int, out):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    rows = []
    for size in sizes:
        buf = torch.ones(size // 4, dtype=torch.float32)
        n = iters if size < (64 << 20) else max(3, iters // 3)
        for _ in range(warmup):
            dist.all_reduce(buf)
        dist.barrier()
        t = time.perf_counter()
        for _ in range(n):
            dist.all_reduce(buf)
        dt = (time.perf_counter() - t) / n
        algbw = size / dt / 1e9
        rows.append({"bytes": size, "time_s": dt, "algbw_gbps": algbw,
                     "busbw_gbps": algbw * 2 * (world - 1) / world})
    if rank == 0:
        out.put(rows)
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--sizes", default="1M,16M,64M,256M")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    sizes = [parse_size(s) for s in a.sizes.split(",")]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, a.nproc, port, sizes, a.iters, a.warmup, q))
             for r in range(a.nproc)]
    for pr in procs:
        pr.start()
    rows = q.get(timeout=600)
    for pr in procs:
        pr.join(timeout=60)
    if a.json:
        print(json.dumps({"backend": "gloo", "nproc": a.nproc, "torch": torch.__version__, "rows": rows}))
    else:
        print(f"torch {torch.__version__} gloo, {a.nproc} processes on 127.0.0.1")
        for r in rows:
            print(f"{r['bytes'] >> 20:>6} MB  {1e3 * r['time_s']:9.2f} ms  "
                  f"algbw {r['algbw_gbps']:6.2f} GB/s  busbw {r['busbw_gbps']:6.2f} GB/s")


if __name__ == "__main__":
    main()
