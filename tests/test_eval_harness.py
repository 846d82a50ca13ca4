"""The lm-evaluation-harness adapter, driven through the harness's own Python API on tasks defined
from local JSONL files (nothing is downloaded). The harness's numbers must equal ``rwkvkit eval``'s
on the same data (same scorer; 1e-9 relative, i.e. only summation order), and a bigram model with a
known distribution must give the known answers."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
lm_eval = pytest.importorskip("lm_eval")

import torch  # noqa: E402
from eval_models import bigram_logprob, successor_model  # noqa: E402
from torch import nn  # noqa: E402

from rwkvkit.eval import (  # noqa: E402
    Scorer,
    evaluate_lambada,
    evaluate_multiple_choice,
    evaluate_perplexity,
    read_lambada,
    read_multiple_choice,
)
from rwkvkit.eval.harness import RwkvkitLM, greedy_until  # noqa: E402
from rwkvkit.models.rwkv4 import RWKV4Config  # noqa: E402
from rwkvkit.testing import random_rwkv4, random_rwkv4_state_dict  # noqa: E402
from rwkvkit.tokenizer import ByteTokenizer  # noqa: E402

CFG = RWKV4Config(vocab_size=256, n_layer=2, n_embd=32, ffn_dim=48, chunk_len=8)

PIQA = [
    {"goal": "To open a jar,", "sol1": "twist the lid.", "sol2": "eat the lid.", "label": 0},
    {"goal": "To dry hands,", "sol1": "use a towel.", "sol2": "use water.", "label": 0},
    {"goal": "Boil water", "sol1": "in a kettle.", "sol2": "in a paper bag on the stove.", "label": 1},
    {"goal": "Cut bread", "sol1": "with a knife.", "sol2": "with a spoon.", "label": 1},
]
LAMBADA = [
    {"text": "He looked at the sea and said the word sea"},
    {"text": "The cat sat on the mat near the other cat"},
    {"text": "She opened the door and saw the garden"},
]
DOCS = [
    {"text": "First Citizen:\nBefore we proceed any further, hear me speak."},
    {"text": "All:\nSpeak, speak."},
]


def task_yaml(name: str, data: Path, body: str) -> str:
    return (
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        f"test_split: test\n{body}\nmetadata:\n  version: 1.0\n"
    )


@pytest.fixture
def tasks(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """Local copies of the harness's piqa, lambada_openai and a wikitext-style perplexity task."""
    files = {}
    for name, rows in [
        ("piqa", PIQA),
        ("lambada", LAMBADA),
        ("docs", DOCS),
        ("gen", [{"prompt": "xab", "answer": " cd"}]),
    ]:
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    (task_dir / "piqa_local.yaml").write_text(
        task_yaml(
            "piqa_local",
            files["piqa"],
            'output_type: multiple_choice\ndoc_to_text: "Question: {{goal}}\\nAnswer:"\ndoc_to_target: label\n'
            'doc_to_choice: "{{[sol1, sol2]}}"\nmetric_list:\n  - metric: acc\n  - metric: acc_norm',
        )
    )
    (task_dir / "lambada_local.yaml").write_text(
        task_yaml(
            "lambada_local",
            files["lambada"],
            "output_type: loglikelihood\ndoc_to_text: \"{{text.split(' ')[:-1]|join(' ')}}\"\n"
            "doc_to_target: \"{{' '+text.split(' ')[-1]}}\"\nmetric_list:\n"
            "  - metric: perplexity\n    aggregation: perplexity\n    higher_is_better: false\n"
            "  - metric: acc\n    aggregation: mean\n    higher_is_better: true",
        )
    )
    (task_dir / "docs_local.yaml").write_text(
        task_yaml(
            "docs_local",
            files["docs"],
            'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
            "metric_list:\n  - metric: bits_per_byte\n  - metric: byte_perplexity",
        )
    )
    (task_dir / "gen_local.yaml").write_text(
        task_yaml(
            "gen_local",
            files["gen"],
            'output_type: generate_until\ndoc_to_text: "{{prompt}}"\ndoc_to_target: "{{answer}}"\n'
            'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 16\n  do_sample: false\n'
            "metric_list:\n  - metric: exact_match",
        )
    )
    return task_dir, files


def run_harness(
    lm: object, task_dir: Path, names: list[str], **kwargs: object
) -> dict[str, dict[str, float]]:
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=names,
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        bootstrap_iters=0,
        log_samples=False,
        **kwargs,
    )
    return {name: {k.split(",")[0]: v for k, v in res.items()} for name, res in out["results"].items()}


@pytest.fixture(scope="module")
def rwkv() -> nn.Module:
    return random_rwkv4(CFG, seed=11)


def test_harness_matches_rwkvkit_eval(tasks: tuple[Path, dict[str, Path]], rwkv: nn.Module) -> None:
    task_dir, files = tasks
    tok = ByteTokenizer()
    got = run_harness(
        RwkvkitLM(model=rwkv, tokenizer=tok, batch_size=3),
        task_dir,
        ["piqa_local", "lambada_local", "docs_local"],
    )
    scorer = Scorer(rwkv, tok, batch_size=3)
    mc = evaluate_multiple_choice(scorer, read_multiple_choice(files["piqa"]))
    lam = evaluate_lambada(scorer, read_lambada(files["lambada"]))
    ppl = evaluate_perplexity(scorer, [d["text"] for d in DOCS])
    assert got["piqa_local"]["acc"] == pytest.approx(mc["acc"], rel=1e-9)
    assert got["piqa_local"]["acc_norm"] == pytest.approx(mc["acc_norm"], rel=1e-9)
    assert got["lambada_local"]["perplexity"] == pytest.approx(lam["ppl"], rel=1e-9)
    assert got["lambada_local"]["acc"] == pytest.approx(lam["acc"], rel=1e-9)
    assert got["docs_local"]["bits_per_byte"] == pytest.approx(ppl["bits_per_byte"], rel=1e-9)
    assert got["docs_local"]["byte_perplexity"] == pytest.approx(2 ** ppl["bits_per_byte"], rel=1e-9)


