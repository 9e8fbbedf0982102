"""Issue 5's levers, each measured against a baseline in one process: which of them pay on this machine.

The model is the fast recipe's network (params.yaml `archs.fast`); a training step is the pipeline's batch
transform + forward + label-smoothed loss + backward + AdamW step on in-memory uint8 Fashion-MNIST, like the
learner's. Variants run in alternating rounds (baseline, variant, baseline, ...) so drift hits them alike; each
figure is the median of `--rounds`. Measured:
  - memory format: channels-last (the pipeline's default) vs contiguous NCHW;
  - bfloat16 autocast vs fp32;
  - torch.compile (inductor): compile seconds, steady images/s, and the epochs it needs to pay back its compile time;
  - intra-op threads: 1, the default (one per core), and 2x cores (oversubscribed);
  - training batch size: 64 and 256 against 128 (images/s only; accuracy per epoch is another matter);
  - evaluation batch size (inference images/s, no grad): 128 (the default), 256, 4096 against 1024, for the fast
    net and ResNet34.
Writes bench/results/levers.{json,md}.
Run:    python -m bench.levers [--batches 20] [--rounds 3] [--skip-compile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# a fresh inductor cache: the compile time reported is a cold compile's, as a new machine or a changed model pays
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="levers-inductor-"))

import torch

from bench.fast_recipe import entry_spec
from bench.machine import add_paths, machine, out_dir, write_json, write_text
from pipeline.data import array_formats
from pipeline.data.loaders import BatchTfm, to_tensor
from pipeline.inspect.tables import markdown_table
from pipeline.learn import archs

MEAN, STD = [0.286], [0.353]  # Fashion-MNIST's pixel statistics (throughput does not depend on them)
EPOCH_IMAGES = 54_000  # one epoch of the fast recipe: the training split of Fashion-MNIST less 10 % validation


def make_model(spec, channels_last: bool) -> torch.nn.Module:
    model = archs.build_model(archs.resolve(spec.arch), 1, 10, 28, model_kwargs=spec.model_kwargs)[0]
    return model.to(memory_format=torch.channels_last) if channels_last else model


class Step:
    """A training step of one configuration, with its own model and optimiser."""

    def __init__(self, spec, x, y, bs, channels_last=True, dtype=None, compile_=False):
        torch.manual_seed(0)
        self.model = make_model(spec, channels_last)
        self.fwd = torch.compile(self.model) if compile_ else self.model
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.01)
        self.loss = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
        self.tfm = BatchTfm(28, MEAN, STD, True, True, 2, channels_last)
        self.x, self.y, self.bs, self.dtype = x, y, bs, dtype

    def __call__(self, i: int) -> None:
        j = slice(i * self.bs, (i + 1) * self.bs)
        xb, yb = self.tfm((self.x[j], self.y[j]))
        with torch.autocast("cpu", dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            loss = self.loss(self.fwd(xb), yb)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def img_s(self, batches: int, threads: int | None = None) -> float:
        before = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            self.model.train()
            t = time.perf_counter()
            for i in range(batches):
                self(i)
            return batches * self.bs / (time.perf_counter() - t)
        finally:
            torch.set_num_threads(before)


def alternate(base, variant, rounds: int) -> tuple[list, list]:
    """Rounds of (baseline, variant) callables returning img/s."""
    a, b = [], []
    for _ in range(rounds):
        a.append(base())
        b.append(variant())
    return a, b


def main(argv: list[str] | None = None) -> None:
    ap = add_paths(argparse.ArgumentParser(prog="python -m bench.levers"))
    ap.add_argument("--batches", type=int, default=20, help="training batches per timed run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bs", type=int, default=128)
    ap.add_argument("--eval-images", type=int, default=4096)
    ap.add_argument("--skip-compile", action="store_true")
    args = ap.parse_args(argv)
    spec = entry_spec("fast", args.root / "params.yaml")
    raw = array_formats.read_mnist_like("fashion-mnist", None, download=False)
    n = max(
        args.batches * args.bs, args.eval_images
    )  # training runs read the first batches, evaluation the first images
    x, y = to_tensor(raw.train_x[:n]), torch.from_numpy(raw.train_y[:n].astype("int64"))
    cores = os.cpu_count() or 1
    rows = []

    def record(lever, base_name, variant_name, a, b, note=""):
        ma, mb = statistics.median(a), statistics.median(b)
        rows.append(
            {
                "lever": lever,
                "baseline": base_name,
                "variant": variant_name,
                "baseline_img_s": a,
                "variant_img_s": b,
                "ratio": mb / ma,
                "note": note,
            }
        )
        print(
            f"{lever}: {base_name} {ma:.0f} img/s, {variant_name} {mb:.0f} img/s -> x{mb / ma:.2f} {note}", flush=True
        )

    base = Step(spec, x, y, args.bs)
    base.img_s(3)  # warm-up

    nchw = Step(spec, x, y, args.bs, channels_last=False)
    nchw.img_s(3)
    a, b = alternate(lambda: base.img_s(args.batches), lambda: nchw.img_s(args.batches), args.rounds)
    record("memory format", "channels-last", "NCHW", a, b)

    bf16 = Step(spec, x, y, args.bs, dtype=torch.bfloat16)
    bf16.img_s(1)
    few = max(2, args.batches // 10)  # bf16 is very slow without AVX512-BF16/AMX
    a, b = alternate(lambda: base.img_s(args.batches), lambda: bf16.img_s(few), args.rounds)
    record("precision", "fp32", "bf16 autocast", a, b, f"(bf16 timed on {few} batches)")

    for threads in (1, 2 * cores):
        a, b = alternate(lambda: base.img_s(args.batches), lambda t=threads: base.img_s(args.batches, t), args.rounds)
        record("threads", f"{torch.get_num_threads()} (default)", str(threads), a, b)

    if not args.skip_compile:
        comp = Step(spec, x, y, args.bs, compile_=True)
        t = time.perf_counter()
        comp.img_s(2)  # first calls compile forward and backward
        compile_s = time.perf_counter() - t
        a, b = alternate(lambda: base.img_s(args.batches), lambda: comp.img_s(args.batches), args.rounds)
        per_epoch_saved = EPOCH_IMAGES / statistics.median(a) - EPOCH_IMAGES / statistics.median(b)
        payback = compile_s / per_epoch_saved if per_epoch_saved > 0 else float("inf")
        record(
            "torch.compile",
            "eager",
            "inductor",
            a,
            b,
            f"(compile {compile_s:.0f} s; pays back after {payback:.1f} epochs of 54 000 images)",
        )
        rows[-1]["compile_s"] = compile_s

    for bs in (64, 256):
        other = Step(spec, x, y, bs)
        other.img_s(2)
        n_b = max(1, args.batches * args.bs // bs)
        a, b = alternate(lambda: base.img_s(args.batches), lambda o=other, k=n_b: o.img_s(k), args.rounds)
        record("training batch size", f"{args.bs} (default)", str(bs), a, b)

    def infer(model, size, bs: int) -> float:
        tfm = BatchTfm(size, MEAN, STD, False, channels_last=True)
        xe = x[: args.eval_images]
        t = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(xe), bs):
                model(tfm((xe[i : i + bs],))[0])
        return len(xe) / (time.perf_counter() - t)

    heavy = archs.build_model(archs.resolve("resnet34"), 1, 10, 28)[0].to(memory_format=torch.channels_last).eval()
    for model, size, name in ((base.model.eval(), 28, "fast"), (heavy, 32, "resnet34 @ 32")):
        infer(model, size, 1024)
        for bs in (128, 256, 4096):
            a, b = alternate(
                lambda m=model, s=size: infer(m, s, 1024), lambda m=model, s=size, b_=bs: infer(m, s, b_), args.rounds
            )
            record(f"eval batch size, {name}", "1024", str(bs), a, b, "(inference img/s)")

    saved = {k: v for k, v in vars(args).items() if k not in ("root", "out")}
    out = {"args": saved, "machine": machine(), "model": spec.to_dict(), "rows": rows}
    OUT = out_dir(args)
    write_json(OUT / "levers.json", out)
    md = (
        f"Levers on the fast recipe's network (training img/s unless noted; median of {args.rounds} alternating "
        f"rounds of {args.batches} batches of {args.bs}), `python -m bench.levers`\n\n"
    )
    md += markdown_table(
        ["lever", "baseline img/s", "variant img/s", "variant / baseline", ""],
        [
            [r["lever"], f"{r['baseline']}: {statistics.median(r['baseline_img_s']):.0f}"]
            + [f"{r['variant']}: {statistics.median(r['variant_img_s']):.0f}", f"{r['ratio']:.2f}", r["note"]]
            for r in rows
        ],
    )
    md += f"\nMachine: {out['machine']}\n"
    write_text(OUT / "levers.md", md)
    print(md)


if __name__ == "__main__":
    main()
