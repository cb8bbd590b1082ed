"""Speed of the local transformers backend (SmolLM2-135M-Instruct on CPU): prints figures only.

    .venv/bin/python benchmarks/local_llm_speed.py [--threads N] [--prompts 8] [--max-tokens 64]

Reports: model load time (conversion from GGUF when the cache is cold, reload otherwise),
generation tokens/s and teacher-forcing (scoring) tokens/s at batch 1 and batch 8. Scoring
tokens/s counts every token of the forward pass (prompt + response), the work actually done.
"""

from __future__ import annotations

import argparse
import time

import torch

from arena_cje.backends.base import PolicySpec
from arena_cje.backends.local_transformers import LocalTransformersBackend

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about rain.",
    "Give me one tip for sleeping better.",
    "Explain what a hash table is.",
    "Name three primary colours.",
    "How do I boil an egg?",
    "What does HTTP stand for?",
    "Suggest a name for a cat.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    start = time.perf_counter()
    backend = LocalTransformersBackend(token_store=None, progress=False, num_threads=args.threads)
    print(f"model load: {time.perf_counter() - start:.2f} s ({backend.source_kind}, {backend.source})")
    print(f"torch threads: {torch.get_num_threads()}")

    prompts = (PROMPTS * (args.prompts // len(PROMPTS) + 1))[: args.prompts]
    policy = PolicySpec("pi_bench", temperature=0.7, system_prompt="You are a helpful assistant.", max_tokens=args.max_tokens)
    seeds = list(range(len(prompts)))
    responses: list[str] = []
    for batch in (1, 8):
        backend.generate_batch_size = batch
        start = time.perf_counter()
        gens = backend.generate_batch(prompts, policy, seeds)
        seconds = time.perf_counter() - start
        tokens = sum(g.n_tokens or 0 for g in gens)
        print(f"generate   batch {batch}: {tokens:5d} tokens in {seconds:6.1f} s = {tokens / seconds:6.1f} tokens/s")
        responses = [g.text for g in gens]

    for batch in (1, 8):
        backend.batch_size = batch
        start = time.perf_counter()
        forced = backend.teacher_force_batch(prompts, responses, policy)
        seconds = time.perf_counter() - start
        scored = sum(t.n_tokens or 0 for t in forced)
        total = scored + sum(int(t.usage.get("prompt_tokens", 0)) for t in forced)
        print(
            f"teacher-force batch {batch}: {total:5d} tokens ({scored} scored) in {seconds:6.2f} s = "
            f"{total / seconds:6.1f} tokens/s ({scored / seconds:6.1f} scored tokens/s)"
        )


if __name__ == "__main__":
    main()
