"""How closely GGUF files and ONNX graphs agree with the original weights, at the 0.1B shape: rwkvkit and
llama.cpp, both directions, per file type, beside the official ``rwkv`` package, and onnxruntime on the
exported step.

    python benchmarks/gguf_agreement.py --json benchmarks/results/gguf_agreement.json

For RWKV-6 and RWKV-7 with random weights (12 layers x 768, World vocabulary; RWKV-6's FFN 2688 and
low-rank widths 32/64, RWKV-7's 3072 and 64/64/32/128), 64 tokens fed in one call, every number a
max |logit difference| over all positions (logits' std about 1):

- official: rwkvkit (.pth) and llama.cpp (its own f32 conversion) against the official package;
- per type (f32, f16, bf16, q8_0): rwkvkit reading our file and llama.cpp's own conversion (from the
  Hugging Face folder `rwkvkit convert --to hf` writes) against rwkvkit on the original weights;
  llama.cpp running our file against llama.cpp running its own; llama.cpp against rwkvkit on the
  same file (llama.cpp rounds activations to the weights' type inside its matrix products);
- onnxruntime on the exported step, 32 steps, against rwkvkit's step;
- rwkvkit's own one-token step against its forward: what a change of rounding order alone moves the
  logits by in this model, the scale for every other column (random RWKV-6 weights at this shape
  amplify rounding far more than RWKV-7's).

Needs llama-cpp-python (benchmarks/setup.sh), the official package, onnx and onnxruntime; llama.cpp's
converter is found as tests/llama_cpp_tools.py finds it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # llama_cpp_tools: the converter and llama.cpp's logits
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ["RWKV_JIT_ON"] = "0"
os.environ["RWKV_CUDA_ON"] = "0"

import numpy as np  # noqa: E402
import torch  # noqa: E402
from report import gguf_tables  # noqa: E402  (the tables BENCHMARKS.md shows)

import rwkvkit  # noqa: E402
from rwkvkit.bench.machine import machine_info  # noqa: E402
from rwkvkit.convert import convert  # noqa: E402
from rwkvkit.formats.onnx import export_onnx, run_onnx_steps  # noqa: E402
from rwkvkit.models.rwkv6 import RWKV6Config  # noqa: E402
from rwkvkit.models.rwkv7 import RWKV7Config  # noqa: E402
from rwkvkit.testing import random_rwkv6_state_dict, random_rwkv7_state_dict, step_by_step  # noqa: E402

SHAPES = {
    "6": (RWKV6Config(vocab_size=65536, n_layer=12, n_embd=768, ffn_dim=2688, mix_lora=32, decay_lora=64),
          random_rwkv6_state_dict),
    "7": (RWKV7Config(vocab_size=65536, n_layer=12, n_embd=768, ffn_dim=3072), random_rwkv7_state_dict),
}  # fmt: skip
TYPES = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "q8_0": "q8_0"}
TOKENS = [int(t) for t in torch.randint(1, 65530, (64,), generator=torch.Generator().manual_seed(0))]


def rwkvkit_logits(path: Path) -> np.ndarray:
    with torch.no_grad():
        return rwkvkit.load_model(path)(TOKENS)[0][0].numpy()


def official_logits(version: str, pth: Path, folder: Path) -> np.ndarray:
    if version == "7":  # its RWKV-7 path is chosen at import: a process of its own
        job = [{"model": str(pth), "chunks": [TOKENS], "out": str(folder / "official.pt")}]
        (folder / "jobs.json").write_text(json.dumps(job))
        subprocess.run([sys.executable, str(REPO / "tests" / "official_rwkv7_runner.py"), str(folder / "jobs.json")],
                       check=True)  # fmt: skip
        return torch.load(folder / "official.pt")[0].numpy()
    from rwkv.model import RWKV

    model = RWKV(model=str(pth), strategy="cpu fp32", verbose=False)
    return model.forward(TOKENS, None, full_output=True)[0].float().numpy()


def diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max())


def measure(version: str, folder: Path, converter: Path, onnx: bool) -> dict:
    from llama_cpp_tools import llama_cpp_logits, run_converter

    config, make = SHAPES[version]
    pth = folder / f"rwkv{version}.pth"
    torch.save(make(config, seed=1), pth)
    original = rwkvkit_logits(pth)
    official = official_logits(version, pth, folder)
    with torch.no_grad():  # how much this model amplifies a change of rounding order alone
        model = rwkvkit.load_model(pth)
        steps = step_by_step(model, torch.tensor([TOKENS]))[0][0].numpy()
        del model
    hf = convert(pth, folder / f"hf{version}", "hf")
    out: dict = {
        "logits_std": float(original.std()),
        "rwkvkit_step_vs_forward": diff(steps, original),
        "types": {},
    }
    for ours_name, theirs_name in TYPES.items():
        ours = convert(pth, folder / f"ours-{ours_name}.gguf", "gguf", ours_name)
        theirs = run_converter(converter, hf, folder / f"llama-{ours_name}.gguf", theirs_name)
        r_ours, r_theirs = rwkvkit_logits(ours), rwkvkit_logits(theirs)
        l_ours, l_theirs = llama_cpp_logits(ours, TOKENS), llama_cpp_logits(theirs, TOKENS)
        out["types"][ours_name] = {
            "rwkvkit_our_file_vs_original": diff(r_ours, original),
            "rwkvkit_llama_file_vs_original": diff(r_theirs, original),
            "llama_our_file_vs_llama_own_file": diff(l_ours, l_theirs),
            "llama_vs_rwkvkit_same_file": diff(l_theirs, r_theirs),
            "llama_vs_original": diff(l_theirs, original),
        }
        if ours_name == "fp32":
            out["rwkvkit_vs_official"] = diff(original, official)
            out["llama_f32_vs_official"] = diff(l_theirs, official)
    if onnx:
        model = rwkvkit.checkpoint.build_model(rwkvkit.checkpoint.read_checkpoint(pth))
        path = export_onnx(model, folder / "step.onnx")
        tokens = torch.tensor([TOKENS[:32]])
        got, state = run_onnx_steps(path, tokens)
        with torch.no_grad():
            want, want_state = step_by_step(model, tokens)
        out["onnxruntime_vs_rwkvkit_logits"] = float((got - want).abs().max())
        out["onnxruntime_vs_rwkvkit_state"] = max(
            float((state[n] - t).abs().max()) for n, t in want_state.tensors().items()
        )
        path.unlink()
    for f in folder.glob("*.gguf"):
        f.unlink()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--versions", default="6,7")
    parser.add_argument("--no-onnx", dest="onnx", action="store_false")
    args = parser.parse_args()
    import llama_cpp_tools

    torch.set_num_threads(1)
    converter = llama_cpp_tools.find_converter()
    from importlib.metadata import version

    results: dict = {"machine": machine_info(1), "tokens": len(TOKENS), "versions": {},
                     "peers": {p: version(p) for p in ("llama_cpp_python", "gguf", "onnx", "onnxruntime")}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for version in args.versions.split(","):
            folder = Path(tmp) / version
            folder.mkdir()
            results["versions"][version] = measure(version, folder, converter, args.onnx)
    print("\n".join(gguf_tables(results)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
