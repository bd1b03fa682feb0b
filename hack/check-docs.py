#!/usr/bin/env python3
"""Checks that README.md and docs/*.md still match the drun they describe (run by `make lint`).

  hack/check-docs.py [--drun BIN] [FILE.md ...]     (default: target/release/drun, README.md and docs/**/*.md)

1. Every `drun …` command in a shell code block (```sh, ```bash, ```shell, ```console or a bare ```) is parsed
   with the real CLI, never run: its subcommand path (`drun cdi generate`) must exist, every option must be one
   that `drun <subcommand> --help` lists, with a value where it takes one, and clap itself must accept the line
   with `--help` put where it still parses every drun option (before the image of `drun run`, whose later words
   are the container's command; at the end for the others).
2. A `drun run [OPTIONS] FILE.yaml [NAME …]` whose file exists in the repository is also loaded for real with
   `--dry-run` (which validates the whole file and the names, and runs nothing).
3. Every ```yaml block that is a workflow file (a top-level `workflows:` key) is written to a temporary directory
   and loaded with `drun run --dry-run FILE`, as are examples/*/workflow.yaml. An HTML comment on the line
   before the block can prepare it: `<!-- check-docs: file:requirements.txt dir:data env:NAME=VALUE
   var:NAME=VALUE -->`, or say that the block shows a file drun must refuse: `<!-- check-docs: fails -->`. An
   example's workflow.yaml takes the same directives from a `# check-docs: …` comment line.
4. Every relative link (`[text](docs/x.md#anchor)`) names a file that exists, and an anchor that its headings
   make.

Every problem is printed as `FILE:LINE: what is wrong`, and the script exits 1 if there is any.
"""

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EMPTY_CONFIG = None  # set in main(): a temporary, empty drun configuration file for the dry runs
# Subcommands whose first positional argument ends drun's own options: the rest of the line is the container's
# command (clap's `trailing_var_arg`). `--help` goes before that argument, or it would be the container's.
TRAILING = {("run",), ("exec",)}
SHELL_LANGS = {"", "sh", "bash", "shell", "console"}
# Words that may stand before `drun` on a command line (`sudo drun …`, `srun -N2 drun …`).
WRAPPERS = {"sudo", "srun", "env", "exec", "time", "nohup", "timeout"}
OPTION_RE = re.compile(r"^\s{2,}(?:(-[A-Za-z0-9]), )?(--[A-Za-z0-9][\w-]*)([ =]\[?<[^>]*>\]?|\[=<[^>]*>\])?(?:\.\.\.)?(?:\s|$)")
SHORT_ONLY_RE = re.compile(r"^\s{2,}(-[A-Za-z0-9])( <[^>]*>)?(?:\s|$)")
COMMAND_RE = re.compile(r"^\s{2}([a-z][\w-]*)(?:\s{2,}|$)")


class Problems:
    def __init__(self):
        self.items = []

    def add(self, where, message):
        self.items.append(f"{where}: {message}")


