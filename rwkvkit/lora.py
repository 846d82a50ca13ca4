"""LoRA adapters, made and read by the ``peft`` library, in PEFT's on-disk layout.

An adapter is a folder with ``adapter_config.json`` and ``adapter_model.safetensors``, as
``PeftModel.save_pretrained`` writes it; peft adapts the linear layers named in the config
(``target_modules``, matched against module-name suffixes such as ``key`` or ``att.output``).
rwkvkit adds one key to the config, ``rwkvkit_base_model``: the identity of the model the adapter
was trained on (:class:`rwkvkit.statefile.ModelIdentity`), so that loading it onto another base is
refused rather than silently wrong.

Why peft fits: every RWKV projection (receptance, key, value, output, gate; channel mixing's key,
value, receptance) is an ``nn.Linear``. RWKV-7's decay, in-context-rate, value and gate paths are
already low-rank factor pairs (``att.w1``/``att.w2`` ... bare parameters multiplied in the mixing
code, not modules), so peft cannot target them by module name, and a low-rank update of a rank-64
factor would add little; they stay frozen. peft is imported only here and only when an adapter is
made or read: it pulls transformers in, which plain inference never needs.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import CheckpointError, RwkvkitError
from .fileio import write_json
from .formats.run import ADAPTER_DIR, is_run_folder
from .statefile import ModelIdentity

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
BASE_KEY = "rwkvkit_base_model"
# Every RWKV version's projections: time mixing's receptance/key/value/output (and RWKV-5/6's
# gate), channel mixing's key/value (and receptance, except RWKV-7's). Names absent from a
# version are skipped; the head and the embedding are left alone.
DEFAULT_TARGETS = ("receptance", "key", "value", "output", "gate")


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise RwkvkitError(
            "LoRA needs the peft library: pip install 'rwkvkit[finetune]' (or pip install peft)"
        ) from None
    return peft


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    """What ``rwkvkit finetune --method lora`` adapts, and how."""

    rank: int = 8
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0  # on the adapter's input, while training
    targets: tuple[str, ...] = DEFAULT_TARGETS

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise RwkvkitError(f"--lora-rank must be at least 1, got {self.rank}")
        if self.alpha <= 0:
            raise RwkvkitError(f"--lora-alpha must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise RwkvkitError(f"--lora-dropout must be in [0, 1), got {self.dropout}")
        if not self.targets or not all(self.targets):
            raise RwkvkitError("--lora-targets needs at least one module name, e.g. key,value")


def linear_names(model: nn.Module) -> list[str]:
    """Every linear layer's module name (what peft matches ``target_modules`` against)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n]


def add_lora(model: nn.Module, settings: LoraSettings) -> Any:
    """Put fresh LoRA layers (B = 0, so the model computes exactly what it did) on the linear layers
    ``settings.targets`` name, in place; every other parameter is frozen. Returns peft's wrapper,
    which :func:`save_adapter` writes; train and run ``model`` itself.

    A name matches a layer whose module name is it or ends with ``.name`` (peft's rule). A default
    name the model lacks (RWKV-4 has no gate) is skipped; any other name that matches nothing is a
    mistake, refused."""
    modules = linear_names(model)
    unmatched = [t for t in settings.targets if not any(n == t or n.endswith("." + t) for n in modules)]
    if len(unmatched) == len(settings.targets) or set(unmatched) - set(DEFAULT_TARGETS):
        shown = sorted({n.rsplit(".", 1)[-1] for n in modules})
        raise RwkvkitError(
            f"--lora-targets: {','.join(unmatched)} names no linear layer of this model; its linear "
            f"layers are called {', '.join(shown)}"
        )
    peft = _peft()
    config = peft.LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.targets),
        bias="none",
    )
    return peft.get_peft_model(model, config)


def adapter_tensors(model: nn.Module) -> dict[str, Tensor]:
    """The adapter's tensors alone (what a training checkpoint holds), keyed as peft names them."""
    return dict(_peft().get_peft_model_state_dict(model))


def load_adapter_tensors(model: nn.Module, tensors: dict[str, Tensor], where: Path) -> None:
    """Put saved adapter tensors (from :func:`adapter_tensors`) back into an adapted model."""
    result = _peft().set_peft_model_state_dict(model, tensors)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise CheckpointError(where, f"adapter tensors this model has no place for: {unexpected[:4]}")


