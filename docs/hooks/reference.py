"""MkDocs hook: the reference pages are generated from the code, so they cannot drift.

- `reference/cli.md`: `<!-- cli-reference -->` becomes every command's usage and flags,
  read from `cactus_keras.cli.build_parser()` (the parser the command runs).
- `reference/api.md`: `<!-- api-reference -->` becomes one mkdocstrings block per public
  name (each public subpackage's `__all__`). A public function or class without a
  docstring, or (exceptions aside) without a code example in it, fails the build.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os

from mkdocs.exceptions import PluginError

# The public subpackages, in the order a user meets them.
API_PACKAGES = ("certification", "training", "compression", "export", "bounds", "attacks",
                "data", "models", "experiments", "tuning", "compress", "interop")


def public_names(package):
    module = importlib.import_module(f"cactus_keras.{package}")
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, v in vars(module).items() if not n.startswith("_")
                 and (inspect.isfunction(v) or inspect.isclass(v))
                 and getattr(v, "__module__", "").startswith("cactus_keras")]
    found = []
    for name in names:
        value = getattr(module, name)
        if inspect.isfunction(value) or inspect.isclass(value):
            found.append((name, value))
    return found


def undocumented(names):
    """The names whose docstring is missing, or has no example (exceptions excepted)."""
    problems = []
    for qualified, value in names:
        doc = inspect.getdoc(value) or ""
        if not doc.strip():
            problems.append(f"{qualified}: no docstring")
        elif not (inspect.isclass(value) and issubclass(value, BaseException)) and (
                "```" not in doc and ">>>" not in doc):
            problems.append(f"{qualified}: its docstring has no code example")
    return problems


def api_markdown():
    lines, everything = [], []
    for package in API_PACKAGES:
        names = public_names(package)
        everything += [(f"cactus_keras.{package}.{n}", v) for n, v in names]
        lines += [f"## `cactus_keras.{package}`", ""]
        for name, value in names:
            # The defining module's path: griffe reads source, and cannot follow the
            # lazy `__getattr__` re-exports of experiments/ and tuning/.
            lines += [f"::: {value.__module__}.{value.__qualname__}",
                      "    options:", "      heading_level: 3", ""]
    problems = undocumented(everything)
    if problems:
        raise PluginError("Public names without a documented example:\n  "
                          + "\n  ".join(problems))
    return "\n".join(lines)


def _flag_rows(parser):
    rows = []
    for action in parser._actions:  # argparse keeps no public list of a parser's actions
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        flags = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.dest}`"
        text = (action.help or "").replace("%(default)s", str(action.default))
        text = text.replace("|", "\\|").replace("\n", " ")
        if action.choices and not isinstance(action.choices, dict):
            text += " Choices: " + ", ".join(f"`{c}`" for c in action.choices) + "."
        rows.append(f"| {flags} | {text} |")
    return rows


def cli_markdown():
    from cactus_keras.cli import build_parser

    parser = build_parser()
    os.environ.setdefault("COLUMNS", "100")
    lines = ["```text", parser.format_usage().strip(), "```", ""]
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        lines += [f"## `cactus-keras {name}`", "", sub.description or "", "",
                  "```text", sub.format_usage().strip(), "```", "",
                  "| flag | meaning |", "| --- | --- |", *_flag_rows(sub), ""]
    return "\n".join(lines)


def on_page_markdown(markdown, page, config, files):
    if "<!-- cli-reference -->" in markdown:
        markdown = markdown.replace("<!-- cli-reference -->", cli_markdown())
    if "<!-- api-reference -->" in markdown:
        markdown = markdown.replace("<!-- api-reference -->", api_markdown())
    return markdown