def test_harness_known_answers_and_generation(tasks: tuple[Path, dict[str, Path]]) -> None:
    """A byte bigram with a known distribution: exact perplexity, exact generation."""
    task_dir, files = tasks
    model = successor_model("ab cd\n")
    lm = RwkvkitLM(model=model, tokenizer=ByteTokenizer())
    got = run_harness(lm, task_dir, ["gen_local", "docs_local"])
    assert got["gen_local"]["exact_match"] == 1.0  # "xab" -> " cd" then the newline stops it
    # the direct computation: the table's log-probabilities summed along each document
    total = sum(bigram_logprob(model, [0, *d["text"].encode()]) for d in DOCS)
    nbytes = sum(len(d["text"].encode()) for d in DOCS)
    assert got["docs_local"]["bits_per_byte"] == pytest.approx(-total / math.log(2) / nbytes, rel=1e-6)
    assert greedy_until(lm.scorer, "b", ["d"], 10) == " c"
    assert greedy_until(lm.scorer, "zz", [], 3) == ""  # 'z' predicts uniformly: argmax is 0, end-of-text


def test_harness_loads_by_name(tasks: tuple[Path, dict[str, Path]], tmp_path: Path, rwkv: nn.Module) -> None:
    """``model="rwkvkit"`` with model_args, as the command line does; windows via ctx_len."""
    task_dir, files = tasks
    path = tmp_path / "model.pth"
    torch.save(random_rwkv4_state_dict(CFG, seed=11), path)
    args = {"pretrained": str(path), "tokenizer": ByteTokenizer(), "ctx_len": "16"}
    got = run_harness("rwkvkit", task_dir, ["lambada_local"], model_args=args, batch_size=2)
    lam = evaluate_lambada(Scorer(rwkv, ByteTokenizer(), ctx_len=16), read_lambada(files["lambada"]))
    assert got["lambada_local"]["perplexity"] == pytest.approx(lam["ppl"], rel=1e-6)
    assert got["lambada_local"]["acc"] == lam["acc"]


@pytest.mark.slow
def test_harness_command_line(tasks: tuple[Path, dict[str, Path]], tmp_path: Path, rwkv: nn.Module) -> None:
    """The documented command: ``python -m rwkvkit.eval.harness run --model rwkvkit ...``."""
    import subprocess
    import sys

    task_dir, files = tasks
    path = tmp_path / "model.pth"
    torch.save(random_rwkv4_state_dict(CFG, seed=11), path)
    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run(
        [sys.executable, "-m", "rwkvkit.eval.harness", "run", "--model", "rwkvkit",
         "--model_args", f"pretrained={path},tokenizer=byte", "--tasks", "lambada_local",
         "--include_path", str(task_dir), "--batch_size", "2", "--output_path", str(tmp_path / "out")],
        cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    lam = evaluate_lambada(Scorer(rwkv, ByteTokenizer()), read_lambada(files["lambada"]))
    results = json.loads(next((tmp_path / "out").rglob("results*.json")).read_text())["results"][
        "lambada_local"
    ]
    assert results["perplexity,none"] == pytest.approx(lam["ppl"], rel=1e-6)


def test_harness_agrees_with_its_own_hugging_face_runner(
    tasks: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    """The real peer: the harness's ``hf`` model (transformers' RwkvForCausalLM + the 20B tokenizer)
    on the same weights scores the same tasks the same way. Tolerance: transformers' RWKV and
    ours agree to ~1e-5 in the logits (float32), so perplexities get 1e-4 relative; accuracies on
    these few examples must be equal."""
    pytest.importorskip("accelerate")  # the harness's hf runner imports it
    import lm_eval.models.huggingface  # noqa: F401  (registers "hf")
    from transformers import PreTrainedTokenizerFast

    import rwkvkit
    from rwkvkit.convert import convert

    vocab = Path(rwkvkit.__file__).parent / "data" / "vocab" / "20B_tokenizer.json"  # package data
    cfg = RWKV4Config(vocab_size=50277, n_layer=2, n_embd=32, ffn_dim=64)
    pth, hf_dir = tmp_path / "model.pth", tmp_path / "hf"
    torch.save(random_rwkv4_state_dict(cfg, seed=4), pth)
    convert(pth, hf_dir, "hf")
    PreTrainedTokenizerFast(
        tokenizer_file=str(vocab),
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    ).save_pretrained(hf_dir)
    task_dir, _ = tasks
    names = ["piqa_local", "lambada_local", "docs_local"]
    theirs = run_harness(
        "hf",
        task_dir,
        names,
        model_args={"pretrained": str(hf_dir), "dtype": "float32"},
        device="cpu",
        batch_size=2,
    )
    ours = run_harness(
        "rwkvkit", task_dir, names, model_args={"pretrained": str(pth), "tokenizer": "20b"}, batch_size=2
    )
    assert ours["piqa_local"]["acc"] == theirs["piqa_local"]["acc"]
    assert ours["piqa_local"]["acc_norm"] == theirs["piqa_local"]["acc_norm"]
    assert ours["lambada_local"]["acc"] == theirs["lambada_local"]["acc"]
    assert ours["lambada_local"]["perplexity"] == pytest.approx(
        theirs["lambada_local"]["perplexity"], rel=1e-4
    )
    assert ours["docs_local"]["bits_per_byte"] == pytest.approx(
        theirs["docs_local"]["bits_per_byte"], rel=1e-4
    )
