"""Build a tiny random-weight Llama model and its tokenizer for the real-vLLM test.

Run with the python of the vLLM virtualenv (it needs torch, tokenizers, transformers):

    <venv>/bin/python tests/vllm_real/make_model.py OUTDIR

No model can be downloaded in the test environment, so this trains a byte-level BPE
tokenizer on a small built-in corpus and saves a Llama config with random weights drawn
from a fixed seed. The output is deterministic for a given set of library versions and
weighs well under a megabyte.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SEED = 1234
VOCAB_SIZE = 512
BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
SPECIAL_TOKENS = [BOS, EOS, PAD, UNK]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)

CORPUS_LINES = [
    "The quick brown fox jumps over the lazy dog.",
    "An inference server turns prompts into tokens, one step at a time.",
    "Prometheus scrapes metrics over HTTP and stores them as time series.",
    "Counters only go up; gauges go up and down; histograms count in buckets.",
    "The scheduler keeps some requests running and others waiting for blocks.",
    "When the key-value cache is full, a running request may be preempted.",
    "Time to first token measures how long a client waits for the first word.",
    "Inter-token latency is the gap between two consecutive generated tokens.",
    "Hello, world! How are you today? I am fine, thank you.",
    "user: please write a short poem about the sea.",
    "assistant: the sea is wide, the sea is deep, the waves roll in and never sleep.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 256 1024 65536.",
    "Punctuation: ( ) [ ] { } < > = + - * / % & | ^ ~ ! ? . , ; : ' \" # @ $ _",
    "A small model with random weights still produces tokens at a steady rate.",
    "Load tests send many requests at once and watch the queue grow and shrink.",
]


def corpus() -> list[str]:
    # Repeat with small variations so the BPE trainer sees enough pair statistics.
    lines: list[str] = []
    for i in range(20):
        for line in CORPUS_LINES:
            lines.append(f"{line} ({i})")
    return lines


def build_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, bos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        chat_template=CHAT_TEMPLATE,
        model_max_length=256,
    )


def build_model(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    vocab_size = len(tokenizer)
    bos_id = tokenizer.convert_tokens_to_ids(BOS)
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    pad_id = tokenizer.convert_tokens_to_ids(PAD)
    assert isinstance(bos_id, int) and isinstance(eos_id, int) and isinstance(pad_id, int)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=256,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    model.generation_config.bos_token_id = bos_id
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = pad_id
    return model


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUTDIR", file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    if model.config.vocab_size != len(tokenizer):
        raise SystemExit(
            f"vocab mismatch: config {model.config.vocab_size} != tokenizer {len(tokenizer)}"
        )
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(
        f"saved tiny llama to {out}: vocab={len(tokenizer)} "
        f"bos={model.config.bos_token_id} eos={model.config.eos_token_id}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