class Cli:
    """What `drun … --help` says: the subcommands and options at each level, read once per level."""

    def __init__(self, drun):
        self.drun = drun
        self.cache = {}

    def level(self, path):
        """(subcommands, options) of `drun PATH…`; options map a name (`--env`, `-e`) to whether it takes a value."""
        if path not in self.cache:
            out = subprocess.run(
                [self.drun, *path, "--help"], capture_output=True, text=True, timeout=30, check=False
            )
            if out.returncode != 0:
                raise RuntimeError(
                    f"`drun {' '.join(path)} --help` exits {out.returncode}: {out.stderr.strip()}"
                )
            commands, options, section = set(), {}, None
            for line in out.stdout.splitlines():
                if line and not line[0].isspace():
                    section = line.rstrip(":")
                    continue
                if section == "Commands":
                    m = COMMAND_RE.match(line)
                    if m and m.group(1) != "help":
                        commands.add(m.group(1))
                elif section not in ("Arguments", "Usage"):  # "Options", or a heading of the CLI's own
                    m = OPTION_RE.match(line)
                    if m:
                        # ` <X>` and `=<X>` take a value; ` [<X>]` and `[=<X>]` only an attached one.
                        takes = bool(m.group(3)) and not re.match(r"[ =]?\[", m.group(3))
                        options[m.group(2)] = takes
                        if m.group(1):
                            options[m.group(1)] = takes
                        continue
                    m = SHORT_ONLY_RE.match(line)
                    if m:
                        options[m.group(1)] = bool(m.group(2))
            if not options:
                raise RuntimeError(f"`drun {' '.join(path)} --help` lists no options: has its format changed?")
            self.cache[path] = (commands, options)
        return self.cache[path]

    def call(self, argv, env=None, cwd=None):
        return subprocess.run(
            [self.drun, *argv], capture_output=True, text=True, timeout=60, check=False, env=env, cwd=cwd
        )


def fenced_blocks(text):
    """Yields (language, first content line number, content lines, annotation) for each ``` block."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group(1), m.group(2), m.group(3).lower()
        prev = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        note = re.fullmatch(r"<!--\s*check-docs:(.*?)-->", prev)
        start, body = i + 2, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        i += 1
        yield lang, start, body, note.group(1).split() if note else []


def shell_lines(lang, start, body):
    """(line number, text) of each command line, continuation lines joined, console prompts removed."""
    pending, first = "", None
    for n, line in enumerate(body, start):
        if lang == "console":
            if pending:
                pass
            elif line.startswith(("$ ", "# ")):
                line = line[2:]
            else:
                continue
        if first is None:
            first = n
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield first, pending + line
        pending, first = "", None
    if pending:
        yield first, pending


def drun_commands(line):
    """The argument lists after `drun` of each simple command on a shell line that runs drun."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    tokens = list(lexer)
    commands, current = [], []
    for t in tokens + [";"]:
        if t and set(t) <= set(";&|()<>"):
            if current:
                commands.append(current)
            current = []
        else:
            current.append(t)
    found = []
    for words in commands:
        i = 0
        while i < len(words) and (re.match(r"^\w+=", words[i]) or words[i] in WRAPPERS):
            wrapper = words[i] in WRAPPERS
            i += 1
            # A wrapper's own options (`srun -N2`, `timeout 10`) come before the command it runs.
            while wrapper and i < len(words) and (words[i].startswith("-") or words[i].isdigit()):
                i += 1
        if i < len(words) and (words[i] == "drun" or words[i].endswith("/drun") or words[i] == "$DRUN"):
            found.append(words[i + 1:])
    return found


