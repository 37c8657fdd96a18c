"""The docs hold together: every relative link and image of README.md and docs/*.md exists, README's
set-up commands are the ones CI runs, and every `harness ...` command the docs show parses with the
real CLI, names matrices that validate, and is mapped to a test or bench that exercises it."""
from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
import yaml
import yaml

from harness import cli, matrix

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]+`")
LINK = re.compile(r"(!?)\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *$", re.M)
FLAG = re.compile(r"^--[a-z][a-z0-9-]*$")

# The test or bench (or " + "-joined files) that runs each command the docs show, with that
# subcommand and those flags. A command added to the docs needs a line here.
PROOF = {
    "tests/test_cli.py": [
        "harness --help", "harness schema", "harness status", "harness status [FILE or NAME] [--db PATH]",
        "harness assets list",
        "harness validate FILE", "harness validate",
    ],
    "tests/test_bench_quick.py": [
        "harness validate matrices/sentiment.yaml", "harness plan matrices/sentiment.yaml",
    ],
    "tests/test_assets.py": ["harness assets pull [NAME...]", "harness assets pull [NAME...] [--force]"],
    "tests/test_plan.py": [
        "harness plan", "harness plan FILE --gpu-mem 24GB", "harness plan FILE [--gpu-mem 24GB] [--breakdown]",
    ],
    "tests/test_sweep.py": [
        "harness sweep", "harness sweep FILE", "harness sweep matrices/sentiment.yaml",
        "harness sweep matrices/forgetting.yaml", "harness sweep matrices/trajectory.yaml",
        "harness sweep matrices/summarization.yaml", "harness compare", "harness compare full lora",
        "harness compare lora ia3 --matrix M --task T --model X",
        "harness compare A B --matrix M --task T --model X [--db PATH]",
    ],
    "tests/test_faults.py": [
        "harness sweep FILE --force all", "harness sweep FILE --workers 4",
        "harness sweep FILE --executor ray --ray-address auto",
    ],
    "tests/test_faults.py + tests/test_bad_input.py": [
        "harness sweep FILE [--db PATH] [--force [RUN_ID\\|all]] [--no-retry-failed] [--strict] "
        "[--workers N] [--in-process] [--executor ray [--ray-address ADDR] [--cpus-per-run N] [--gpus-per-run N]] "
        "[--quiet]",
    ],
    "bench/bench_overhead.py": [
        "harness sweep MATRIX --db DB", "harness sweep MATRIX --db DB --quiet",
        "harness sweep MATRIX --db DB --quiet --in-process", "harness sweep --in-process",
    ],
    "tests/test_store.py": [
        "harness ingest", "harness ingest [PATH...] [--db PATH]",
        "harness ingest results/runs --db results/harness-rebuilt.duckdb",
    ],
    "tests/test_bad_input.py + tests/test_tables.py + tests/test_trackers.py": [
        "harness export [--matrix NAME] [--format csv\\|parquet\\|md\\|latex] [--out DIR] [--mlflow DIR] [--db PATH]",
    ],
    "tests/test_tables.py": ["harness export", "harness export --format md"],
    "tests/test_trackers.py": ["harness export --mlflow DIR"],
}


def _text_outside_code(text: str) -> str:
    return CODE_SPAN.sub("", FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text())):
        slug = _slug(heading)
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _links(path: Path) -> list[tuple[bool, str]]:
    return [(bang == "!", target) for bang, target in LINK.findall(_text_outside_code(path.read_text()))]


def _relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_image_exists(doc):
    broken = []
    for is_image, target in _links(doc):
        if not _relative(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists() or (is_image and not dest.is_file()):
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert broken == []


def test_the_docs_link_checker_catches_a_broken_link_and_anchor(tmp_path):
    (tmp_path / "a.md").write_text("# Title: `x` here\n\n[ok](#title-x-here) [bad](#nope) ![img](b.png)\n"
                                   "`[in code](missing.md)`\n")
    assert _anchors(tmp_path / "a.md") == {"title-x-here"}
    assert _links(tmp_path / "a.md") == [(False, "#title-x-here"), (False, "#nope"), (True, "b.png")]


def test_the_readme_shows_one_screenshot_that_exists():
    images = [target for is_image, target in _links(ROOT / "README.md") if is_image]
    assert len(images) == 1 and (ROOT / images[0]).is_file()


def test_every_docs_page_is_reachable_from_the_docs_index():
    index = {(ROOT / "docs" / target.partition("#")[0]).resolve()
             for _, target in _links(ROOT / "docs" / "README.md") if _relative(target)}
    assert [p.name for p in DOCS[1:] if p.name != "README.md" and p.resolve() not in index] == []


def test_the_readme_test_command_is_the_one_ci_runs():
    """.ci/run installs the project exactly as README.md says and runs README's test command."""
    blocks = FENCE.findall((ROOT / "README.md").read_text())
    assert len(blocks) >= 2, "README.md: the two set-up commands (run the default experiment, run the tests)"
    run_default, run_tests = blocks[0].strip(), blocks[1].strip()
    ci_line = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert run_tests == ci_line
    install = "python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.lock -e . && "
    assert run_default.startswith(install) and run_tests.startswith(install)
    assert run_default.endswith("harness sweep matrices/sentiment.yaml; harness export")


def _commands() -> dict[str, tuple[str, bool]]:
    """Every `harness ...` command the docs show -> (where, whether it is a complete command line).
    Lines of fenced code blocks are complete; inline code spans may hold placeholders (FILE,
    [--db PATH]), so only their subcommand and flags are checked."""
    found: dict[str, tuple[str, bool]] = {}
    for doc in DOCS:
        text = doc.read_text()
        where = str(doc.relative_to(ROOT))
        for block in FENCE.findall(text):
            for line in block.splitlines():
                for segment in re.split(r"&&|;", line):
                    if segment.strip().startswith("harness "):
                        found[" ".join(shlex.split(segment, comments=True))] = (where, True)
        for span in CODE_SPAN.findall(FENCE.sub("", text)):
            command = " ".join(span.strip("`").split())
            if command.startswith("harness ") and command not in found:
                found[command] = (where, False)
    return found


