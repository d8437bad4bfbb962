"""Serve a mixture-of-experts export (``Qwen3NextForCausalLM`` with ``num_experts > 0``) on vLLM CPU with
MTP speculation; print JSON.

``python -m tests.trainer.vllm_moe_probe DIR MAX_TOKENS PROMPTS_JSON``, run as a subprocess by
test_moe.py (stock vLLM, no plugins: a real MoE needs none). Float32, greedy, one request at a time,
k = 1; the speculative-decoding counters are read from vLLM's own metrics.
"""

from __future__ import annotations

import json
import sys


def _total(metrics: list, name: str) -> float:
    return sum(float(m.value) for m in metrics if m.name == name and hasattr(m, "value"))


def main() -> None:
    from vllm import LLM, SamplingParams

    model_dir, max_tokens, prompts = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    llm = LLM(
        model=model_dir,
        speculative_config={"method": "mtp", "num_speculative_tokens": 1},
        enforce_eager=True,
        dtype="float32",
        max_model_len=256,
        disable_log_stats=False,
        seed=0,
        skip_tokenizer_init=True,
    )
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, logprobs=0, ignore_eos=True, detokenize=False)
    results = []
    for ids in prompts:
        out = llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)[0].outputs[0]
        lps = [lp[t].logprob for t, lp in zip(out.token_ids, out.logprobs or [], strict=False)]
        results.append({"prompt": ids, "tokens": list(out.token_ids), "logprobs": lps})
    m = llm.get_metrics()
    summary = {
        "results": results,
        "drafts": _total(m, "vllm:spec_decode_num_drafts"),
        "accepted": _total(m, "vllm:spec_decode_num_accepted_tokens"),
    }
    print("VLLM_MOE_RESULT " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
