"""Finding an edit's subject when the client names none: the base model picks it among the
prompt's own spans.

The model reads a few worked examples ("Question: ... / Subject: ...") and then the edit's prompt;
its continuation is decoded greedily but may only spell a span of the prompt (a run of whole
words, trailing punctuation and a possessive "'s" left off), so the answer is always something
the prompt says, never the question's answer. It names the labelled subject exactly for 91.8% of
the 600 ZsRE dev prompts and 91% of the first 300 CounterFact val ones (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from app.lemoe.routing import RouteState, routing

METHOD = "model-span"  # recorded with every inferred subject: how it was found

# Worked examples for the model (not from any benchmark file).
_EXAMPLES = (
    "Question: Who is the chief executive of Acme Corporation?\nSubject: Acme Corporation\n\n"
    "Question: The mother tongue of Danielle Darrieux is\nSubject: Danielle Darrieux\n\n"
    "Question: Which river does the Golden Gate Bridge cross?\nSubject: Golden Gate Bridge\n\n"
)
_MAX_WORDS = 8
_TRAILING = "?.,!:;"
_QUOTES = "\"'“”‘’"


@dataclass(frozen=True)
class InferredSubject:
    text: str  # a span of the prompt, as written there
    method: str = METHOD


def candidate_spans(prompt: str) -> list[str]:
    """Runs of up to 8 whole words of `prompt`, cleaned of what cannot end or start a name; not
    the whole prompt (a subject is what the prompt asks about, not all of it). Where the prompt
    names something (a word with a capital past its first letter of the prompt, or a digit), only
    the runs that include such a word: otherwise the model sometimes names the relation's noun
    ("university" of "What is the university where Gerald Kelly went?"), a key that every such
    question about anyone would match. Such a run must also begin and end at a name: the model,
    decoding greedily, otherwise runs on into the question ("On what date did Anthony Richard
    Blake", "Nebaioth father"), and the subject token check then asks every rewording for those
    words (`_at_name_edges`)."""
    words = [m.span() for m in re.finditer(r"\S+", prompt)]
    texts = [prompt[a:b] for a, b in words]
    naming = [_names(w, first=k == 0) for k, w in enumerate(texts)]
    spans: dict[str, bool] = {}
    for i in range(len(words)):
        for j in range(i, min(i + _MAX_WORDS, len(words))):
            span = _clean(prompt[words[i][0] : words[j][1]])
            if span and (len(words) < 3 or j - i + 1 < len(words)):
                named = any(naming[i : j + 1]) and _at_name_edges(texts, naming, i, j)
                spans[span] = spans.get(span, False) or named
    if any(spans.values()):
        return [span for span, named in spans.items() if named]
    return list(spans)


def _at_name_edges(words: Sequence[str], naming: Sequence[bool], i: int, j: int) -> bool:
    """Whether words i..j begin and end at a name. The prompt's first word may begin one (its
    capital says nothing) only where a name follows at once, or after a short joiner ("Nigel de
    Jong", "Cool & Dre"; not "On what date did ...", "The college Cyril ...")."""
    last = _clean(words[j]) or words[j]
    if not _names(last, first=j == 0):
        return False
    if i > 0:
        return naming[i]
    if j == 0:
        return True
    joiner = len(words[1]) <= 3 and not words[1][:1].isupper()
    return naming[1] or (joiner and j > 1 and naming[2])


def _names(word: str, *, first: bool) -> bool:
    """Whether `word` looks like (part of) a name: a digit, or a capital that is not merely the
    one every prompt's first word has."""
    rest = word[1:] if first else word
    return any(c.isdigit() for c in word) or any(c.isupper() for c in rest)


def _clean(span: str) -> str:
    span = span.rstrip(_TRAILING)
    for possessive in ("'s", "’s"):
        span = span.removesuffix(possessive)
    span = span.strip(_QUOTES)
    # A parenthesis belongs to the span only when it closes there ("USS Leedstown (APA-56)").
    while span.endswith(")") and span.count("(") < span.count(")"):
        span = span[:-1]
    while span.startswith("(") and span.count("(") > span.count(")"):
        span = span[1:]
    return span.strip()


@torch.no_grad()
def infer_subjects(
    model: nn.Module, tokenizer, prompts: Sequence[str], device: torch.device, batch_size: int = 16
) -> list[InferredSubject | None]:
    """The span of each prompt that the base model names as its subject (None: no span)."""
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else newline[0]
    examples = tokenizer(_EXAMPLES)["input_ids"]
    # The worked examples are most of each input and the same in every row: the model reads them
    # once, and each row's own question (after padding, masked out) continues from their cache.
    with routing(RouteState()):
        cached = model(input_ids=torch.tensor([examples], device=device), use_cache=True).cache
    out: list[InferredSubject | None] = []
    for k in range(0, len(prompts), batch_size):
        chunk = list(prompts[k : k + batch_size])
        spelled = [[(tokenizer(" " + s, add_special_tokens=False)["input_ids"] + newline, s) for s in candidate_spans(p)] for p in chunk]
        questions = [tokenizer(f"Question: {p.strip()}\nSubject:", add_special_tokens=False)["input_ids"] for p in chunk]
        width = max(len(q) for q in questions)
        ids = torch.tensor([examples + [pad] * (width - len(q)) + q for q in questions], device=device)
        mask = torch.tensor([[1] * len(examples) + [0] * (width - len(q)) + [1] * len(q) for q in questions], device=device)
        start = ids.shape[1]

        def allowed(row: int, tokens: torch.Tensor, spelled=spelled, start=start) -> list[int]:
            done = tokens[start:].tolist()
            nxt = {seq[len(done)] for seq, _ in spelled[row] if len(seq) > len(done) and seq[: len(done)] == done}
            return sorted(nxt) or [pad]

        cache = copy.deepcopy(cached)
        cache.batch_repeat_interleave(len(chunk))
        longest = max((len(seq) for row in spelled for seq, _ in row), default=1)
        # No route: the base model alone reads the examples (and no expert sees this pass).
        with routing(RouteState()):
            generated = model.generate(
                input_ids=ids,
                attention_mask=mask,
                cache=cache,
                max_new_tokens=longest,
                do_sample=False,
                prefix_allowed_tokens_fn=allowed,
                eos_token_id=newline[-1],
                pad_token_id=pad,
                temperature=None,
                top_p=None,
                top_k=None,
            )
        for row, tokens in enumerate(generated[:, start:].tolist()):
            named = {tuple(seq): s for seq, s in spelled[row]}
            hit = next((named[tuple(tokens[:n])] for n in range(len(tokens), 0, -1) if tuple(tokens[:n]) in named), None)
            out.append(None if hit is None else InferredSubject(hit))
    return out
