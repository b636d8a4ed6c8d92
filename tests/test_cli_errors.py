"""Every CLI verb given a wrong argument prints one line with the fix and exits non-zero (issue 5, item 4).

The verbs and their options are read from the Typer app, so a verb added later is tested on arrival. Only arguments
that fail while parsing are tried, so no verb ever runs.
"""

from __future__ import annotations

import typer.main

from pipelines.cli import app, main

COMMANDS = typer.main.get_command(app).commands
VERBS = sorted(COMMANDS)


def assert_one_line_with_the_fix(capsys, code: int, verb: str | None, *, mentions: str) -> None:
    out, err = capsys.readouterr()
    lines = err.rstrip("\n").splitlines()
    assert code == 2, err
    assert out == ""
    assert len(lines) == 2 and lines[0].startswith("error: ") and mentions in lines[0], err
    assert lines[1] == f"  fix: see crossmodal{' ' + verb if verb else ''} --help", err
    assert "Traceback" not in err


def wrong_values(param) -> list[str]:
    """Values that fail to parse for ``param``: not a number for numbers, below the minimum, an unknown choice."""
    described = param.type_descriptor
    annotation = getattr(described.annotation, "__args__", (described.annotation,))[-1]
    if described.is_choice:
        return ["definitely-not-a-choice"]
    if annotation in (int, float):
        return ["not-a-number"] + ([str(param.min - 1)] if param.min is not None else [])
    if described.is_path and getattr(described.parameter_info, "exists", False):
        return ["/definitely/not/here"]
    return []


def placeholder(param) -> list[str]:
    """A value that parses for a required ``param``, so the error reported is the wrong value under test."""
    annotation = getattr(param.type_descriptor.annotation, "__args__", (param.type_descriptor.annotation,))[-1]
    value = "1" if annotation in (int, float) else str(param.type_descriptor.choices[0]) \
        if param.type_descriptor.is_choice else "placeholder"
    return [value] if param.param_type_name == "argument" else [param.opts[0], value]


def wrong_value_cases() -> list[tuple[str, str, list[str]]]:
    cases = []
    for verb in VERBS:
        params = COMMANDS[verb].params
        for param in params:
            if param.param_type_name != "option":
                continue
            required = [a for p in params if p.required and p is not param for a in placeholder(p)]
            cases += [(verb, param.opts[0], [verb, *required, param.opts[0], value]) for value in wrong_values(param)]
    return cases


def test_every_verb_refuses_an_unknown_option_with_one_line_and_the_fix(capsys):
    assert VERBS, "no verb registered"
    for verb in VERBS:
        code = main([verb, "--definitely-not-an-option"])
        assert_one_line_with_the_fix(capsys, code, verb, mentions="No such option: --definitely-not-an-option")


def test_every_option_refuses_a_value_of_the_wrong_type_with_one_line_and_the_fix(capsys):
    cases = wrong_value_cases()
    assert any(verb == "serve" and option == "--port" for verb, option, _ in cases)
    for verb, option, argv in cases:
        code = main(argv)
        assert_one_line_with_the_fix(capsys, code, verb, mentions=f"'{option}'")


def test_an_unknown_verb_is_refused_with_one_line_and_the_fix(capsys):
    code = main(["definitely-not-a-verb"])
    assert_one_line_with_the_fix(capsys, code, None, mentions="No such command 'definitely-not-a-verb'")


def test_a_misspelt_option_names_the_close_one(capsys):
    code = main(["serve", "--prot", "8000"])
    assert_one_line_with_the_fix(capsys, code, "serve", mentions="--port")


def test_every_verb_missing_a_required_argument_says_which(capsys):
    for verb in VERBS:
        required = [p for p in COMMANDS[verb].params if p.required]
        if required:
            code = main([verb])
            assert_one_line_with_the_fix(capsys, code, verb, mentions="Missing")
