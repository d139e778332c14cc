"""llama.cpp side of `scripts/bench-lm`: the same measurements as
models/examples/bench_lm.rs, through llama-cpp-python, printed as JSON.

Usage: python bench_llamacpp.py MODEL.gguf THREADS PROMPT_SOURCE_FILE
"""
import json
import resource
import sys
import time

from llama_cpp import Llama

path, threads, source = sys.argv[1], int(sys.argv[2]), sys.argv[3]
t0 = time.perf_counter()
llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=2048, n_batch=512,
            verbose=False, logits_all=False)
load_ms = (time.perf_counter() - t0) * 1e3
code = open(source, encoding="utf-8").read()
prompt = llm.tokenize(code.encode(), add_bos=False, special=False)[:512]
assert len(prompt) == 512

prefill_s = float("inf")
for _ in range(3):
    llm.reset()
    t = time.perf_counter()
    llm.eval(prompt)
    prefill_s = min(prefill_s, time.perf_counter() - t)


def greedy_steps(n):
    """Decode n tokens greedily after a 16-token prompt; returns seconds per step."""
    llm.reset()
    llm.eval(prompt[:16])
    t = time.perf_counter()
    for _ in range(n):
        tok = int(llm.scores[llm.n_tokens - 1].argmax())
        llm.eval([tok])
    return (time.perf_counter() - t) / n


step_s = greedy_steps(128)

before = "<|fim_prefix|>" + code[:1500] + "<|fim_suffix|>\n<|fim_middle|>"
after = "<|fim_prefix|>" + code[:1500] + "x<|fim_suffix|>\n<|fim_middle|>"


def fim(text):
    # llama-cpp-python reuses the KV cache for the longest common token prefix.
    t = time.perf_counter()
    llm.create_completion(text, max_tokens=16, temperature=0.0, top_k=1)
    return (time.perf_counter() - t) * 1e3


warm, cold = float("inf"), float("inf")
for _ in range(3):
    llm.reset()
    fim(before)
    warm = min(warm, fim(after))
    llm.reset()
    cold = min(cold, fim(after))

print(json.dumps({
    "load_ms": load_ms,
    "prefill_tokens_per_s": 512 / prefill_s,
    "decode_tokens_per_s": 1 / step_s,
    "greedy_step_ms": step_s * 1e3,
    "fim_warm_ms": warm,
    "fim_cold_ms": cold,
    "warm_over_cold": warm / cold,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
