"""The built-in backbone's tokenizer: one token per character, plus special tokens and a chat template,
as a stock `PreTrainedTokenizerFast` (saved with save_pretrained, loaded with AutoTokenizer).

    from east.backbone.tokenizer import build_tokenizer
    tok = build_tokenizer()
    tok.apply_chat_template([{"role": "user", "content": "Mia has 3 figs and buys 2. How many now?"}],
                            tokenize=False, add_generation_prompt=True)
    # -> '<|user|>Mia has 3 figs and buys 2. How many now?<|end|><|assistant|>'

The end-of-turn marker is the EOS token, so an assistant turn in the template ends exactly like a TRL
prompt/completion row (prompt + completion + eos): training and generation see the same tokens.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD = "<|pad|>"
EOS = "<|end|>"
UNK = "<|unk|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
SPECIAL_TOKENS = (PAD, EOS, UNK, *ROLE_TOKENS.values())

# Printable ASCII plus newline: covers every character of the arith task, its worked solutions and
# the paper's system prompt (backslash and braces of \boxed{} included).
CHARACTERS = "\n" + "".join(chr(c) for c in range(32, 127))

# Role marker, content, end-of-turn; the generation prompt is the bare assistant marker. The
# {% generation %} block lets transformers build assistant masks (TRL assistant_only_loss).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('unsupported role: ' + message['role']) }}"
    "{%- endif -%}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}"
    "{%- else -%}"
    "{{ message['content'] + '<|end|>' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}"
)


def vocabulary() -> dict[str, int]:
    """Token -> id: special tokens first (pad = 0, eos = 1), then the characters."""
    return {token: i for i, token in enumerate((*SPECIAL_TOKENS, *CHARACTERS))}


def build_tokenizer(model_max_length: int = 1024) -> PreTrainedTokenizerFast:
    """A fresh character-level tokenizer with pad/eos/unk, role markers and the chat template."""
    core = Tokenizer(models.WordLevel(vocab=vocabulary(), unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        model_max_length=model_max_length,
        # Batched generation needs prompts flush against the first generated token.
        padding_side="left",
    )
    # Registered as special so they are matched whole before the per-character split.
    tokenizer.add_special_tokens({"additional_special_tokens": list(ROLE_TOKENS.values())})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
