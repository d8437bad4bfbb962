"""Tokenizer: a small byte-level BPE for tiny models, or the checkpoint's own for imports.

For a tiny model the vocabulary is whatever the job asks for (``tiny.vocabSize``), so we train a
byte-level BPE with ``tokenizers`` on the training corpus itself and save it as a Hugging Face
fast tokenizer (``tokenizer.json`` + ``tokenizer_config.json`` with a ChatML chat template), which
transformers and vLLM load like any hub tokenizer. The same files travel with every checkpoint
and with the export, so a resumed run and the served model tokenise identically.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

EOS = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [EOS, IM_START, IM_END, PAD]

# ChatML, as Qwen uses: the generation prompt opens an assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of exactly ``vocab_size`` entries (special tokens included) when the
    corpus allows; never more, because the embedding table has ``vocab_size`` rows."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"spec.model.source.tiny.vocabSize {vocab_size} is too small for a byte-level BPE; use at least 260"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    assert tok.get_vocab_size() <= vocab_size
    return wrap(tok)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, bos_token=None, unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def load(path: str | Path) -> PreTrainedTokenizerBase:
    """A saved tokenizer directory (ours, or an imported checkpoint's)."""
    p = Path(path)
    if not (p / "tokenizer.json").is_file() and not (p / "tokenizer_config.json").is_file():
        raise FileNotFoundError(
            f"{p}: no tokenizer files (tokenizer.json / tokenizer_config.json); an imported checkpoint "
            "must ship its tokenizer"
        )
    return AutoTokenizer.from_pretrained(str(p))


def save(tok: PreTrainedTokenizerBase, path: str | Path) -> None:
    tok.save_pretrained(str(path))


def im_end_id(tok: PreTrainedTokenizerBase) -> int | None:
    """The end-of-turn token, which is what generation should stop on."""
    tid = tok.convert_tokens_to_ids(IM_END)
    return tid if isinstance(tid, int) and tid != tok.unk_token_id else None
