"""Rendering of errors as HTTP answers (app.api.errors)."""

from __future__ import annotations

from app.api.errors import describe_validation_error


def test_validation_messages_name_the_field_and_value():
    message = describe_validation_error(
        {"loc": ("body", "many", 1, "prompt"), "msg": "Input should be a valid string", "type": "string_type", "input": 5}
    )
    assert message == "field '[1].prompt': Input should be a valid string (got 5)"
    missing = describe_validation_error({"loc": ("query", "prompt"), "msg": "Field required", "type": "missing"})
    assert missing == "query parameter 'prompt' is required"
