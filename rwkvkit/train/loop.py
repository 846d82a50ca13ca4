"""The training loop: one loop for RWKV-4 and the GPT baseline, on one CPU or many GPUs.

Per optimizer step: every rank computes the same global batch of windows from (seed, step) and
reads its own rows; each window is processed in segments of ``chunk_len`` tokens with the
recurrent state carried (and detached) between them (truncated BPTT); gradients are averaged
over ranks by DistributedDataParallel, clipped, and AdamW steps with the scheduled rate.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import RwkvkitError
from ..fileio import atomic_write_bytes
from ..models.gpt import GPT, GPTConfig, gpt_ffn_dim_matching, init_gpt_
from ..models.rwkv4 import RWKV4, RWKV4Config
from ..models.rwkv7 import RWKV7, RWKV7Config, init_rwkv7_
from . import run as runfiles
from .data import TokenData, TokenSampler, eval_windows, get_tokenizer
from .init import init_rwkv4_, param_groups


@dataclasses.dataclass
class TrainConfig:
    data: str
    out: str
    arch: str = "rwkv4"  # or "rwkv7", or "gpt"
    n_layer: int = 4
    n_embd: int = 256
    ffn_mult: float = 4.0  # RWKV channel-mixing width = ffn_mult * n_embd
    n_head: int = 4  # GPT only
    head_size: int = 64  # RWKV-7 only: channels per head (every released RWKV-7 uses 64)
    ctx_len: int = 256  # tokens per training window
    chunk_len: int = 0  # truncated-BPTT segment; 0 = the whole window
    wkv_chunk: int = 32  # tokens per chunk inside the parallel WKV (speed only)
    batch_size: int = 8  # windows per rank per micro-batch
    grad_accum: int = 1
    lr: float = 6e-4
    lr_final: float = 6e-5
    warmup: int = 50
    decay: str = "cosine"  # or "exp"
    steps: int = 1000
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    seed: int = 0
    precision: str = "auto"  # fp32, bf16, auto (bf16 where the hardware has it)
    save_every: int = 100
    keep: int = 3  # checkpoints kept
    eval_every: int = 100
    eval_windows: int = 64
    log_every: int = 10
    sample_len: int = 200
    sample_prompt: str = "\n"
    stop_after: int = 0  # stop after this many steps in this invocation (0: run to --steps)
    resume: bool = False
    device: str = "auto"
    threads: int = 0
    progress: bool = True


# ---------------------------------------------------------------- schedule and loss


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warmup from 0, then cosine or exponential decay from lr to lr_final at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup - 1)
    progress = min(1.0, progress)
    if cfg.decay == "exp":
        return cfg.lr * (cfg.lr_final / cfg.lr) ** progress
    return cfg.lr_final + 0.5 * (cfg.lr - cfg.lr_final) * (1 + math.cos(math.pi * progress))


class L2Wrap(torch.autograd.Function):
    """Returns the loss unchanged; in backward, nudges each position's largest logit toward zero
    (gradient 1e-4 * max / (B * T)), which keeps logits from drifting up (BlinkDL's L2Wrap)."""

    @staticmethod
    def forward(ctx: Any, loss: Tensor, logits: Tensor) -> Tensor:
        ctx.save_for_backward(logits)
        return loss

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        (logits,) = ctx.saved_tensors
        factor = 1e-4 / (logits.shape[0] * logits.shape[1])
        maxx, ids = logits.max(dim=-1, keepdim=True)
        g = torch.zeros_like(logits).scatter_(-1, ids, maxx * factor)
        return grad, g * grad


# ---------------------------------------------------------------- model construction


def rwkv7_lora_dims(n_embd: int) -> dict[str, int]:
    """The official RWKV-7 trainer's low-rank widths: multiples of 32 growing like sqrt(C) (C^0.8 for the gate)."""

    def width(scale: float, power: float) -> int:
        return max(32, int(round(scale * n_embd**power / 32) * 32))

    return {
        "decay_lora": width(1.8, 0.5),
        "iclr_lora": width(1.8, 0.5),
        "value_lora": width(1.3, 0.5),
        "gate_lora": width(0.6, 0.8),
    }


def build(cfg: TrainConfig, vocab_size: int) -> tuple[nn.Module, dict[str, Any]]:
    """A freshly initialised model and its config dict (what the checkpoints' metadata holds)."""
    ffn_dim = round(cfg.ffn_mult * cfg.n_embd)
    if cfg.arch == "rwkv4":
        mc = RWKV4Config(vocab_size, cfg.n_layer, cfg.n_embd, ffn_dim, chunk_len=cfg.wkv_chunk)
        model: nn.Module = RWKV4(mc)
        init_rwkv4_(model)  # type: ignore[arg-type]
    elif cfg.arch == "gpt":
        if cfg.n_embd % cfg.n_head:
            raise RwkvkitError(f"--n-embd {cfg.n_embd} is not a multiple of --n-head {cfg.n_head}")
        gffn = gpt_ffn_dim_matching(vocab_size, cfg.n_layer, cfg.n_embd, ffn_dim, cfg.ctx_len)
        mc = GPTConfig(vocab_size, cfg.n_layer, cfg.n_embd, cfg.n_head, gffn, cfg.ctx_len)  # type: ignore[assignment]
        model = GPT(mc)  # type: ignore[arg-type]
        init_gpt_(model)  # type: ignore[arg-type]
    elif cfg.arch == "rwkv7":
        if cfg.n_embd % cfg.head_size:
            raise RwkvkitError(f"--n-embd {cfg.n_embd} is not a multiple of --head-size {cfg.head_size}")
        mc = RWKV7Config(  # type: ignore[assignment]
            vocab_size, cfg.n_layer, cfg.n_embd, ffn_dim, head_size=cfg.head_size, chunk_len=cfg.wkv_chunk,
            **rwkv7_lora_dims(cfg.n_embd),
        )  # fmt: skip
        model = RWKV7(mc)  # type: ignore[arg-type]
        init_rwkv7_(model, seed=cfg.seed)  # type: ignore[arg-type]
    else:
        raise RwkvkitError(f"--arch must be rwkv4, rwkv7 or gpt, got {cfg.arch!r}")
    d = mc.to_dict()
    d.pop("chunk_len", None)  # a speed knob, not part of the model
    return model, d


# ---------------------------------------------------------------- distributed


@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> Dist:
    """Join the torchrun group when launched by torchrun (gloo on the CPU, nccl on GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(cfg: TrainConfig) -> torch.device:
    if cfg.device != "auto":
        return torch.device(cfg.device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def autocast_for(cfg: TrainConfig, device: torch.device) -> Any:
    bf16 = cfg.precision == "bf16" or (
        cfg.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    )
    if cfg.precision not in ("auto", "bf16", "fp32"):
        raise RwkvkitError(f"--precision must be fp32, bf16 or auto, got {cfg.precision!r}")
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model: nn.Module, data: TokenData, cfg: TrainConfig, device: torch.device, amp: Any) -> float:
    """Mean validation loss (nats per token) over fixed windows, processed like training windows."""
    was_training = model.training
    model.eval()
    starts = eval_windows(data.val, cfg.ctx_len, cfg.eval_windows)
    sampler = TokenSampler(data.val, cfg.ctx_len, 0) if len(data.val) >= cfg.ctx_len + 2 else None
    total, count = 0.0, 0
    seg = cfg.chunk_len or cfg.ctx_len
    for i in range(0, len(starts), cfg.batch_size):
        rows = starts[i : i + cfg.batch_size]
        if sampler is not None:
            x, y = sampler.read(rows)
        else:
            raise RwkvkitError("the validation split is shorter than --ctx-len + 2 tokens")
        x, y = x.to(device), y.to(device)
        state = None
        for s in range(0, cfg.ctx_len, seg):
            with amp():
                logits, state = model(x[:, s : s + seg], state)
            total += F.cross_entropy(
                logits.flatten(0, 1).float(), y[:, s : s + seg].flatten(), reduction="sum"
            ).item()
            count += y[:, s : s + seg].numel()
    model.train(was_training)
    return total / count


@torch.no_grad()
def sample_text(
    model: nn.Module, tokenizer: Any, prompt: str, n: int, seed: int, device: torch.device
) -> str:
    """A sample from the model (temperature 1, top-p 0.9), with its own generator: the training RNG
    is untouched, so sampling never changes what the run computes."""
    was_training = model.training
    model.eval()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ids = tokenizer.encode(prompt) or [0]
    limit = getattr(getattr(model, "config", None), "n_ctx", None)
    if limit is not None:
        n = min(n, limit - len(ids))
    logits, state = model(torch.tensor([ids], device=device), None)
    out: list[int] = []
    for _ in range(max(0, n)):
        probs = torch.softmax(logits[0, -1].float().cpu(), dim=-1)
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < 0.9
        sorted_p = sorted_p * keep
        tok = int(order[torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=gen)])
        out.append(tok)
        logits, state = model(torch.tensor([[tok]], device=device), state)
    model.train(was_training)
    return prompt + tokenizer.decode(out)


# ---------------------------------------------------------------- metrics and plots


def append_metrics(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, forget rows logged after the checkpoint we go back to."""
    if not path.is_file():
        return
    rows = [
        ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step
    ]
    atomic_write_bytes(path, ("\n".join(rows) + "\n" if rows else "").encode())


def plot_losses(metrics: Path, png: Path, title: str) -> None:
    """Training and validation loss against step, from metrics.jsonl."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return  # plotting is a convenience; the numbers are in metrics.jsonl
    rows = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
    tr = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    va = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if tr:
        ax.plot(*zip(*tr, strict=True), label="train", lw=1)
    if va:
        ax.plot(*zip(*va, strict=True), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    from ..fileio import atomic_path

    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


# ---------------------------------------------------------------- the loop


def rng_state() -> dict[str, Any]:
    s: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) training; returns a summary (final step, last losses)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg)
    dist_info = setup_distributed(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    out = Path(cfg.out)
    data = TokenData.open(cfg.data)
    vocab = int(data.manifest["vocab_size"])
    seg = cfg.chunk_len or cfg.ctx_len
    if cfg.ctx_len % seg:
        raise RwkvkitError(f"--ctx-len {cfg.ctx_len} must be a multiple of --chunk-len {seg}")

    start_step = 0
    resume_from = None
    if cfg.resume:
        info = runfiles.read_run_file(out)
        saved = info["train"]
        # The model and the data stream come from the run; only the length of the run may change.
        keep_now = {
            "steps",
            "stop_after",
            "resume",
            "progress",
            "threads",
            "device",
            "save_every",
            "eval_every",
        }
        cfg = TrainConfig(**{**saved, **{k: getattr(cfg, k) for k in keep_now}})
        cfg.betas = tuple(cfg.betas)  # type: ignore[assignment]
        steps = runfiles.complete_steps(out)
        if steps:
            resume_from = steps[-1]
            start_step = resume_from
    torch.manual_seed(cfg.seed)
    model, model_cfg = build(cfg, vocab)
    if resume_from is not None:
        from ..checkpoint import read_checkpoint

        sd = read_checkpoint(runfiles.weights_path(out, resume_from)).state_dict
        model.load_state_dict({k: v.reshape(model.state_dict()[k].shape) for k, v in sd.items()})
    model.to(device).train()
    n_params = sum(p.numel() for p in model.parameters())
    groups = param_groups(model, cfg.weight_decay)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=1e-8)  # type: ignore[arg-type]
    if resume_from is not None:
        ts = runfiles.load_train_state(out, resume_from)
        opt.load_state_dict(ts["optimizer"])
        set_rng_state(ts["rng"])
    ddp_model: nn.Module = model
    if dist_info.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    amp = autocast_for(cfg, device)
    tokenizer = get_tokenizer(data.manifest["tokenizer"])
    sampler = TokenSampler(data.train, cfg.ctx_len, cfg.seed)
    bytes_per_token = data.manifest.get("bytes_per_token") or 1.0

    metrics = out / "metrics.jsonl"
    if dist_info.main:
        out.mkdir(parents=True, exist_ok=True)
        if resume_from is None:
            runfiles.write_run_file(
                out,
                {
                    "format": "rwkvkit-run-1",
                    "arch": cfg.arch,
                    "model": model_cfg,
                    "n_params": n_params,
                    "tokenizer": data.manifest["tokenizer"],
                    "train": dataclasses.asdict(cfg),
                },
            )
            metrics.unlink(missing_ok=True)
        else:
            truncate_metrics(metrics, resume_from)

    def save(step: int) -> None:
        if dist_info.main:
            ts = {"step": step, "optimizer": opt.state_dict(), "rng": rng_state()}
            runfiles.save_checkpoint(out, step, model.state_dict(), model_cfg, ts, cfg.keep)

    def run_eval(step: int) -> float:
        val = evaluate(model, data, cfg, device, amp)
        bpb = val / math.log(2) / bytes_per_token
        text = sample_text(model, tokenizer, cfg.sample_prompt, cfg.sample_len, cfg.seed + step, device)
        append_metrics(metrics, {"step": step, "val_loss": val, "val_bpb": bpb})
        with open(out / "samples.txt", "a") as f:
            f.write(f"=== step {step} (val {val:.4f} nats/token, {bpb:.4f} bits/byte)\n{text}\n\n")
        plot_losses(metrics, out / "loss.png", f"{cfg.arch} L{cfg.n_layer} D{cfg.n_embd}")
        return val

    from tqdm import tqdm

    world, rank = dist_info.world, dist_info.rank
    global_batch = cfg.batch_size * cfg.grad_accum * world
    tokens_per_step = global_batch * cfg.ctx_len
    end = cfg.steps if not cfg.stop_after else min(cfg.steps, start_step + cfg.stop_after)
    bar = tqdm(
        total=cfg.steps,
        initial=start_step,
        disable=not (cfg.progress and dist_info.main),
        unit="step",
        dynamic_ncols=True,
    )
    last_loss = float("nan")
    last_val = None
    t_log, n_log, loss_log = time.perf_counter(), 0, 0.0
    for step in range(start_step, end):
        lr = learning_rate(cfg, step)
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_scale"]
        offsets = sampler.global_batch(step, global_batch).reshape(cfg.grad_accum, world, cfg.batch_size)
        step_loss = 0.0
        n_back = cfg.grad_accum * (cfg.ctx_len // seg)
        k = 0
        for micro in range(cfg.grad_accum):
            x, y = sampler.read(offsets[micro, rank])
            x, y = x.to(device), y.to(device)
            state = None
            for s in range(0, cfg.ctx_len, seg):
                k += 1
                sync = k == n_back or world == 1
                ctx = nullcontext() if sync else ddp_model.no_sync()  # type: ignore[operator]
                with ctx:
                    with amp():
                        logits, state = ddp_model(x[:, s : s + seg], state)
                    loss = F.cross_entropy(logits.flatten(0, 1).float(), y[:, s : s + seg].flatten())
                    weight = (seg / cfg.ctx_len) / cfg.grad_accum
                    (L2Wrap.apply(loss, logits) * weight).backward()
                step_loss += loss.item() * weight
                state = state.detach()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        done = step + 1
        last_loss = step_loss
        loss_log += step_loss
        n_log += 1
        bar.update(1)
        if done % cfg.log_every == 0 or done == end:
            dt = time.perf_counter() - t_log
            tps = n_log * tokens_per_step / dt
            row = {"step": done, "loss": loss_log / n_log, "lr": lr, "tokens_per_s": tps}
            bar.set_postfix(loss=f"{loss_log / n_log:.4f}", tok_s=f"{tps:,.0f}")
            if dist_info.main:
                append_metrics(metrics, row)
            t_log, n_log, loss_log = time.perf_counter(), 0, 0.0
        if cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps) and dist_info.main:
            last_val = run_eval(done)
            bar.write(
                f"step {done}: validation {last_val:.4f} nats/token, {last_val / math.log(2) / bytes_per_token:.4f} bits/byte"
            )
        if (cfg.save_every and done % cfg.save_every == 0) or done == end:
            save(done)
        if world > 1:
            torch.distributed.barrier()
    bar.close()
    return {"step": end, "loss": last_loss, "val_loss": last_val, "n_params": n_params}