def check_command(cli, args, where, shown, problems, scratch):
    """Parses one `drun ARGS…` line with drun's CLI (and loads its workflow file, if it is one that exists)."""
    path, i, first_positional, globals_at = (), 0, None, set()
    if any(a.startswith("[-") for a in args):
        problems.add(where, f"`{shown}`: a usage line, not a command: show a real command (`drun ps --json`)")
        return
    top_options = cli.level(())[1]
    commands, options = cli.level(())
    while i < len(args):
        t = args[i]
        if t == "--":
            first_positional = first_positional if first_positional is not None else i + 1
            break
        if t.startswith("-") and t != "-":
            names = [t.split("=", 1)[0]] if t.startswith("--") else [f"-{c}" for c in t[1:]]
            for k, name in enumerate(names):
                if name not in options:
                    problems.add(where, f"`{shown}`: `{' '.join(('drun', *path))}` has no option {name} (see its --help)")
                    return
                if name in top_options:
                    globals_at.add(i)
                if options[name]:
                    attached = "=" in t if t.startswith("--") else k + 1 < len(names)
                    if not attached:
                        if i + 1 >= len(args):
                            problems.add(where, f"`{shown}`: {name} needs a value")
                            return
                        i += 1
                        if name in top_options:
                            globals_at.add(i)
                    break
                if t.startswith("--") and "=" in t:
                    problems.add(where, f"`{shown}`: {name} takes no value")
                    return
            i += 1
            continue
        if commands:
            if t not in commands:
                sub = " ".join(("drun", *path))
                problems.add(where, f"`{shown}`: `{sub}` has no subcommand {t!r} (it has: "
                             f"{', '.join(sorted(commands))})")
                return
            path += (t,)
            commands, options = cli.level(path)
            i += 1
            continue
        first_positional = i
        break
    if not path:
        # `drun --version` and the like; a line of global options alone is refused by clap (no subcommand).
        out = cli.call(args)
        if out.returncode != 0:
            problems.add(where, f"`{shown}` exits {out.returncode}: {out.stderr.strip()}")
        return
    if path in TRAILING and first_positional is not None:
        argv = args[:first_positional] + ["--help"]
    else:
        argv = args + ["--help"]
    out = cli.call(argv)
    if out.returncode != 0:
        problems.add(where, f"`{shown}`: `drun {' '.join(argv)}` exits {out.returncode}: {out.stderr.strip()}")
        return
    # A workflow file that exists here is loaded for real: the file, the names and the options together.
    if path == ("run",) and first_positional is not None and args[first_positional].endswith((".yaml", ".yml")):
        file = REPO / args[first_positional]
        if file.is_file():
            own = [a for k, a in enumerate(args[:first_positional]) if k not in globals_at and a != "--dry-run"]
            argv = ["--root", str(scratch / "root"), "--state", str(scratch / "state"), "run", *own[1:],
                    "--dry-run", str(file), *args[first_positional + 1:]]
            out = cli.call(argv, env=clean_env(), cwd=REPO)
            if out.returncode != 0:
                problems.add(where, f"`{shown}`: `drun {' '.join(argv)}` exits {out.returncode}: "
                             f"{out.stderr.strip()}")


def clean_env(extra=()):
    """The environment of a dry run: nothing of the caller's drun settings, and an empty configuration file."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env["DRUN_CONFIG"] = str(EMPTY_CONFIG)
    env.update(extra)
    return env


def check_workflow(cli, file, where, note, problems, scratch, doc_line=None):
    """Loads a workflow file with `drun run --dry-run`; `note` holds the block's check-docs directives. For a
    block of a document, `doc_line(n)` turns line n of the block into the document's `FILE:LINE`."""
    env, variables = {}, []
    for d in note:
        kind, _, value = d.partition(":")
        if kind == "file":
            (file.parent / value).parent.mkdir(parents=True, exist_ok=True)
            (file.parent / value).touch()
        elif kind == "dir":
            (file.parent / value).mkdir(parents=True, exist_ok=True)
        elif kind == "env":
            k, _, v = value.partition("=")
            env[k] = v
        elif kind == "var":
            variables += ["--var", value]
        elif d != "fails":
            problems.add(where, f"unknown check-docs directive {d!r} (file:, dir:, env:, var:, fails)")
            return
    argv = ["--root", str(scratch / "root"), "--state", str(scratch / "state"), "run", "--dry-run", *variables,
            str(file)]
    out = cli.call(argv, env=clean_env(env), cwd=file.parent)
    if "fails" in note:
        if out.returncode == 0:
            problems.add(where, "this workflow file is marked `fails`, but `drun run --dry-run` accepts it")
    elif out.returncode != 0:
        err = out.stderr.rstrip()
        if doc_line:
            err = re.sub(re.escape(str(file)) + r":(\d+):", lambda m: doc_line(int(m.group(1))) + ":", err)
        problems.add(where, f"this workflow file does not load: `drun run --dry-run` exits {out.returncode}:\n"
                     f"{err}")


