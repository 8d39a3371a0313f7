"""Write a tiny random-weight Llama as a GGUF file for the real llama.cpp test.

Run with the python of the xllamacpp virtualenv (it needs gguf and numpy):

    <venv>/bin/python tests/llamacpp_real/make_model.py OUT.gguf

No model can be downloaded in the test environment, so this writes one: a byte-level BPE
vocabulary (GPT-2's 256 byte symbols, five merges, three control tokens), two blocks of
width 64 with weights drawn from a fixed seed, and a chat template. The file weighs about
470 KB; llama.cpp generates garbage with it, and exactly as many tokens as asked when told
to ignore the end-of-sequence token.
"""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np

SEED = 1234
N_CTX = 512
N_EMBD = 64
N_FF = 128
N_HEAD = 4
N_HEAD_KV = 4
N_LAYER = 2
HEAD_DIM = N_EMBD // N_HEAD

MERGES = ["Ġ t", "h e", "i n", "e r", "a n"]
CONTROL = ["<|bos|>", "<|eos|>", "<|pad|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|bos|>{{ m['role'] }}\n{{ m['content'] }}<|eos|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|bos|>assistant\n{% endif %}"
)


def byte_symbols() -> list[str]:
    """GPT-2's byte-level symbols, in byte order: printable Latin-1 bytes stand for
    themselves, the other 68 for code points 256, 257, ... in byte order."""
    kept = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)}
    symbols: list[str] = []
    extra = 0
    for b in range(256):
        if b in kept:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def vocabulary() -> tuple[list[str], list[int]]:
    tokens = byte_symbols() + [m.replace(" ", "") for m in MERGES] + CONTROL
    types = [gguf.TokenType.NORMAL] * (len(tokens) - len(CONTROL)) + \
        [gguf.TokenType.CONTROL] * len(CONTROL)
    return tokens, [int(t) for t in types]


def tensors(n_vocab: int) -> dict[str, np.ndarray]:
    """The model's weights; numpy shapes are ggml's reversed."""
    rng = np.random.default_rng(SEED)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def norm() -> np.ndarray:
        return np.ones(N_EMBD, dtype=np.float32)

    out = {"token_embd.weight": weight(n_vocab, N_EMBD), "output_norm.weight": norm(),
           "output.weight": weight(n_vocab, N_EMBD)}
    for i in range(N_LAYER):
        out |= {
            f"blk.{i}.attn_norm.weight": norm(),
            f"blk.{i}.attn_q.weight": weight(N_EMBD, N_EMBD),
            f"blk.{i}.attn_k.weight": weight(N_HEAD_KV * HEAD_DIM, N_EMBD),
            f"blk.{i}.attn_v.weight": weight(N_HEAD_KV * HEAD_DIM, N_EMBD),
            f"blk.{i}.attn_output.weight": weight(N_EMBD, N_EMBD),
            f"blk.{i}.ffn_norm.weight": norm(),
            f"blk.{i}.ffn_gate.weight": weight(N_FF, N_EMBD),
            f"blk.{i}.ffn_up.weight": weight(N_FF, N_EMBD),
            f"blk.{i}.ffn_down.weight": weight(N_EMBD, N_FF),
        }
    return out


def write(path: Path) -> None:
    tokens, types = vocabulary()
    bos, eos, pad = (tokens.index(t) for t in CONTROL)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(len(tokens))
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_pad_token_id(pad)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    for name, array in tensors(len(tokens)).items():
        w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUT.gguf", file=sys.stderr)
        return 2
    out = Path(argv[1])
    tokens, _ = vocabulary()
    if len(tokens) != 264 or tokens.index("<|bos|>") != 261:
        raise SystemExit(f"vocabulary of {len(tokens)} tokens, bos at {tokens.index('<|bos|>')}")
    write(out)
    print(f"wrote {out}: {out.stat().st_size} bytes, vocab={len(tokens)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
