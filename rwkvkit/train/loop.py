"""The training loop: one loop for every architecture, on one CPU or many GPUs.

Per optimizer step: every rank computes the same global batch of windows from (seed, step) and
reads its own rows; each window is processed in segments of ``bptt_len`` tokens with the
recurrent state carried (and detached) between them (truncated BPTT); gradients are averaged
over ranks by DistributedDataParallel, clipped, and AdamW steps with the scheduled rate.
What the loop builds, how it schedules and where it writes live beside it: arch.py,
schedule.py, run.py (and formats/run.py), validate.py, sample.py, device.py.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ..errors import RwkvkitError
from ..formats.run import RUN_FORMAT, complete_steps, read_run_file, run_method, weights_path
from ..tokenizer import load_tokenizer
from . import run as runfiles
from .config import KEEP_ON_RESUME, TrainConfig
from .data import TokenData
from .device import autocast_for, pick_device, setup_distributed
from .sample import sample_text
from .schedule import learning_rate
from .trainee import Trainee, scratch
from .validate import validation_loss


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


def rng_state() -> dict[str, Any]:
    s: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def resumed_config(cfg: TrainConfig, out: Path) -> tuple[TrainConfig, int | None]:
    """The run's saved config, with this invocation's length and reporting (KEEP_ON_RESUME), and
    the step of its newest complete checkpoint (None: none yet, start from scratch). A run is
    resumed only by the same method it was made with."""
    info = read_run_file(out)
    method, asked = run_method(info), getattr(cfg, "method", "scratch")
    if method != asked:
        made = "`rwkvkit train`" if method == "scratch" else f"`rwkvkit finetune --method {method}`"
        tried = "`rwkvkit train`" if asked == "scratch" else f"--method {asked}"
        raise RwkvkitError(
            f"{out} was made by {made}; it cannot be resumed with {tried}. Resume it as it was made, "
            "or start a new run in another --out folder"
        )
    saved = type(cfg).from_saved(info)
    cfg = dataclasses.replace(saved, **{k: getattr(cfg, k) for k in KEEP_ON_RESUME})
    steps = complete_steps(out)
    return cfg, (steps[-1] if steps else None)


def masked_loss(logits: Tensor, targets: Tensor, mask: Tensor, count: float) -> Tensor:
    """Cross-entropy summed over the positions ``mask`` counts, divided by ``count`` (the counted
    positions of the whole micro-batch, so a window's segments add up to its mean)."""
    ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    return (ce * mask.flatten()).sum() / count


def train(cfg: TrainConfig, make: Callable[[TrainConfig, TokenData], Trainee] = scratch) -> dict[str, Any]:
    """Run (or resume) training; returns a summary (final step, last losses). ``make`` builds what
    is trained (a fresh model; ``rwkvkit finetune`` passes its own)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg)
    dist_info = setup_distributed(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    out = Path(cfg.out)
    data = TokenData.open(cfg.data)

    resume_from = None
    if cfg.resume:
        cfg, resume_from = resumed_config(cfg, out)
    start_step = resume_from or 0
    seg = cfg.segment
    if cfg.ctx_len % seg:
        raise RwkvkitError(f"--ctx-len {cfg.ctx_len} must be a multiple of --bptt-len {seg}")
    sampler = data.sampler("train", cfg.ctx_len, cfg.seed)
    torch.manual_seed(cfg.seed)
    trainee = make(cfg, data)
    model, model_cfg = trainee.model, trainee.model_config
    if resume_from is not None:
        trainee.load(weights_path(out, resume_from))
    trainee.module.to(device).train()
    n_params = sum(p.numel() for p in model.parameters())
    groups = trainee.param_groups(cfg.weight_decay)
    trained = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=1e-8)  # type: ignore[arg-type]
    if resume_from is not None:
        ts = runfiles.load_train_state(out, resume_from)
        opt.load_state_dict(ts["optimizer"])
        set_rng_state(ts["rng"])
    ddp_model: nn.Module
    if dist_info.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp_model = DDP(trainee.module, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        ddp_model = trainee.module
    amp = autocast_for(cfg, device)
    tokenizer = load_tokenizer(data.manifest["tokenizer"])
    bytes_per_token = data.manifest.get("bytes_per_token") or 1.0
    sample_prompt = cfg.sample_prompt
    if data.examples and sample_prompt == "\n":  # the default: for chats, answer the first question
        sample_prompt = tokenizer.decode(data.example_prompt("val", 0))

    metrics = out / runfiles.METRICS
    if dist_info.main:
        out.mkdir(parents=True, exist_ok=True)
        if resume_from is None:
            runfiles.write_run_file(
                out,
                {
                    "format": RUN_FORMAT,
                    "arch": trainee.arch,
                    "model": model_cfg,
                    "n_params": n_params,
                    "tokenizer": data.manifest["tokenizer"],
                    **trainee.run_info,
                    "train": cfg.saved(),
                },
            )
            metrics.unlink(missing_ok=True)
        else:
            runfiles.truncate_metrics(metrics, resume_from)

    def save(step: int) -> None:
        if dist_info.main:
            ts = {"step": step, "optimizer": opt.state_dict(), "rng": rng_state()}
            runfiles.save_checkpoint(out, step, trainee.tensors(), model_cfg, ts, cfg.keep)
            trainee.export(out)

    def run_eval(step: int) -> float:
        val = validation_loss(model, data, cfg, device, amp)
        bpb = val / math.log(2) / bytes_per_token
        text = sample_text(model, tokenizer, sample_prompt, cfg.sample_len, cfg.seed + step)
        runfiles.append_metrics(metrics, {"step": step, "val_loss": val, "val_bpb": bpb})
        with open(out / runfiles.SAMPLES, "a") as f:
            f.write(f"=== step {step} (val {val:.4f} nats/token, {bpb:.4f} bits/byte)\n{text}\n\n")
        runfiles.plot_losses(metrics, out / runfiles.LOSS_PLOT, trainee.title)
        return val

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
        picks = sampler.global_batch(step, global_batch).reshape(cfg.grad_accum, world, cfg.batch_size)
        step_loss = 0.0
        for micro in range(cfg.grad_accum):
            x, y, *mask = sampler.read(picks[micro, rank])  # examples also give their loss mask
            x, y = x.to(device), y.to(device)
            T = x.shape[1]  # ctx_len; for examples, the longest of this micro-batch
            count = float(mask[0].sum().clamp(min=1)) if mask else 0.0
            state = None
            for s in range(0, T, seg):
                last = micro == cfg.grad_accum - 1 and s + seg >= T
                ctx = nullcontext() if last or world == 1 else ddp_model.no_sync()  # type: ignore[operator]
                with ctx:
                    with amp():
                        logits, state = ddp_model(x[:, s : s + seg], state)
                    if mask:
                        loss = masked_loss(
                            logits, y[:, s : s + seg], mask[0][:, s : s + seg].to(device), count
                        )
                        weight = 1 / cfg.grad_accum
                    else:
                        loss = F.cross_entropy(logits.flatten(0, 1).float(), y[:, s : s + seg].flatten())
                        weight = (seg / cfg.ctx_len) / cfg.grad_accum
                    (L2Wrap.apply(loss, logits) * weight).backward()
                step_loss += loss.item() * weight
                state = state.detach()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(trained, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        trainee.after_step()
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
                runfiles.append_metrics(metrics, row)
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
