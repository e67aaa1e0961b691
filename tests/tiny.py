"""Tiny random causal LMs (Llama and the other supported layouts) + a byte-level tokenizer built in
code, saved as local HF model dirs."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GemmaConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    OPTConfig,
    Phi3Config,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

EOS = "<|im_end|>"
# ChatML, as SmolLM2-Instruct's (the tokens are plain text to the tiny tokenizer but for EOS).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "The capital of France is Paris. The capital of Germany is Berlin.",
    "Who wrote the novel? What is the name of the river? When was it founded?",
    "The quick brown fox jumps over the lazy dog. Answer the question briefly.",
]


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(vocab_size: int, *, seed: int = 0, layers: int = 4) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        # Large enough embeddings that logits can be confident (the default 0.02 caps them).
        initializer_range=0.3,
    )
    return LlamaForCausalLM(config).eval()


# Shared by every tiny config below: the special ids come from the tokenizer afterwards (some
# defaults, Phi-3's pad 32000, lie outside a tiny vocabulary).
_COMMON = {"initializer_range": 0.3, "tie_word_embeddings": True, "pad_token_id": None, "bos_token_id": None, "eos_token_id": None}
_DECODER = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "max_position_embeddings": 256}


def _tiny_configs(vocab_size: int) -> dict[str, PretrainedConfig]:
    """A tiny config per supported non-Llama architecture, keyed by its `model_type`."""
    return {
        # Layers 2.. attend through a 4-token sliding window: the trainer's views must keep each
        # layer's own attention kind.
        "qwen2": Qwen2Config(
            vocab_size=vocab_size,
            num_key_value_heads=2,
            use_sliding_window=True,
            sliding_window=4,
            max_window_layers=2,
            **_DECODER,
            **_COMMON,
        ),
        "mistral": MistralConfig(vocab_size=vocab_size, num_key_value_heads=2, sliding_window=None, **_DECODER, **_COMMON),
        "gemma": GemmaConfig(vocab_size=vocab_size, num_key_value_heads=2, head_dim=16, **_DECODER, **_COMMON),
        "phi3": Phi3Config(vocab_size=vocab_size, num_key_value_heads=2, **_DECODER, **_COMMON),
        "gpt_neox": GPTNeoXConfig(vocab_size=vocab_size, **_DECODER, **_COMMON),
        "gpt2": GPT2Config(vocab_size=vocab_size, n_embd=64, n_inner=128, n_layer=4, n_head=4, n_positions=256, **_COMMON),
    }


ARCHITECTURES = ("llama", "qwen2", "mistral", "gemma", "phi3", "gpt_neox", "gpt2")


def build_tiny_arch_model(arch: str, tokenizer: PreTrainedTokenizerFast, *, seed: int = 0) -> PreTrainedModel:
    """A tiny random causal LM of `arch` (one of ARCHITECTURES) with the tokenizer's special ids."""
    if arch == "llama":
        model = build_tiny_model(len(tokenizer), seed=seed)
    else:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(_tiny_configs(len(tokenizer))[arch]).eval()
    return _with_special_ids(model, tokenizer)


def build_unsupported_model(tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    """A tiny OPT: a causal LM whose layout (model.decoder.layers) has no entry in LAYOUTS."""
    torch.manual_seed(0)
    config = OPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        word_embed_proj_dim=32,
        max_position_embeddings=64,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
    )
    return _with_special_ids(AutoModelForCausalLM.from_config(config).eval(), tokenizer)


def _with_special_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_model_dir(path: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> Path:
    """Write `model` + `tokenizer` as a Hugging Face directory (what LEMOE_MODEL_PATH takes)."""
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_model_dir(path: Path, *, seed: int = 0, arch: str = "llama") -> Path:
    """Write a tiny model of `arch` + the tiny tokenizer as a Hugging Face directory."""
    tokenizer = build_tiny_tokenizer()
    return save_model_dir(path, build_tiny_arch_model(arch, tokenizer, seed=seed), tokenizer)
