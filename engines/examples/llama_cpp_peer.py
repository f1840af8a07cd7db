"""llama.cpp (llama-cpp-python) on the same GGUF and token ids as `llm_bench --peer`.

Run by llm_bench with the python of the venv `.ci/llama-cpp-venv` builds; reads a JSON job
file (argv[1]) and prints one JSON line:

  job:    {"model": PATH, "prompt_ids": [...], "decode_tokens": N, "runs": N, "threads": N}
  output: {"version", "load_secs", "prefill_tokens", "prefill_tok_per_sec",
           "decode_tokens", "decode_tok_per_sec"}

Prefill: the prompt's ids evaluated in one batch (tokens / seconds). Decode: N greedy
tokens, each evaluated alone (end-of-generation tokens do not stop it), tokens / seconds.
Each is the best of `runs`. The model's own sampling is bypassed: argmax of the logits.
"""

import json
import sys
import time

import llama_cpp
import numpy as np
from llama_cpp import Llama


def last_logits(m):
    """The logits after the last evaluated token (llama-cpp-python keeps them in `scores`
    only with logits_all, which would compute every position's)."""
    ptr = llama_cpp.llama_get_logits_ith(m.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(m.n_vocab(),)).copy()


def main():
    job = json.load(open(sys.argv[1]))
    ids = job["prompt_ids"]
    n_dec = int(job["decode_tokens"])
    t0 = time.perf_counter()
    m = Llama(
        model_path=job["model"],
        n_ctx=len(ids) + n_dec + 8,
        n_batch=max(512, len(ids)),
        n_threads=int(job["threads"]),
        n_threads_batch=int(job["threads"]),
        verbose=False,
    )
    load = time.perf_counter() - t0
    best_prefill = float("inf")
    best_decode = float("inf")
    for _ in range(int(job["runs"])):
        m.reset()
        t = time.perf_counter()
        m.eval(ids)
        best_prefill = min(best_prefill, time.perf_counter() - t)
        logits = last_logits(m)
        t = time.perf_counter()
        for _ in range(n_dec):
            tok = int(logits.argmax())
            m.eval([tok])
            logits = last_logits(m)
        best_decode = min(best_decode, time.perf_counter() - t)
    print(
        json.dumps(
            {
                "version": llama_cpp.__version__,
                "load_secs": load,
                "prefill_tokens": len(ids),
                "prefill_tok_per_sec": len(ids) / best_prefill,
                "decode_tokens": n_dec,
                "decode_tok_per_sec": n_dec / best_decode,
            }
        )
    )


if __name__ == "__main__":
    main()