COMMANDS = _commands()


def _subparser(words: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The parser the words reach (`harness assets pull` -> pull's), and the subcommand words."""
    parser, path = cli._parser(), []
    for word in words:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers or word not in subparsers[0].choices:
            break
        parser, path = subparsers[0].choices[word], [*path, word]
    return parser, path


@pytest.mark.parametrize("command", sorted(COMMANDS), ids=lambda c: c[:60])
def test_a_docs_command_has_real_subcommand_and_flags(command):
    where, complete = COMMANDS[command]
    words = command.split()[1:]
    parser, path = _subparser(words)
    if words and not words[0].startswith("-"):
        assert path, f"{where}: `{command}`: no subcommand {words[0]!r}"
    options = parser._option_string_actions
    for i, word in enumerate(words):
        flag = word.strip("[]")
        if FLAG.match(flag):
            assert flag in options, f"{where}: `{command}`: `harness {' '.join(path)}` has no {flag}"
            choices = options[flag].choices
            value = words[i + 1] if i + 1 < len(words) else None
            if choices and value and value.strip("[]") == value and not value.isupper():
                assert value in choices, f"{where}: `{command}`: {flag} takes one of {sorted(choices)}"
    if complete:
        try:
            cli._parser().parse_args(words)
        except SystemExit as exit_:
            pytest.fail(f"{where}: `{command}` does not parse (argparse exit {exit_.code})")


@pytest.mark.parametrize("command", sorted(c for c in COMMANDS if re.search(r"\.ya?ml\b", c)))
def test_a_matrix_a_docs_command_names_exists_and_validates(command):
    for word in command.split():
        if re.search(r"\.ya?ml$", word):
            assert (ROOT / word).is_file(), f"{COMMANDS[command][0]}: `{command}`: no file {word}"
            assert matrix.load(ROOT / word).runs


def test_every_docs_command_is_mapped_to_a_test_or_bench_that_runs_it():
    mapped = {command: proof for proof, commands in PROOF.items() for command in commands}
    assert sorted(set(COMMANDS) - set(mapped)) == [], "docs commands without a test or bench in PROOF"
    assert sorted(set(mapped) - set(COMMANDS)) == [], "PROOF names commands no doc shows any more"
    unproven = []
    for command, proof in mapped.items():
        source = "\n".join((ROOT / file).read_text() for file in proof.split(" + "))
        words = command.split()[1:]
        _, path = _subparser(words)
        needed = path + [w.strip("[]") for w in words if FLAG.match(w.strip("[]"))]
        unproven += [f"{proof}: {command}: {w}" for w in needed if not re.search(rf"""["']{w}[\s"']""", source)]
    assert unproven == []


def test_the_commands_page_names_every_subcommand_and_option():
    page = (ROOT / "docs" / "commands.md").read_text()
    missing = []
    parsers = [([], cli._parser())]
    while parsers:
        path, parser = parsers.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers += [([*path, name], sub) for name, sub in action.choices.items()]
            elif action.option_strings and not isinstance(action, argparse._HelpAction):
                if not any(re.search(rf"{o}\b", page) for o in action.option_strings):
                    missing.append(f"harness {' '.join(path)} {action.option_strings[0]}")
        if path and f"harness {' '.join(path)}" not in page:
            missing.append(f"harness {' '.join(path)}")
    assert missing == []


def test_every_matrix_example_in_the_docs_validates(tmp_path):
    """Whole matrices as they are; a fragment (`probes: [...]`) over the first whole one."""
    blocks = [yaml.safe_load(block) for doc in DOCS
              for block in re.findall(r"^```yaml\n(.*?)^```", doc.read_text(), re.S | re.M)]
    whole = [b for b in blocks if isinstance(b, dict) and "models" in b]
    assert whole, "docs/matrix.md shows a whole matrix"
    fragments = [{**whole[0], **b} for b in blocks
                 if isinstance(b, dict) and "models" not in b and b.keys() <= whole[0].keys()]
    assert fragments, "docs/probes.md shows a probes: line"
    for i, example in enumerate(whole + fragments):
        (tmp_path / f"example{i}.yaml").write_text(yaml.safe_dump(example))
        assert matrix.load(tmp_path / f"example{i}.yaml").runs
