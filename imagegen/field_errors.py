"""Schema violations as sentences in the diffusers style: the field, the rule and the value,
"`width` must be a multiple of 8, but is 65." One sentence per violated rule; pydantic's own
messages ("Input should be ...") never reach a client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

SHOWN_CHARS = 40

RULES: dict[str, Callable[[dict[str, Any]], str]] = {
    "greater_than_equal": lambda ctx: f"must be at least {ctx['ge']}",
    "greater_than": lambda ctx: f"must be greater than {ctx['gt']}",
    "less_than_equal": lambda ctx: f"must be at most {ctx['le']}",
    "less_than": lambda ctx: f"must be less than {ctx['lt']}",
    "multiple_of": lambda ctx: f"must be a multiple of {ctx['multiple_of']}",
    "finite_number": lambda ctx: "must be a finite number",
    "literal_error": lambda ctx: f"must be one of {ctx['expected'].replace(' or ', ', ')}",
    "enum": lambda ctx: f"must be one of {ctx['expected'].replace(' or ', ', ')}",
    "int_parsing": lambda ctx: "must be an integer",
    "int_type": lambda ctx: "must be an integer",
    "int_from_float": lambda ctx: "must be an integer",
    "float_parsing": lambda ctx: "must be a number",
    "float_type": lambda ctx: "must be a number",
    "string_type": lambda ctx: "must be a string",
    "bool_parsing": lambda ctx: "must be true or false",
    "bool_type": lambda ctx: "must be true or false",
    "string_pattern_mismatch": lambda ctx: f"must match `{ctx['pattern']}`",
}


def shown(value: Any) -> str:
    """A value as a message shows it: long strings by their length, never whole."""
    if isinstance(value, str) and len(value) > SHOWN_CHARS:
        return f"{len(value)} characters long"
    return repr(value)


def sentence(error: ErrorDetails) -> str:
    """One violation as a sentence naming the field, the rule and the value."""
    kind, ctx, value = error["type"], error.get("ctx", {}), error.get("input")
    field = ".".join(str(part) for part in error["loc"])
    name = f"`{field}`"
    if kind == "missing":
        return f"{name} is required." if field else "The request body must be a JSON object."
    if kind == "extra_forbidden":
        return f"{name} is not a field of this request; `/docs` lists the fields."
    if kind == "string_too_short":
        if ctx["min_length"] == 1:
            return f"{name} must not be empty."
        return f"{name} must be at least {ctx['min_length']} characters, but is {len(value)}."
    if kind == "string_too_long":
        return f"{name} must be at most {ctx['max_length']} characters, but is {len(value)}."
    if kind in ("model_type", "dict_type", "model_attributes_type") and not field:
        return f"The request body must be a JSON object, but is {shown(value)}."
    if kind == "value_error":
        return str(ctx["error"]).rstrip(".") + "."
    if kind in RULES:
        return f"{name} {RULES[kind](ctx)}, but is {shown(value)}."
    message = error["msg"].rstrip(".")
    return f"{name}: {message}." if field else f"{message}."


def restated(error: ValidationError) -> ValidationError:
    """``error`` with every message a :func:`sentence`; types and locations unchanged."""
    return ValidationError.from_exception_data(
        error.title,
        [
            InitErrorDetails(
                type=PydanticCustomError(detail["type"], sentence(detail).replace("{", "{{")),
                loc=detail["loc"],
                input=detail.get("input"),
            )
            for detail in error.errors()
        ],
    )
