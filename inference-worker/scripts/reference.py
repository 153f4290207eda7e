#!/usr/bin/env python3
"""Reference numbers from llama.cpp (via llama-cpp-python) for the worker's parity tests and bench.

Setup (compiles llama.cpp, ~15+ minutes on 2 cores):
    nice -n 10 pip install llama-cpp-python
    cargo xtask fetch-models            # SmolLM2-135M-Instruct.Q4_1.gguf into the model cache

Commands:
    python3 inference-worker/scripts/reference.py fixtures [--threads N] [--steps 32]
        Writes inference-worker/tests/fixtures/smollm2_<i>.json for five prompts: the prompt
        text, llama.cpp's prompt token ids, and for each greedy step the chosen id and the top
        20 (id, logit) pairs. Also writes smollm2_chat_template.json: the model's own chat
        template rendered by Python jinja2 (as Hugging Face does) for a few conversations.
    python3 inference-worker/scripts/reference.py bench [--threads N] [--prompt-tokens 128] [--gen 64]
        Prints one JSON line: llama.cpp prefill and decode tokens/second on SmolLM2.

The context is llama-cpp-python's default, spelled out: flash attention OFF
(flash_attn=False maps to LLAMA_FLASH_ATTN_TYPE_DISABLED, unlike llama.cpp's CLI default "auto")
and an f16 KV cache. The worker reproduces that path bit for bit (src/numerics.rs); with flash
attention on, llama.cpp's own logits move by up to ~0.9 on these prompts.

The model path is $SWITCHYARD_MODELS (default ~/.cache/switchyard/models)/SmolLM2-135M-Instruct.Q4_1.gguf.
"""
import argparse
import json
import os
import sys
import time

MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"

PROMPTS = [
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "The quick brown fox jumps over the lazy dog. The quick brown fox",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village at the edge of a great forest, there lived",
]

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "  Bye  "}],
]


def models_dir():
    return os.environ.get("SWITCHYARD_MODELS") or os.path.expanduser("~/.cache/switchyard/models")


def load(threads, logits_all=False):
    from llama_cpp import Llama
    return Llama(model_path=os.path.join(models_dir(), MODEL), n_ctx=2048, n_threads=threads,
                 n_threads_batch=threads, n_batch=512, logits_all=logits_all, flash_attn=False, verbose=False)


def last_logits(llm):
    """Logits of the last evaluated token, read from llama.cpp's context directly."""
    import numpy as np
    import llama_cpp
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float32).copy()


def fixtures(args):
    import numpy as np
    import llama_cpp
    llm = load(args.threads)
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
    os.makedirs(out_dir, exist_ok=True)
    for i, prompt in enumerate(PROMPTS):
        ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        llm.reset()
        llm.eval(ids)
        steps = []
        for _ in range(args.steps):
            logits = last_logits(llm)
            top = np.argsort(-logits)[:20]
            gid = int(top[0])
            steps.append({"id": gid, "top": [[int(t), float(logits[t])] for t in top]})
            if gid == llm.token_eos():
                break
            llm.eval([gid])
        path = os.path.join(out_dir, f"smollm2_{i}.json")
        with open(path, "w") as f:
            json.dump({"model": MODEL, "llama_cpp_python": llama_cpp.__version__, "prompt": prompt,
                       "prompt_ids": ids, "steps": steps}, f)
        print("wrote", path, "greedy:", repr(llm.detokenize([s["id"] for s in steps]).decode(errors="replace")))
    # The chat template as Hugging Face renders it (jinja2, trim_blocks + lstrip_blocks).
    import jinja2
    tpl = llm.metadata.get("tokenizer.chat_template")
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    t = env.from_string(tpl)
    rendered = [t.render(messages=m, add_generation_prompt=True, bos_token="", eos_token="")
                for m in CONVERSATIONS]
    path = os.path.join(out_dir, "smollm2_chat_template.json")
    with open(path, "w") as f:
        json.dump({"conversations": CONVERSATIONS, "rendered": rendered}, f, indent=1)
    print("wrote", path)


def bench(args):
    llm = load(args.threads)
    words = ("the quick brown fox jumps over the lazy dog " * 200).encode()
    ids = llm.tokenize(words, add_bos=True)[: args.prompt_tokens]
    llm.reset()
    llm.eval(ids[:8])  # warm-up
    best_p = 0.0
    for _ in range(3):
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids)
        best_p = max(best_p, len(ids) / (time.perf_counter() - t))
    import numpy as np
    t = time.perf_counter()
    for _ in range(args.gen):
        tok = int(np.argmax(last_logits(llm)))
        llm.eval([tok])
    dec = args.gen / (time.perf_counter() - t)
    print(json.dumps({"engine": "llama.cpp (llama-cpp-python)", "threads": args.threads,
                      "prompt_tokens": len(ids), "prefill_tok_s": round(best_p, 1),
                      "gen_tokens": args.gen, "decode_tok_s": round(dec, 1)}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", choices=["fixtures", "bench"])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen", type=int, default=64)
    args = ap.parse_args()
    {"fixtures": fixtures, "bench": bench}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
