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

from ..checkpoint import all_finite
from ..device import set_cpu_threads
from ..errors import NonFiniteError, RwkvkitError
from ..fileio import os_problem
from ..formats.run import RUN_FORMAT, complete_steps, read_run_file, weights_path
from ..tokenizer import load_tokenizer
from . import run as runfiles
from .config import KEEP_ON_RESUME, TrainConfig, check_resume_method
from .data import TokenData
from .device import autocast_for, pick_device, setup_distributed
from .sample import sample_text
from .schedule import learning_rate
from .trainee import Trainee, scratch
from .validate import validation_loss


def _last_good(out: Path) -> str:
    steps = complete_steps(out)
    return (
        f"the last complete checkpoint (step {steps[-1]}) is intact."
        if steps
        else "no checkpoint was written."
    )


def stop_if_not_finite(
    step: int, loss: float, grad_norm: float, lr: float, world: int, device: torch.device, out: Path
) -> None:
    """Raise :class:`NonFiniteError` if this step's loss or gradient norm is NaN or infinite, on
    every rank at once (one rank stopping alone would leave the others waiting forever)."""
    bad = not (math.isfinite(loss) and math.isfinite(grad_norm))
    if world > 1:
        flag = torch.tensor([float(bad)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        bad = bool(flag.item())
    if bad:
        raise NonFiniteError(
            f"training stopped at step {step}: the loss ({loss:.4g}) or the gradient norm ({grad_norm:.4g}) "
            f"is not finite, so the weights were not updated; {_last_good(out)} Lower --lr (now {lr:.3g}), "
            "set --grad-clip, or check the data"
        )


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
    """The run's saved config, with this invocation's length, reporting (KEEP_ON_RESUME) and data
    folder, and the step of its newest complete checkpoint (None: none yet, start from scratch). A
    run is resumed only by the same method it was made with."""
    info = read_run_file(out)
    check_resume_method(info, getattr(cfg, "method", None), out)
    saved = type(cfg).from_saved(info, out / runfiles.RUN_FILE)
    cfg = dataclasses.replace(saved, data=cfg.data, **{k: getattr(cfg, k) for k in KEEP_ON_RESUME})
    steps = complete_steps(out)
    return cfg, (steps[-1] if steps else None)


def masked_loss(logits: Tensor, targets: Tensor, mask: Tensor, count: float) -> Tensor:
    """Cross-entropy summed over the positions ``mask`` counts, divided by ``count`` (the counted
    positions of the whole micro-batch, so a window's segments add up to its mean)."""
    ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    return (ce * mask.flatten()).sum() / count


def check_run_folder(cfg: TrainConfig, out: Path) -> None:
    """Refuse an --out that is a file, or that holds a run this invocation would mix with."""
    if out.exists() and not out.is_dir():
        raise runfiles.RunFolderError(f"--out {out}: is a file, not a folder")
    if not cfg.resume and not cfg.overwrite and out.is_dir() and runfiles.holds_run(out):
        raise runfiles.RunFolderError(
            f"--out {out} already holds a training run; pass --resume to continue it, or --overwrite "
            "to start again (its checkpoints and metrics are deleted)"
        )


def check_data_fits_run(data: TokenData, out: Path) -> None:
    """On resume, the data must be tokenized as the run's was: another vocabulary would be trained
    on as if it were the same."""
    info = read_run_file(out)
    saved_tok, saved_vocab = info.get("tokenizer"), (info.get("model") or {}).get("vocab_size")
    tok, vocab = data.manifest["tokenizer"], data.manifest["vocab_size"]
    if (saved_tok is not None and saved_tok != tok) or (saved_vocab is not None and saved_vocab != vocab):
        raise RwkvkitError(
            f"--data {data.path} is tokenized with {tok} ({vocab} ids) but the run in {out} was trained on "
            f"{saved_tok} ({saved_vocab} ids); pass the run's own data folder"
        )


def train(cfg: TrainConfig, make: Callable[[TrainConfig, TokenData], Trainee] = scratch) -> dict[str, Any]:
    """Run (or resume) training; returns a summary (final step, last losses). ``make`` builds what
    is trained (a fresh model; ``rwkvkit finetune`` passes its own).

    With ``cfg.resume`` the run folder's saved config is read first and everything is derived
    from it (only KEEP_ON_RESUME and the data folder come from ``cfg``). Rank 0 holds the run
    folder's lock for the whole run. Training stops with a :class:`NonFiniteError` at the first
    non-finite loss or gradient, before the optimizer steps, so no checkpoint is ever non-finite.
    """
    out = Path(cfg.out)
    resume_from = None
    if cfg.resume:
        cfg, resume_from = resumed_config(cfg, out)
    if cfg.threads:
        set_cpu_threads(cfg.threads)
    check_run_folder(cfg, out)
    device = pick_device(cfg)
    dist_info = setup_distributed(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    data = TokenData.open(cfg.data)
    if cfg.resume:
        check_data_fits_run(data, out)
    if not dist_info.main:
        return _train(cfg, data, device, dist_info, resume_from, make)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise runfiles.RunFolderError(f"--out {out}: cannot create the folder: {os_problem(e)}") from None
    with runfiles.run_lock(out):
        runfiles.tidy(out)
        if cfg.overwrite:
            runfiles.clear_run(out)
        return _train(cfg, data, device, dist_info, resume_from, make)


def _train(
    cfg: TrainConfig,
    data: TokenData,
    device: torch.device,
    dist_info: Any,
    resume_from: int | None,
    make: Callable[[TrainConfig, TokenData], Trainee],
) -> dict[str, Any]:
    out = Path(cfg.out)
    start_step = resume_from or 0
    seg = cfg.segment
    if cfg.ctx_len % seg:
        raise RwkvkitError(f"--ctx-len {cfg.ctx_len} must be a multiple of --bptt-len {seg}")
    sampler = data.sampler("train", cfg.ctx_len, cfg.seed)
    torch.manual_seed(cfg.seed)
    try:
        trainee = make(cfg, data)
    except (MemoryError, RuntimeError) as e:  # torch reports a failed allocation as a RuntimeError
        if not isinstance(e, MemoryError) and "alloc" not in str(e):
            raise
        raise RwkvkitError(
            f"a {cfg.arch} model of --n-layer {cfg.n_layer} --n-embd {cfg.n_embd} does not fit in memory "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); choose smaller sizes"
        ) from None
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
            (out / runfiles.SAMPLES).unlink(missing_ok=True)
        else:
            runfiles.truncate_metrics(metrics, resume_from)
            runfiles.truncate_samples(out / runfiles.SAMPLES, resume_from)

    def save(step: int) -> None:
        if dist_info.main:
            bad = next((n for n, p in model.named_parameters() if not all_finite(p.detach())), None)
            if bad is not None:  # finite steps can still overflow a weight: never save that
                raise NonFiniteError(
                    f"training stopped at step {step}: the weights ({bad}) are not finite, so no checkpoint "
                    f"was written; {_last_good(out)} Lower --lr (now {cfg.lr:g})"
                )
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
        disable=None if cfg.progress and dist_info.main else True,  # None: only on a terminal
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
        grads = [p.grad for p in trained if p.grad is not None]
        if cfg.grad_clip > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(trained, cfg.grad_clip))
        else:
            norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
        stop_if_not_finite(step + 1, step_loss, norm, lr, world, device, out)
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
