"""HTTP client for the rollout replicas (vLLM OpenAI servers) that the RL loop on trainer rank 0 drives.

Dependency-free (``urllib`` + a thread pool), so the trainer image needs no HTTP library.

* ``generate`` sends one ``/v1/completions`` request per prompt (``n`` samples each, prompt given
  as token ids, ``return_token_ids`` and ``logprobs=0``: vLLM's logprob of each sampled token),
  round-robin over the replicas, and returns the samples in prompt order.
* Each sample records the weight version that generated it: the replica's ``/weight_info`` read
  just before the request. Versions change only between ``pause`` and ``resume`` (the weight
  sync), which this same loop drives, so the version read before generation is the one used.
* ``pause``/``resume`` and the ``post`` helper are the RL-API calls ``WeightSync`` builds on;
  they need the server started with ``VLLM_SERVER_DEV_MODE=1`` (``server_plan(weight_sync=True)``).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


class RolloutError(RuntimeError):
    """A rollout replica answered with an error or could not be reached."""


@dataclass(frozen=True)
class Sample:
    """One sampled response."""

    token_ids: list[int]  # the response only
    text: str
    logprobs: list[float]  # vLLM's logprob of each sampled token, as it sampled it
    finish_reason: str
    weight_version: int | None


def parse_version(value: object) -> int | None:
    """vLLM reports the version as a string ("default" before the first sync)."""
    try:
        return int(str(value))
    except ValueError:
        return None


class RolloutClient:
    """Generation and control calls against every rollout replica."""

    def __init__(self, urls: list[str], model_name: str, *, timeout_s: float = 600.0, max_workers: int = 16) -> None:
        if not urls:
            raise ValueError("RolloutClient needs at least one rollout URL")
        self.urls = [u.rstrip("/") for u in urls]
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.max_workers = max_workers

    # -- plumbing -------------------------------------------------------------------------------

    def request(
        self,
        url: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        method: str | None = None,
        query: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """One JSON request; returns the decoded body (or the text when it is not JSON)."""
        full = url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            full,
            data=data,
            method=method or ("GET" if body is None else "POST"),
            headers={"content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout_s or self.timeout_s) as resp:
                raw = resp.read().decode()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:2000]
            raise RolloutError(f"{req.get_method()} {full}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise RolloutError(f"{req.get_method()} {full}: {exc}") from None
        try:
            return json.loads(raw) if raw else None
        except json.JSONDecodeError:
            return raw

    def post(self, url: str, path: str, body: dict[str, Any] | None = None, **kw: Any) -> Any:
        return self.request(url, path, body if body is not None else {}, method="POST", **kw)

    def each(self, fn: Any) -> list[Any]:
        """``fn(url)`` for every replica in parallel; results in ``urls`` order (first error raised)."""
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(self.urls))) as pool:
            return list(pool.map(fn, self.urls))

    # -- lifecycle ------------------------------------------------------------------------------

    def wait_ready(self, timeout_s: float = 600.0) -> None:
        """Block until every replica answers ``/health`` with 200."""
        deadline = time.monotonic() + timeout_s
        pending = list(self.urls)
        while pending:
            still = []
            for url in pending:
                try:
                    with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                        if resp.status != 200:
                            still.append(url)
                except (urllib.error.URLError, OSError):
                    still.append(url)
            pending = still
            if pending:
                if time.monotonic() > deadline:
                    raise RolloutError(f"rollout replicas not ready after {timeout_s:.0f}s: {pending}")
                time.sleep(0.5)

    def pause(self, mode: str = "wait") -> None:
        """Stop generation on every replica (``wait``: let in-flight requests finish first)."""
        self.each(lambda u: self.post(u, "/pause", query={"mode": mode}))

    def resume(self) -> None:
        self.each(lambda u: self.post(u, "/resume"))

    def weight_versions(self) -> list[int | None]:
        """Each replica's current weight version (None before the first sync)."""
        return self.each(lambda u: parse_version(self.request(u, "/weight_info")["weight_version"]))

    def metrics_text(self) -> list[str]:
        """The Prometheus ``/metrics`` body of each replica, in ``urls`` order."""
        return self.each(lambda u: str(self.request(u, "/metrics", timeout_s=30)))

    # -- generation -----------------------------------------------------------------------------

    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        n: int = 1,
        max_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        *,
        stop_token_ids: Sequence[int] | None = None,
        ignore_eos: bool = False,
    ) -> list[list[Sample]]:
        """``n`` samples for each prompt, in prompt order; prompts go round-robin over the replicas.

        With ``seed`` set, prompt ``i`` is sampled with seed ``seed + i`` (vLLM seeds per request),
        so a batch is reproducible whatever the replica count.
        """
        versions = dict(zip(self.urls, self.weight_versions(), strict=True))

        def one(i: int) -> list[Sample]:
            url = self.urls[i % len(self.urls)]
            body: dict[str, Any] = {
                "model": self.model_name,
                "prompt": list(prompt_token_ids[i]),
                "n": n,
                "max_tokens": max_tokens,
                "temperature": temperature,
                "top_p": top_p,
                "logprobs": 0,
                "return_token_ids": True,
                "ignore_eos": ignore_eos,
            }
            if seed is not None:
                body["seed"] = seed + i
            if stop_token_ids:
                body["stop_token_ids"] = list(stop_token_ids)
            return parse_completion(self.post(url, "/v1/completions", body), n, versions[url])

        if not prompt_token_ids:
            return []
        workers = min(self.max_workers, len(prompt_token_ids))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, range(len(prompt_token_ids))))


def parse_completion(resp: dict[str, Any], n: int, weight_version: int | None) -> list[Sample]:
    """The ``n`` choices of one single-prompt ``/v1/completions`` response, by choice index."""
    choices = sorted(resp.get("choices") or [], key=lambda c: int(c["index"]))
    if len(choices) != n:
        raise RolloutError(f"expected {n} choices, got {len(choices)}: {str(resp)[:500]}")
    out = []
    for c in choices:
        token_ids = c.get("token_ids")
        if token_ids is None:
            raise RolloutError("vLLM returned no token_ids (return_token_ids needs vLLM >= 0.10)")
        lps = (c.get("logprobs") or {}).get("token_logprobs") or []
        if len(lps) != len(token_ids):
            raise RolloutError(f"{len(lps)} logprobs for {len(token_ids)} tokens")
        out.append(
            Sample(
                token_ids=[int(t) for t in token_ids],
                text=str(c.get("text") or ""),
                logprobs=[float(x) if x is not None else float("nan") for x in lps],
                finish_reason=str(c.get("finish_reason")),
                weight_version=weight_version,
            )
        )
    return out
