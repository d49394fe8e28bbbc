"""PyTorch reference of the tiny-bench model and training step (../shared/bench/tiny-bench.json,
"tiny-clip-v1"), for `benches/train.sh`: the same shapes as configs/tiny-bench.toml and
configs/tiny-bench-albef.toml, timed the same way as `weft bench train` (median step time of N
steps after W untimed ones, on one fixed synthetic batch).

    python3 benches/reference/train_step.py --variant itc --steps 10 --threads 2
    python3 benches/reference/train_step.py --variant albef --steps 10 --threads 2

On a GPU, the shape of configs/clip-vit-b16.toml (what `weft doctor` times there):

    python3 benches/reference/train_step.py --shape clip-vit-b16 --device cuda --batch 256
    python3 benches/reference/train_step.py --shape clip-vit-b16 --device cuda --precision bf16

Differences from tiny-bench.json are only where it leaves a choice; `--mlm-masked-only`
computes the MLM logits at the masked positions only (what weft does) instead of at every
position (what tiny-bench.json specifies).
"""

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

SPEC = dict(batch=64, size=64, patch=8, width=192, depth=4, heads=3, mlp=4, vocab=8192,
            context=32, embed=128, fusion_depth=2, eos=2, mask_token=1)
# configs/clip-vit-b16.toml: ViT-B/16 image tower, a 12-layer 512-wide text tower, ITC only.
# The towers differ in width (v*/t* keys; the tiny-bench shape uses `width` for both).
CLIP_B16 = dict(batch=256, size=224, patch=16, vwidth=768, vdepth=12, vheads=12, twidth=512,
                tdepth=12, theads=8, mlp=4, vocab=49408, context=77, embed=512, eos=2,
                mask_token=1, fusion_depth=0)
SHAPES = {"tiny-bench": SPEC, "clip-vit-b16": CLIP_B16}


def tower(s, prefix):
    """Width, depth and heads of the vision ("v") or text ("t") tower."""
    return tuple(s.get(prefix + k, s.get(k)) for k in ("width", "depth", "heads"))


def init_weights(m):
    if isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)


class Attention(nn.Module):
    def __init__(self, w, heads, cross=False):
        super().__init__()
        self.heads = heads
        self.cross = cross
        if cross:
            self.q = nn.Linear(w, w)
            self.kv = nn.Linear(w, 2 * w)
        else:
            self.qkv = nn.Linear(w, 3 * w)
        self.out = nn.Linear(w, w)

    def forward(self, x, ctx=None):
        b, l, w = x.shape
        h = self.heads
        if self.cross:
            q = self.q(x)
            k, v = self.kv(ctx).chunk(2, dim=-1)
        else:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        split = lambda t: t.reshape(b, t.shape[1], h, w // h).transpose(1, 2)
        o = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.out(o.transpose(1, 2).reshape(b, l, w))


class Mlp(nn.Module):
    def __init__(self, w, r):
        super().__init__()
        self.fc1 = nn.Linear(w, w * r)
        self.fc2 = nn.Linear(w * r, w)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, w, heads, r, cross=False):
        super().__init__()
        self.ln1 = nn.LayerNorm(w, eps=1e-5)
        self.attn = Attention(w, heads)
        self.cross = cross
        if cross:
            self.ln_c = nn.LayerNorm(w, eps=1e-5)
            self.cattn = Attention(w, heads, cross=True)
        self.ln2 = nn.LayerNorm(w, eps=1e-5)
        self.mlp = Mlp(w, r)

    def forward(self, x, ctx=None):
        x = x + self.attn(self.ln1(x))
        if self.cross:
            x = x + self.cattn(self.ln_c(x), ctx)
        return x + self.mlp(self.ln2(x))


class Vit(nn.Module):
    def __init__(self, s):
        super().__init__()
        w, depth, heads = tower(s, "v")
        n = (s["size"] // s["patch"]) ** 2
        self.patch = nn.Conv2d(3, w, s["patch"], s["patch"], bias=True)
        self.cls = nn.Parameter(torch.randn(1, 1, w) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, n + 1, w) * 0.02)
        self.blocks = nn.ModuleList(Block(w, heads, s["mlp"]) for _ in range(depth))
        self.ln = nn.LayerNorm(w, eps=1e-5)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        for b in self.blocks:
            x = b(x)
        return self.ln(x)


class TextEncoder(nn.Module):
    def __init__(self, s):
        super().__init__()
        w, depth, heads = tower(s, "t")
        self.tok = nn.Embedding(s["vocab"], w)
        self.pos = nn.Parameter(torch.randn(1, s["context"], w) * 0.02)
        self.blocks = nn.ModuleList(Block(w, heads, s["mlp"]) for _ in range(depth))
        self.ln = nn.LayerNorm(w, eps=1e-5)

    def forward(self, ids):
        x = self.tok(ids) + self.pos
        for b in self.blocks:
            x = b(x)
        return self.ln(x)


