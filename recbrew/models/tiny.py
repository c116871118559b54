"""recbrew-tiny: a small Llama with a byte-level BPE tokenizer trained on the corpus text, in seconds.

For fast tests and scaling sweeps. Head dimensions stay at 32 or 64, which CPU vLLM supports.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from recbrew import assets
from recbrew.data.corpus import Corpus
from recbrew.data.io import staged_directory
from recbrew.errors import UserError

PRESETS: dict[str, dict] = {
    # hidden / heads = head_dim: 32, 32, 64.
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
             "intermediate_size": 128},
    "small": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 384},
    "base": {"hidden_size": 256, "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 2,
             "intermediate_size": 768},
}
SPECIAL = "<|endoftext|>"
#: A plain chat format, so OpenAI chat routes work against a served recbrew-tiny.
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")
#: Lines that make every shipped answer word a single token after "Answer:".
_ANSWERS = [f"Answer: {w}" for w in ("yes", "no", "A", "B", "C", "D", "E", "F")]


def corpus_texts(corpus_dir: str | Path, limit: int = 50_000) -> Iterator[str]:
    """Text the tokenizer learns from: profiles, item text, the shipped templates and task wording."""
    corpus = Corpus.load(corpus_dir, tables=["members", "items"])
    for table, cols in ((corpus.members, ("name", "headline", "title", "company", "industry", "location")),
                        (corpus.items, ("title", "text", "topic", "company"))):
        for col in cols:
            if col in table.column_names:
                yield from (v for v in table[col].to_pylist()[:limit] if v)
        if "skills" in table.column_names:
            yield from (", ".join(v) for v in table["skills"].to_pylist()[:limit] if v)
    for path in sorted(assets.path("prompts").rglob("*.j2")):
        yield path.read_text()
    for path in sorted(assets.path("tasks").rglob("*.yaml")):
        yield path.read_text()
    for _ in range(200):
        yield from _ANSWERS


def train_tokenizer(texts, vocab_size: int = 4096):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[SPECIAL], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    for line in _ANSWERS:
        word = " " + line.split(": ")[1]
        if len(tok.encode(word).ids) != 1:
            raise UserError(f"the trained tokenizer splits {word!r}; raise the vocabulary size")
    return tok


def build_tiny(corpus_dir: str | Path, out: str | Path, preset: str = "small", seed: int = 0,
               vocab_size: int = 4096, force: bool = False) -> Path:
    """Train the tokenizer, initialize the model (seeded) and save both as one HF folder."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"{out} already exists and is not empty; pass --force to replace it")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = train_tokenizer(corpus_texts(corpus_dir), vocab_size)
    special = tok.token_to_id(SPECIAL)
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), max_position_embeddings=8192, tie_word_embeddings=True,
                         bos_token_id=special, eos_token_id=special, pad_token_id=special, **PRESETS[preset])
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with staged_directory(out) as staging:
        model.save_pretrained(staging)
        hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=SPECIAL, pad_token=SPECIAL)
        hf_tok.chat_template = CHAT_TEMPLATE
        hf_tok.save_pretrained(staging)
    return out
