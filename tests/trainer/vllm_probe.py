"""Run vLLM (CPU, float32, eager) with MTP speculative decoding on an exported model; print JSON.

Run as a subprocess by the parity tests (``python -m tests.trainer.vllm_probe DIR PROMPTS.json``)
so that vLLM's engine processes and global state never touch the pytest process. For each prompt
(a list of token ids) it reports the greedy continuation, the logprob vLLM assigned to every
generated token, and, per request, the speculative-decoding counters (drafts, accepted) read from
vLLM's own metrics.
"""

from __future__ import annotations

import json
import sys


def _counter(metrics: list, name: str) -> float:
    total = 0.0
    for m in metrics:
        if m.name == name and hasattr(m, "value"):
            total += float(m.value)
    return total


def main() -> None:
    from vllm import LLM, SamplingParams

    model_dir, prompts_file, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
    prompts = json.loads(open(prompts_file).read())
    llm = LLM(
        model=model_dir,
        speculative_config={"method": "mtp", "num_speculative_tokens": 1},
        enforce_eager=True,
        dtype="float32",
        max_model_len=512,
        disable_log_stats=False,
        seed=0,
    )
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, logprobs=0, ignore_eos=True, detokenize=False)
    results = []
    for ids in prompts:  # one request at a time, so the counter deltas belong to it
        before = llm.get_metrics()
        out = llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)[0].outputs[0]
        after = llm.get_metrics()
        lps = [lp[t].logprob for t, lp in zip(out.token_ids, out.logprobs or [], strict=False)]
        results.append(
            {
                "tokens": list(out.token_ids),
                "logprobs": lps,
                "drafts": _counter(after, "vllm:spec_decode_num_drafts")
                - _counter(before, "vllm:spec_decode_num_drafts"),
                "accepted": _counter(after, "vllm:spec_decode_num_accepted_tokens")
                - _counter(before, "vllm:spec_decode_num_accepted_tokens"),
            }
        )
    print("VLLM_PROBE_RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
