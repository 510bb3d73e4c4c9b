"""Write a tiny random-weight llama GGUF (~0.5 MB) for fast tests.

Usable by any test suite: `write_tiny_gguf(tmp_path / "tiny.gguf")`. It needs the `gguf`
and `numpy` packages (imported here, not by the plugin's entry module).
"""

from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

# SentencePiece pieces besides the 256 byte tokens: words, letters, and multi-byte
# characters (some whole, some only reachable through byte tokens).
WORDS = ["▁the", "▁a", "▁hello", "▁world", "▁yes", "▁no", "▁cat", "▁dog", "▁is", "▁and",
         "▁name", "▁answer", "▁tool", "▁call", "▁weather", "▁Paris", "▁stop", "▁STOP",
         "é", "ü", "€", "▁café", "日本", "▁", "{", "}", "\"", ":", ",", "[", "]", "<", ">",
         "|", "end", "user", "assistant", "system", "<|", "|>", "\n"]
# Templates of models that think in tags: one that lets the model open the tag, and one
# whose generation prompt opens it; both drop the thinking of earlier answers, as
# DeepSeek-R1's and Qwen3's templates do.
THINK_TEMPLATE = CHATML_TEMPLATE.replace("message['content']",
                                         "message['content'].split('</think>')[-1]")
THINK_OPEN_TEMPLATE = THINK_TEMPLATE.replace("'<|assistant|>'", "'<|assistant|><think>\\n'")
THINK_TOKENS = ["<think>", "</think>"]
# Load options for outputs compared token for token across batch shapes (batched against
# alone, a chunked prompt against a whole one): flash attention sums in half precision in an
# order that depends on the batch, so over a long greedy answer of a random-weight model a
# near tie can flip.
EXACT_OPTIONS = {"flash_attn": "off"}
# Fill-in-the-middle control tokens, declared in the header as llama.cpp reads them.
FIM_TOKENS = {"fim_pre": "<|fim_prefix|>", "fim_suf": "<|fim_suffix|>",
              "fim_mid": "<|fim_middle|>"}
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + \
          [chr(c) for c in range(ord("A"), ord("Z") + 1)] + \
          [str(d) for d in range(10)]


def tiny_vocab(special: list[str] = ()) -> tuple[list[str], list[float], list[int]]:
    """(tokens, scores, token types) of the tiny SentencePiece vocabulary; `special`
    control tokens come last."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [2, 3, 3]  # unknown, control, control
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        types.append(6)  # byte
    for piece in WORDS + LETTERS:
        if piece not in tokens:
            tokens.append(piece)
            types.append(1)  # normal
    tokens += special
    types += [3] * len(special)
    scores = [0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(len(tokens) - 259)]
    return tokens, scores, types


def write_tiny_gguf(
    path,
    chat_template: str | None = CHATML_TEMPLATE,
    embedding: bool = False,
    n_embd: int = 64,
    n_layer: int = 2,
    n_ctx: int = 2048,
    seed: int = 0,
    special_tokens: list[str] = (),
    fim: bool = False,
) -> Path:
    """A random-weight llama model; `embedding=True` marks it mean-pooling (embedding).

    `special_tokens`: control tokens added to the vocabulary (e.g. THINK_TOKENS);
    `fim`: adds the FIM_TOKENS and names them in the header (fill in the middle)."""
    import gguf
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    special = list(special_tokens) + (list(FIM_TOKENS.values()) if fim else [])
    tokens, scores, types = tiny_vocab(special)
    n_vocab = len(tokens)
    n_head, n_head_kv, n_ff = 4, 2, 2 * n_embd
    head_dim = n_embd // n_head

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-random-llama")
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(0)  # all f32
    writer.add_vocab_size(n_vocab)
    if embedding:
        writer.add_pooling_type(gguf.PoolingType.MEAN)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if chat_template:
        writer.add_chat_template(chat_template)
    if fim:
        keys = {"fim_pre": gguf.Keys.Tokenizer.FIM_PRE_ID,
                "fim_suf": gguf.Keys.Tokenizer.FIM_SUF_ID,
                "fim_mid": gguf.Keys.Tokenizer.FIM_MID_ID}
        for name, text in FIM_TOKENS.items():
            writer.add_uint32(keys[name], tokens.index(text))

    def weight(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    writer.add_tensor("token_embd.weight", weight(n_vocab, n_embd, scale=1.0))
    for i in range(n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", weight(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weight(n_head_kv * head_dim, n_embd))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weight(n_head_kv * head_dim, n_embd))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weight(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(n_embd, n_ff))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    writer.add_tensor("output.weight", weight(n_vocab, n_embd, scale=0.1))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


BERT_WORDS = ["hello", "world", "the", "cat", "dog", "a", "is", "and", "sat", "##s", "##ing",
              "on", "mat", "sentence", "second", "longer", "to", "embed", ",", ".", "!", "?"]


def write_tiny_bert_gguf(path, n_embd: int = 32, n_layer: int = 2, n_ctx: int = 512,
                         pooling: str = "mean", seed: int = 0) -> Path:
    """A random-weight BERT (encoder, WordPiece vocabulary): an embedding-only GGUF."""
    import gguf
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    types = [3, 2, 3, 3, 3]
    for word in BERT_WORDS + [chr(c) for c in range(ord("a"), ord("z") + 1)] + \
            ["##" + chr(c) for c in range(ord("a"), ord("z") + 1)]:
        # llama.cpp's WordPiece spelling: "##x" -> "x", a word start "w" -> "\u2581w"
        piece = word[2:] if word.startswith("##") else "\u2581" + word
        if piece not in tokens:
            tokens.append(piece)
            types.append(1)
    n_vocab = len(tokens)
    n_head, n_ff = 4, 2 * n_embd

    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_name("tiny-random-bert")
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_layer_norm_eps(1e-12)
    writer.add_causal_attention(False)
    writer.add_pooling_type({"mean": gguf.PoolingType.MEAN, "cls": gguf.PoolingType.CLS}[pooling])
    writer.add_file_type(0)
    writer.add_token_type_count(2)
    writer.add_tokenizer_model("bert")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_bos_token_id(2)  # [CLS]
    writer.add_sep_token_id(3)
    writer.add_unk_token_id(1)
    writer.add_pad_token_id(0)
    writer.add_mask_token_id(4)
    writer.add_add_bos_token(True)
    writer.add_add_sep_token(True)

    def weight(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def ones():
        return np.ones(n_embd, dtype=np.float32)

    def zeros(n=n_embd):
        return np.zeros(n, dtype=np.float32)

    writer.add_tensor("token_embd.weight", weight(n_vocab, n_embd, scale=1.0))
    writer.add_tensor("token_types.weight", weight(2, n_embd))
    writer.add_tensor("position_embd.weight", weight(n_ctx, n_embd))
    writer.add_tensor("token_embd_norm.weight", ones())
    writer.add_tensor("token_embd_norm.bias", zeros())
    for i in range(n_layer):
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(n_embd, n_embd))
            writer.add_tensor(f"blk.{i}.{name}.bias", zeros())
        writer.add_tensor(f"blk.{i}.attn_output_norm.weight", ones())
        writer.add_tensor(f"blk.{i}.attn_output_norm.bias", zeros())
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.bias", zeros(n_ff))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(n_embd, n_ff))
        writer.add_tensor(f"blk.{i}.ffn_down.bias", zeros())
        writer.add_tensor(f"blk.{i}.layer_output_norm.weight", ones())
        writer.add_tensor(f"blk.{i}.layer_output_norm.bias", zeros())

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