class Model(nn.Module):
    def __init__(self, s, albef):
        super().__init__()
        w = s.get("width")
        self.vision = Vit(s)
        self.text = TextEncoder(s)
        self.img_proj = nn.Linear(tower(s, "v")[0], s["embed"], bias=False)
        self.txt_proj = nn.Linear(tower(s, "t")[0], s["embed"], bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.albef = albef
        if albef:
            self.fusion = nn.ModuleList(Block(w, s["heads"], s["mlp"], cross=True)
                                        for _ in range(s["fusion_depth"]))
            self.fusion_ln = nn.LayerNorm(w, eps=1e-5)
            self.itm = nn.Linear(w, 2)
            self.mlm = nn.Sequential(nn.Linear(w, w), nn.GELU(), nn.LayerNorm(w, eps=1e-5),
                                     nn.Linear(w, s["vocab"]))
        self.apply(init_weights)

    def fuse(self, t, img):
        for b in self.fusion:
            t = b(t, img)
        return self.fusion_ln(t)

    def forward(self, images, ids, mlm_ids, mlm_mask, masked_only):
        img = self.vision(images)
        txt = self.text(ids)
        fi = F.normalize(self.img_proj(img[:, 0]), dim=-1)
        ft = F.normalize(self.txt_proj(txt[:, -1]), dim=-1)
        logits = self.logit_scale.exp() * fi @ ft.t()
        labels = torch.arange(len(ids), device=ids.device)
        itc = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
        if not self.albef:
            return itc, dict(itc=itc.item())
        with torch.no_grad():
            sim = (fi @ ft.t()).clone()
            sim.fill_diagonal_(-float("inf"))
            neg_txt = sim.argmax(1)  # for each image, its hardest text
            neg_img = sim.argmax(0)  # for each text, its hardest image
        t_all = torch.cat([txt, txt, txt[neg_txt]])
        i_all = torch.cat([img, img[neg_img], img])
        fused = self.fuse(t_all, i_all)
        itm_logits = self.itm(fused[:, -1])
        itm_labels = torch.cat([torch.ones(len(ids)), torch.zeros(2 * len(ids))]).long()
        itm_labels = itm_labels.to(ids.device)
        itm = F.cross_entropy(itm_logits, itm_labels)
        h = self.fuse(self.text(mlm_ids), img)
        targets = ids[mlm_mask]
        if masked_only:
            mlm = F.cross_entropy(self.mlm(h[mlm_mask]), targets)
        else:
            out = self.mlm(h)
            mlm = F.cross_entropy(out[mlm_mask], targets)
        total = itc + itm + mlm
        return total, dict(itc=itc.item(), itm=itm.item(), mlm=mlm.item())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--variant", choices=["itc", "albef"], default="itc")
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny-bench")
    p.add_argument("--batch", type=int, help="default: the shape's")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", choices=["f32", "bf16"], default="f32",
                   help="bf16: torch.autocast(bfloat16) around the forward, f32 master weights")
    p.add_argument("--grad-clip", type=float, default=0.0,
                   help="clip the global gradient norm (weft's configs use 1.0)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mlm-masked-only", action="store_true")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    s = dict(SHAPES[a.shape])
    if a.batch:
        s["batch"] = a.batch
    if a.variant == "albef" and not s.get("width"):
        p.error("--variant albef needs the tiny-bench shape")
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    # f32 means f32: no TF32 tensor cores behind PyTorch's back (weft's f32 is plain f32).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = Model(s, a.variant == "albef").to(dev)
    decay = [q for q in model.parameters() if q.ndim >= 2]
    no_decay = [q for q in model.parameters() if q.ndim < 2]
    opt = torch.optim.AdamW([dict(params=decay, weight_decay=0.1),
                             dict(params=no_decay, weight_decay=0.0)],
                            lr=5e-4, betas=(0.9, 0.999), eps=1e-8)
    b, l = s["batch"], s["context"]
    images = torch.randn(b, 3, s["size"], s["size"]).to(dev)
    ids = torch.randint(7, s["vocab"], (b, l))
    ids[:, -1] = s["eos"]
    mlm_mask = torch.zeros(b, l, dtype=torch.bool)
    mlm_mask[:, : l - 1] = torch.rand(b, l - 1) < 0.15
    mlm_ids = ids.masked_fill(mlm_mask, s["mask_token"])
    ids, mlm_ids, mlm_mask = ids.to(dev), mlm_ids.to(dev), mlm_mask.to(dev)
    times = []
    loss = None
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    for i in range(a.warmup + a.steps):
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            loss, _ = model(images, ids, mlm_ids, mlm_mask, a.mlm_masked_only)
        loss.backward()
        if a.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        opt.step()
        sync()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    params = sum(q.numel() for q in model.parameters())
    r = dict(variant=a.variant, steps=a.steps, batch=b, step_time_median_s=med,
             step_time_mean_s=statistics.mean(times), samples_per_s=b / med, params=params,
             last_loss=loss.item(), threads=torch.get_num_threads(), torch=torch.__version__,
             mlm_masked_only=a.mlm_masked_only, shape=a.shape, device=str(dev),
             precision=a.precision)
    if cuda:
        r["gpu"] = torch.cuda.get_device_name(dev)
        r["peak_memory_allocated_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
        r["peak_memory_reserved_gib"] = torch.cuda.max_memory_reserved(dev) / 2**30
    if a.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"{params} params, batch {b}: step {1e3 * med:.1f} ms median "
              f"({1e3 * r['step_time_mean_s']:.1f} ms mean) over {a.steps} steps, "
              f"{r['samples_per_s']:.1f} samples/s (threads: {r['threads']}, torch {torch.__version__})")


if __name__ == "__main__":
    main()