def save_adapter(peft_model: Any, out: Path, base: ModelIdentity) -> Path:
    """Write the adapter in PEFT's layout to folder ``out``, with the base's identity in its config.

    peft writes into a temporary folder beside ``out``; the weights are moved into place first and
    the config last, each atomically, so a reader never finds a config without its weights.
    """
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".adapter-", dir=out.parent) as tmp:
        peft_model.save_pretrained(tmp)
        config = json.loads((Path(tmp) / CONFIG_FILE).read_text())
        config[BASE_KEY] = dataclasses.asdict(base)
        (Path(tmp) / WEIGHTS_FILE).replace(out / WEIGHTS_FILE)
        write_json(out / CONFIG_FILE, config)
    return out


def adapter_folder(path: str | Path) -> Path:
    """An adapter's folder: the path itself, or a LoRA run folder's ``adapter/``."""
    path = Path(path)
    if is_run_folder(path):
        path = path / ADAPTER_DIR
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise CheckpointError(
            path,
            f"not a LoRA adapter: expected {CONFIG_FILE} and {WEIGHTS_FILE} here (a folder written by "
            "`rwkvkit finetune --method lora` or peft's save_pretrained)",
        )
    return path


def read_adapter_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(folder / CONFIG_FILE, f"not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise CheckpointError(folder / CONFIG_FILE, "not a LoRA adapter config (peft_type is not LORA)")
    return config


def check_base(folder: Path, config: dict[str, Any], model: nn.Module) -> None:
    """Refuse an adapter trained on another model (when its config says which one)."""
    recorded = config.get(BASE_KEY)
    if recorded is None:
        return  # an adapter from elsewhere: peft still checks every tensor's shape
    try:
        identity = ModelIdentity(**recorded)
    except TypeError as e:
        raise CheckpointError(folder / CONFIG_FILE, f"damaged {BASE_KEY} entry ({e})") from None
    why = identity.mismatch(ModelIdentity.of(model))
    if why is not None:
        raise CheckpointError(
            folder,
            f"this adapter belongs to another base model: {why}. Load it onto the model it was trained "
            f"on (its {CONFIG_FILE} records that model's config under {BASE_KEY})",
        )


def apply_adapter(model: nn.Module, path: str | Path, *, merge: bool = True) -> nn.Module:
    """``model`` with the adapter at ``path`` (a folder or a LoRA run) loaded by peft.

    ``merge=True`` folds the update into the weights (W + alpha/rank B A) and returns the plain
    model, as fast as the base; ``merge=False`` keeps peft's LoRA layers in the model.
    """
    peft = _peft()
    folder = adapter_folder(path)
    config = read_adapter_config(folder)
    check_base(folder, config, model)
    fields = {f.name for f in dataclasses.fields(peft.LoraConfig)}
    lora_config = peft.LoraConfig(**{k: v for k, v in config.items() if k in fields})
    try:
        wrapped = peft.PeftModel.from_pretrained(model, str(folder), config=lora_config)
    except (RuntimeError, ValueError, KeyError) as e:  # shapes or names that do not fit this model
        raise CheckpointError(
            folder, f"this adapter does not fit the model: {str(e).splitlines()[0]}"
        ) from None
    return wrapped.merge_and_unload() if merge else wrapped.get_base_model()


def shared_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s modules that holds the very same tensors (parameters, buffers, derived
    step constants): new modules to adapt, no new weights."""
    memo: dict[int, Any] = {}
    for module in model.modules():
        for value in [*module._parameters.values(), *module._buffers.values(), *vars(module).values()]:
            for t in value if isinstance(value, tuple | list) else (value,):
                if isinstance(t, Tensor):
                    memo[id(t)] = t
    return copy.deepcopy(model, memo)


def adapter_view(model: nn.Module, path: str | Path) -> nn.Module:
    """``model`` with the adapter at ``path`` on top, sharing every weight of ``model``.

    Many adapters on one base cost the base's memory once plus each adapter's (rank x width per
    adapted layer): how ``rwkvkit serve --adapter`` serves them side by side. The update stays
    unmerged (peft's LoRA layers add B A x to each adapted layer's output), so a view is slower
    per token than a merged model; ``model``'s modules are left as they were and its weights are
    only read, but the shared weights have ``requires_grad`` turned off (peft freezes the base): to
    train ``model`` afterwards, call ``model.requires_grad_(True)``.
    """
    if getattr(model, "quantization", None):
        raise RwkvkitError(
            f"an adapter can share the base's weights only when they are not quantized (this model is "
            f"{model.quantization}); load the base without quantization, or merge the adapter into a "
            "model file with `rwkvkit convert RUN OUT` and quantize that"
        )
    view = shared_copy(model)
    with torch.no_grad():
        return apply_adapter(view, path, merge=False).eval()