def slug(heading):
    """GitHub's anchor for a heading."""
    text = re.sub(r"`|\*|_(?=\W)|(?<=\W)_", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path):
    seen, out = {}, set()
    in_block = False
    for line in path.read_text().splitlines():
        if re.match(r"^\s*(`{3,}|~{3,})", line):
            in_block = not in_block
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m and not in_block:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    return out


def check_links(doc, text, problems):
    in_block = False
    for n, line in enumerate(text.splitlines(), 1):
        if re.match(r"^\s*(`{3,}|~{3,})", line):
            in_block = not in_block
            continue
        if in_block:
            continue
        line = re.sub(r"`[^`]*`", "", line)
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (doc.parent / file).resolve() if file else doc
            where = f"{doc.relative_to(REPO)}:{n}"
            if not dest.exists():
                problems.add(where, f"link to {target!r}: {file} does not exist")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.add(where, f"link to {target!r}: {dest.relative_to(REPO)} has no heading for #{anchor}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drun", default=str(REPO / "target/release/drun"))
    parser.add_argument("files", nargs="*", type=Path)
    opts = parser.parse_args()
    opts.drun = str(Path(opts.drun).absolute())  # workflow files are loaded from their own directory
    if not os.access(opts.drun, os.X_OK):
        sys.exit(f"check-docs: {opts.drun} is not an executable drun: build it first (make build)")
    docs = [p.resolve() for p in opts.files] or [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    cli, problems = Cli(opts.drun), Problems()
    counts = {"commands": 0, "workflows": 0}
    with tempfile.TemporaryDirectory(prefix="drun-check-docs.") as tmp:
        scratch = Path(tmp)
        global EMPTY_CONFIG
        EMPTY_CONFIG = scratch / "config.toml"
        EMPTY_CONFIG.write_text("")
        for doc in docs:
            text = doc.read_text()
            rel = doc.relative_to(REPO)
            check_links(doc, text, problems)
            for b, (lang, start, body, note) in enumerate(fenced_blocks(text)):
                if lang in SHELL_LANGS:
                    for n, line in shell_lines(lang, start, body):
                        try:
                            found = drun_commands(line)
                        except ValueError as e:
                            problems.add(f"{rel}:{n}", f"cannot split {line.strip()!r} as a shell would: {e}")
                            continue
                        for args in found:
                            counts["commands"] += 1
                            shown = shlex.join(["drun", *args])
                            try:
                                check_command(cli, args, f"{rel}:{n}", shown, problems, scratch)
                            except RuntimeError as e:
                                problems.add(f"{rel}:{n}", str(e))
                elif lang in ("yaml", "yml") and any(re.match(r"^workflows:", line) for line in body):
                    counts["workflows"] += 1
                    case = scratch / f"block-{len(problems.items)}-{rel.name}-{b}"
                    case.mkdir()
                    (case / "workflow.yaml").write_text("\n".join(body) + "\n")
                    check_workflow(cli, case / "workflow.yaml", f"{rel}:{start}", note, problems, scratch,
                                   lambda n, rel=rel, start=start: f"{rel}:{start + n - 1}")
        if not opts.files:
            for example in sorted((REPO / "examples").glob("*/workflow.yaml")):
                counts["workflows"] += 1
                note = [d for line in example.read_text().splitlines()
                        if (m := re.fullmatch(r"#\s*check-docs:(.*)", line.strip())) for d in m.group(1).split()]
                check_workflow(cli, example, str(example.relative_to(REPO)), note, problems, scratch)
    if counts["commands"] == 0:
        problems.add("check-docs", "found no `drun …` command in any shell block: is the parsing broken?")
    for p in problems.items:
        print(f"error: {p}", file=sys.stderr)
    if problems.items:
        print(f"check-docs: {len(problems.items)} problem(s) in the documentation (see above)", file=sys.stderr)
        sys.exit(1)
    print(f"check-docs: {counts['commands']} drun commands and {counts['workflows']} workflow files in "
          f"{len(docs)} documents agree with {opts.drun}")


if __name__ == "__main__":
    main()
