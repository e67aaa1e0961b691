"""Schemathesis hooks: the rules of POST /v1/edits that JSON Schema cannot state.

- An edit's `subject` must appear in its `prompt` (any case): a rule across two fields, which the
  OpenAPI document says in words only. Positive cases that break it are fixed up (the subject
  becomes the prompt's own text).
- An Idempotency-Key (where the server takes one) may not come back with another body: that is
  a rule across requests. Positive cases get a key of their own.

So "schema-valid request rejected" means a real disagreement between the document and the
server. Negative cases are left as generated.

Loaded by tests/api/test_openapi_fuzz.py (import) and by scripts/fuzz-api
(SCHEMATHESIS_HOOKS=tests.api.fuzz_hooks).
"""

from __future__ import annotations

import itertools
from typing import Any

import schemathesis
from schemathesis import GenerationMode

_keys = itertools.count(1)


def _with_subject_in_prompt(edit: Any) -> Any:
    if not isinstance(edit, dict):
        return edit
    prompt, subject = edit.get("prompt"), edit.get("subject")
    if isinstance(prompt, str) and isinstance(subject, str) and subject.strip().lower() not in prompt.lower():
        return {**edit, "subject": prompt}
    return edit


@schemathesis.hook.apply_to(method="POST", path="/v1/edits")
def map_case(context: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
    meta = case.meta
    if meta is None or meta.generation.mode != GenerationMode.POSITIVE:
        return case
    body = case.body
    if isinstance(body, list):
        case.body = [_with_subject_in_prompt(edit) for edit in body]
    else:
        case.body = _with_subject_in_prompt(body)
    for name in list(case.headers or {}):
        if name.lower() == "idempotency-key":
            case.headers[name] = f"fuzz-{next(_keys)}"
    return case
