"""Finding an edit's subject when the client names none: the base model picks it among the
prompt's own spans.

The model reads a few worked examples ("Question: ... / Subject: ...") and then the edit's prompt;
its continuation is decoded greedily but may only spell a span of the prompt (a run of whole
words, trailing punctuation and a possessive "'s" left off), so the answer is always something
the prompt says, never the question's answer; where it names part of a name, the span is widened
to the whole name (`whole_name`). It names the labelled subject exactly for 96.5% of the 600 ZsRE
dev prompts and 96.0% of the first 300 CounterFact val ones (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
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
# Lower-case words that may stand inside a name, between two naming words ("County of Kara Kara",
# "Rogério de Almeida Florindo dos Santos", "Procter & Gamble").
_NAME_JOINERS = frozenset("of the and & de del della der des di do dos da du la le van von y al el bin ibn".split())
# Capitalised first words that are a question's or a sentence's, not a name's.
_QUESTION_WORDS = frozenset(
    "what which who whom whose when where why how the a an in on at of for to by from with about after before during since "
    "is was are were be did does do has have had can could would should will shall may might must "
    "name list tell give say explain describe please answer according "
    "i we you he she they it this that these those there here my our your his her their its if as and but so".split()
)


@dataclass(frozen=True)
class InferredSubject:
    text: str  # a span of the prompt, as written there
    method: str = METHOD


def candidate_spans(prompt: str, rare_word: Callable[[str], bool] | None = None) -> list[str]:
    """Runs of up to 8 whole words of `prompt`, cleaned of what cannot end or start a name; not
    the whole prompt (a subject is what the prompt asks about, not all of it). Where the prompt
    names something (a word with a capital past its first letter of the prompt, or a digit), only
    the runs that include such a word: otherwise the model sometimes names the relation's noun
    ("university" of "What is the university where Gerald Kelly went?"), a key that every such
    question about anyone would match. Such a run must also begin and end at a name: the model,
    decoding greedily, otherwise runs on into the question ("On what date did Anthony Richard
    Blake", "Nebaioth father"), and the subject token check then asks every rewording for those
    words (`_begins_at_a_name`). Given `rare_word`, a run may also end in rare lower-case words that
    follow a name ("Ariadne musica", "Isoetes sinensis"): the model, not a rule, then tells them
    from a verb ("Bully Beatdown debuted"; `_continuing_words`)."""
    words = [m.span() for m in re.finditer(r"\S+", prompt)]
    texts = [prompt[a:b] for a, b in words]
    naming = _naming_words(texts)
    may_end = [n or c for n, c in zip(naming, _continuing_words(texts, naming, rare_word), strict=True)]
    spans: dict[str, bool] = {}
    for i in range(len(words)):
        for j in range(i, min(i + _MAX_WORDS, len(words))):
            span = _clean(prompt[words[i][0] : words[j][1]])
            if span and (len(words) < 3 or j - i + 1 < len(words)):
                named = any(naming[i : j + 1]) and may_end[j] and _begins_at_a_name(texts, naming, i, j)
                spans[span] = spans.get(span, False) or named
    if any(spans.values()):
        return [span for span, named in spans.items() if named]
    return list(spans)


def _begins_at_a_name(words: Sequence[str], naming: Sequence[bool], i: int, j: int) -> bool:
    """Whether words i..j begin at a name. The prompt's first word, unless it names by itself
    ("M5 motorway is in"), may begin one (its capital says nothing) only where a name follows at
    once, or after a short joiner ("Nigel de Jong", "Cool & Dre"; not "On what date did ...",
    "The college Cyril ...")."""
    if i > 0:
        return naming[i]
    if j == 0 or naming[0]:
        return True
    joiner = len(words[1]) <= 3 and not words[1][:1].isupper()
    return naming[1] or (joiner and j > 1 and naming[2])


def _continuing_words(words: Sequence[str], naming: Sequence[bool], rare_word: Callable[[str], bool] | None) -> list[bool]:
    """Which words may continue the name before them in lower case: rare words (`rare_word`)
    right after a naming word or another such word, in the same clause. Binomials and foreign
    titles go on so ("Isoetes sinensis", "Il ballo delle ingrate"), and so do verbs after a
    name ("Bully Beatdown debuted"): only candidates, for the model to pick among."""
    out = [False] * len(words)
    if rare_word is None:
        return out
    for k in range(1, len(words)):
        after_name = (naming[k - 1] or out[k - 1]) and not _ends_clause(words[k - 1])
        out[k] = after_name and not naming[k] and rare_word(_clean(words[k]) or words[k])
    return out


def _after_run(flags: Sequence[bool], start: int) -> int:
    """The first index from `start` on whose flag is not set."""
    return next((k for k in range(start, len(flags)) if not flags[k]), len(flags))


def _ends_sentence(word: str) -> bool:
    return word.rstrip(")").endswith(tuple("?.!:;")) or word.endswith(("'s", "’s"))


def _ends_clause(word: str) -> bool:
    return _ends_sentence(word) or word.rstrip(")").endswith(",")


def rare_word_test(tokenizer) -> Callable[[str], bool]:
    """Whether a word is a lower-case one the tokenizer has no single token for: not an everyday
    word, so it may be part of a name (" musica" is " music" + "a", " sinensis" two pieces;
    " torpedo", " located" one)."""

    def rare(word: str) -> bool:
        if not (word.isalpha() and word.islower()) or word in _NAME_JOINERS:
            return False
        return len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) > 1

    return rare


def _naming_words(words: Sequence[str]) -> list[bool]:
    """Which of a prompt's words look like (part of) a name. The first word's capital says nothing,
    except where no other word names anything and it is no question word: "Valdemarsvik, which is
    located in" is about Valdemarsvik (not "which is located")."""
    naming = [_names(w, first=k == 0) for k, w in enumerate(words)]
    if words and not any(naming):
        naming[0] = _may_begin_a_name(words[0])
    return naming


def _may_begin_a_name(first: str) -> bool:
    """Whether a prompt's first word may be a name's: capitalised, and no word that asks or only
    starts a sentence ("What", "The", "Please", "He")."""
    first = _clean(first) or first
    return first[:1].isupper() and first.lower() not in _QUESTION_WORDS


def whole_name(prompt: str, span: str, rare_word: Callable[[str], bool] | None = None) -> str:
    """`span` (a candidate span of `prompt`) widened to the whole name it is part of: the naming
    words on either side, to the right also across a joiner between two of them ("County of Kara"
    -> "County of Kara Kara"), a comma between two ("Finders Keepers" -> "Finders Keepers,
    Lovers Weepers") and, given `rare_word`, rare lower-case words between two ("La gare" -> "La
    gare inondée (The Flooded Station)"; `_continuing_words`).
    The model often names a part ("Nakkim" of "Kyrre Nakkim", "Francis" of "Francis Folger
    Franklin"); the relation key would then read the rest of the name as the question, and every
    other question about that name would agree with it on those words."""
    words = [m.span() for m in re.finditer(r"\S+", prompt)]
    texts = [prompt[a:b] for a, b in words]
    found = next(
        (
            (i, j)
            for i in range(len(words))
            for j in range(i, min(i + _MAX_WORDS, len(words)))
            if _clean(prompt[words[i][0] : words[j][1]]) == span
        ),
        None,
    )
    if found is None:
        return span
    naming = _naming_words(texts)
    # Beside a name, a capitalised first word that asks nothing is taken to begin it ("Gaetano
    # Alibrandi, who has the position of"; also, wrongly, "Player Natalie Achonwa played for").
    naming[0] = naming[0] or _may_begin_a_name(texts[0])
    continuing = _continuing_words(texts, naming, rare_word)
    i, j = found
    while not _ends_sentence(texts[j]):
        if texts[j].endswith(","):
            if j + 1 < len(texts) and naming[j] and naming[j + 1]:
                j += 1
                continue
            break
        if j + 1 < len(texts) and naming[j + 1]:
            j += 1
        elif j + 2 < len(texts) and texts[j + 1].lower() in _NAME_JOINERS and naming[j + 2]:
            j += 2
        elif (k := _after_run(continuing, j + 1)) > j + 1 and k < len(texts) and naming[k] and not _ends_clause(texts[k - 1]):
            j = k
        else:
            break
    # Leftwards only adjacent names: across a joiner a title comes first as often as a name
    # ("CEO of Acme", "President of France").
    while i > 0 and not _ends_sentence(texts[i - 1]) and naming[i - 1] and (not texts[i - 1].endswith(",") or naming[i]):
        i -= 1
    return _clean(prompt[words[i][0] : words[j][1]]) or span


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
    rare = rare_word_test(tokenizer)
    # The worked examples are most of each input and the same in every row: the model reads them
    # once, and each row's own question (after padding, masked out) continues from their cache.
    with routing(RouteState()):
        cached = model(input_ids=torch.tensor([examples], device=device), use_cache=True).cache
    out: list[InferredSubject | None] = []
    for k in range(0, len(prompts), batch_size):
        chunk = list(prompts[k : k + batch_size])
        spelled = [
            [(tokenizer(" " + s, add_special_tokens=False)["input_ids"] + newline, s) for s in candidate_spans(p, rare)] for p in chunk
        ]
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
            out.append(None if hit is None else InferredSubject(whole_name(chunk[row], hit, rare)))
    return out
