#!/usr/bin/env python3
"""Checks the code against the intended architecture in docs/architecture.json.

Reads every C/C++ file's #include lines and every CMakeLists.txt's
target_link_libraries(), maps both ends of each arrow to a part of the
architecture (a top-level folder, or a service folder's gRPC edge), and
prints `path:line: <from part> -> <to part> is forbidden: <why>` (or `is not
allowed`) for every arrow the rules file does not allow. Exit status: 0 when
the tree follows the rules (one summary line), 1 on violations, 2 when the
rules file itself is unusable. Python 3 standard library only.

Usage: tools/check_architecture.py [--root DIR] [--rules FILE] [--explain]
(--explain also prints the part of every CMake target and the files per part.)
"""

import argparse
import json
import os
import re
import subprocess
import sys

EDGE_SUFFIX = ".edge"

# target_link_libraries / add_library / add_executable keywords that are not
# items (CMake keywords are case-sensitive in argument position).
LINK_KEYWORDS = {"PUBLIC", "PRIVATE", "INTERFACE", "LINK_PUBLIC", "LINK_PRIVATE",
                 "LINK_INTERFACE_LIBRARIES", "debug", "optimized", "general"}
LIBRARY_KEYWORDS = {"STATIC", "SHARED", "MODULE", "OBJECT", "INTERFACE", "UNKNOWN",
                    "EXCLUDE_FROM_ALL", "GLOBAL", "WIN32", "MACOSX_BUNDLE"}
SOURCES_KEYWORDS = {"PUBLIC", "PRIVATE", "INTERFACE", "FILE_SET", "TYPE", "BASE_DIRS",
                    "FILES", "HEADERS", "CXX_MODULES"}

INCLUDE_RE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]')
IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
BRACKET_OPEN_RE = re.compile(r"\[(=*)\[")
WHOLE_VAR_RE = re.compile(r"^\$\{([A-Za-z0-9_.+-]+)\}$")


class RulesError(Exception):
    """The rules file is missing, malformed or inconsistent."""


def glob_to_regex(glob):
    """'*' matches inside one path segment, '**' across segments."""
    out = []
    i = 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("^" + "".join(out) + "$")


class Globs:
    def __init__(self, globs, where):
        if not isinstance(globs, list) or not all(isinstance(g, str) for g in globs):
            raise RulesError(f"{where}: expected a list of glob strings")
        self.globs = globs
        self.regexes = [glob_to_regex(g) for g in globs]

    def match(self, path):
        return any(r.match(path) for r in self.regexes)


class Part:
    def __init__(self, name, spec, where):
        self.name = name
        self.family = name.split(".")[0]
        self.files = Globs(spec.get("files"), f"{where}.files")
        self.allowed = set(spec.get("allowed", []))
        self.forbidden = dict(spec.get("forbidden", {}))


class ExternalRule:
    def __init__(self, spec, where):
        self.name = spec.get("name", "external")
        self.headers = Globs(spec.get("headers", []), f"{where}.headers")
        self.links = Globs(spec.get("links", []), f"{where}.links")
        self.allowed_in = set(spec.get("allowed_in", []))
        self.why = spec.get("why")


class Rules:
    def __init__(self, path):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise RulesError(f"{path}: {e}") from e
        self.path = path
        try:
            self._load(data)
        except (KeyError, TypeError, AttributeError) as e:
            raise RulesError(f"{path}: malformed: {e!r}") from e
        self._validate()

    def _load(self, data):
        path = self.path
        self.reasons = data.get("reasons", {})
        scan = data.get("scan", {})
        self.sources = Globs(scan.get("sources", ["*.h", "*.cc"]), "scan.sources")
        self.cmake = Globs(scan.get("cmake", ["CMakeLists.txt"]), "scan.cmake")
        self.skip = Globs(scan.get("skip", []), "scan.skip")

        # Edge parts first within a folder: their globs win over the library's.
        self.parts = {}
        self.match_order = []
        for name, spec in data.get("parts", {}).items():
            where = f"parts.{name}"
            if "." in name:
                raise RulesError(f"{where}: part names may not contain '.'")
            if "edge" in spec:
                edge = Part(name + EDGE_SUFFIX, spec["edge"], where + ".edge")
                self.parts[edge.name] = edge
                self.match_order.append(edge)
            part = Part(name, spec, where)
            self.parts[name] = part
            self.match_order.append(part)
        if not self.parts:
            raise RulesError(f"{path}: no parts")

        self.generated = []
        for i, g in enumerate(data.get("generated_includes", [])):
            self.generated.append((Globs([g["include"]], f"generated_includes[{i}]"), g["part"]))
        self.private = []
        for i, p in enumerate(data.get("private_headers", [])):
            self.private.append((Globs(p["files"], f"private_headers[{i}].files"),
                                 set(p.get("visible_to", [])), p.get("why")))
        self.external = [ExternalRule(e, f"external[{i}]")
                         for i, e in enumerate(data.get("external", []))]

    def _validate(self):
        names = set(self.parts)

        def known(name, where):
            if name not in names:
                raise RulesError(f"{self.path}: {where}: unknown part '{name}'")

        def reason(rid, where):
            if rid not in self.reasons:
                raise RulesError(f"{self.path}: {where}: unknown reason '{rid}'")

        for part in self.parts.values():
            for to in part.allowed:
                known(to, f"{part.name}.allowed")
            for to, rid in part.forbidden.items():
                if to != "*":
                    known(to, f"{part.name}.forbidden")
                reason(rid, f"{part.name}.forbidden[{to}]")
            both = part.allowed & set(part.forbidden)
            if both:
                raise RulesError(f"{self.path}: {part.name}: both allowed and forbidden: "
                                 + ", ".join(sorted(both)))
        for _, part in self.generated:
            known(part, "generated_includes")
        for _, visible, rid in self.private:
            for p in visible:
                known(p, "private_headers.visible_to")
            reason(rid, "private_headers.why")
        for rule in self.external:
            for p in rule.allowed_in:
                known(p, f"external[{rule.name}].allowed_in")
            reason(rule.why, f"external[{rule.name}].why")

    def part_of(self, path):
        """The part a repository path belongs to, or None."""
        hits = [p for p in self.match_order if p.files.match(path)]
        if not hits:
            return None
        families = {p.family for p in hits}
        if len(families) > 1:
            raise RulesError(f"{self.path}: {path} matches several parts: "
                             + ", ".join(p.name for p in hits))
        return hits[0].name

    def arrow(self, frm, to):
        """None when frm may use to, else the message tail."""
        if frm == to:
            return None
        part = self.parts[frm]
        if to in part.allowed:
            return None
        rid = part.forbidden.get(to, part.forbidden.get("*"))
        if rid is not None:
            return f"is forbidden: {self.reasons[rid]}"
        allowed = ", ".join(sorted(part.allowed)) or "nothing of ours"
        return f"is not allowed: not in {frm}'s allowed list ({allowed})"

    def private_owner(self, path, frm, to):
        """The reason text when path is a private header frm may not include."""
        for globs, visible, rid in self.private:
            if globs.match(path):
                if frm.split(".")[0] == to.split(".")[0] or frm in visible:
                    return None
                return f"{path} is private to {to}: {self.reasons[rid]}"
        return None

    def external_rule(self, frm, name, kind):
        """(rule, message tail) for an external header/link frm may not use."""
        for rule in self.external:
            globs = rule.headers if kind == "header" else rule.links
            if globs.match(name):
                if frm in rule.allowed_in:
                    return None
                return rule, f"is forbidden: {self.reasons[rule.why]}"
        return None


# --- the tree ---------------------------------------------------------------

def list_files(root, rules):
    """Repository-relative paths of the files to look at (git's view if any)."""
    files = None
    try:
        # Only when root is a work tree's top: a folder inside some other
        # repository (a test's temporary tree) is walked instead.
        top = subprocess.run(["git", "-C", root, "rev-parse", "--show-toplevel"],
                             capture_output=True, check=True, text=True).stdout.strip()
        if os.path.realpath(top) == os.path.realpath(root):
            out = subprocess.run(["git", "-C", root, "ls-files", "-z", "--cached", "--others",
                                  "--exclude-standard"], capture_output=True, check=True)
            files = [f for f in out.stdout.decode("utf-8", "surrogateescape").split("\0") if f]
            files = [f for f in files if os.path.isfile(os.path.join(root, f))]
    except (OSError, subprocess.CalledProcessError):
        files = None
    if files is None:
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            rel_dir = os.path.relpath(dirpath, root)
            rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
            # Hidden folders and build trees (they hold a CMakeCache.txt).
            dirnames[:] = sorted(
                d for d in dirnames
                if not d.startswith(".")
                and not os.path.exists(os.path.join(dirpath, d, "CMakeCache.txt")))
            for name in filenames:
                files.append(rel_dir + name)
    return sorted(f for f in files if not rules.skip.match(f))


def read_lines(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read().split("\n")


def _strip_block_comments(line, in_block):
    """The line without /* */ comments, and whether one is still open after it."""
    out = []
    i = 0
    while i < len(line):
        if in_block:
            end = line.find("*/", i)
            if end < 0:
                return "".join(out), True
            i = end + 2
            in_block = False
            continue
        start = line.find("/*", i)
        line_comment = line.find("//", i)
        if start < 0 or 0 <= line_comment < start:
            out.append(line[i:])
            break
        out.append(line[i:start])
        i = start + 2
        in_block = True
    return "".join(out), in_block


def includes_of(path):
    """(line number, delimiter, spec) for each #include outside /* */ comments."""
    in_block = False
    for number, line in enumerate(read_lines(path), 1):
        code, in_block_after = _strip_block_comments(line, in_block)
        in_block = in_block_after
        m = INCLUDE_RE.match(code)
        if m:
            yield number, m.group(1), m.group(2).strip()


# --- CMake ------------------------------------------------------------------

def _skip_comment(text, i, line):
    """At a '#': returns the index after the comment and the line there."""
    m = BRACKET_OPEN_RE.match(text, i + 1)
    if m:
        close = "]" + m.group(1) + "]"
        end = text.find(close, m.end())
        end = len(text) if end < 0 else end + len(close)
        return end, line + text.count("\n", i, end)
    end = text.find("\n", i)
    return (len(text) if end < 0 else end), line


def _parse_args(text, i, line):
    """Arguments of a command from just after its '(': ([(value, line, quoted)], i, line)."""
    args = []
    cur = None
    cur_line = line
    depth = 1
    n = len(text)

    def flush():
        nonlocal cur
        if cur is not None:
            args.append(("".join(cur), cur_line, False))
            cur = None

    while i < n:
        c = text[i]
        if c == "\n":
            flush()
            line += 1
            i += 1
        elif c in " \t\r":
            flush()
            i += 1
        elif c == "#" and cur is None:
            i, line = _skip_comment(text, i, line)
        elif c == "(":
            flush()
            depth += 1
            i += 1
        elif c == ")":
            flush()
            depth -= 1
            i += 1
            if depth == 0:
                return args, i, line
        elif c == '"' and cur is None:
            start_line = line
            j = i + 1
            value = []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    value.append(text[j:j + 2])
                    j += 2
                    continue
                if text[j] == "\n":
                    line += 1
                value.append(text[j])
                j += 1
            args.append(("".join(value), start_line, True))
            i = j + 1
        elif c == "[" and cur is None and BRACKET_OPEN_RE.match(text, i):
            m = BRACKET_OPEN_RE.match(text, i)
            close = "]" + m.group(1) + "]"
            end = text.find(close, m.end())
            end = n if end < 0 else end
            args.append((text[m.end():end], line, True))
            line += text.count("\n", i, end)
            i = min(n, end + len(close))
        else:
            if cur is None:
                cur = []
                cur_line = line
            if c == "\\" and i + 1 < n:
                cur.append(text[i:i + 2])
                i += 2
            else:
                cur.append(c)
                i += 1
    flush()
    return args, i, line


def cmake_commands(text):
    """(lower-case command name, [(arg, line, quoted)], line) for each command."""
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c == "#":
            i, line = _skip_comment(text, i, line)
        else:
            m = IDENT_RE.match(text, i)
            if not m:
                i += 1
                continue
            j = m.end()
            while j < n and text[j] in " \t":
                j += 1
            if j < n and text[j] == "(":
                start = line
                args, i, line = _parse_args(text, j + 1, line)
                yield m.group(0).lower(), args, start
            else:
                i = m.end()


def _expand(args, variables):
    """Splits lists and expands whole-token ${VAR} from set() in the same file."""
    out = []
    for value, line, quoted in args:
        if quoted:
            out.append((value, line))
            continue
        m = WHOLE_VAR_RE.match(value)
        if m and m.group(1) in variables:
            out.extend((v, line) for v in variables[m.group(1)])
        elif "$<" in value:
            out.append((value, line))
        else:
            out.extend((v, line) for v in value.split(";") if v)
    return out


def _resolved(value):
    return value and "${" not in value and "$<" not in value


class Target:
    def __init__(self, name, cmake_path, line):
        self.name = name
        self.cmake_path = cmake_path
        self.line = line
        self.sources = []
        self.part = None


def parse_cmake_files(root, cmake_files):
    """({target name: Target}, {alias: target}, [(cmake path, from target, item, line)])."""
    targets, aliases, links, extra_sources = {}, {}, [], []
    for path in cmake_files:
        text = "\n".join(read_lines(os.path.join(root, path)))
        directory = os.path.dirname(path)
        variables = {}
        for command, raw_args, line in cmake_commands(text):
            args = _expand(raw_args, variables)
            if not args:
                continue
            name = args[0][0]
            if command == "set" and _resolved(name):
                values = []
                for value, _ in args[1:]:
                    if value in ("CACHE", "PARENT_SCOPE"):
                        break
                    values.append(value)
                variables[name] = values
            elif command in ("add_library", "add_executable") and _resolved(name):
                rest = [v for v, _ in args[1:]]
                if "IMPORTED" in rest:
                    continue
                if rest and rest[0] == "ALIAS":
                    if len(rest) > 1:
                        aliases[name] = rest[1]
                    continue
                target = Target(name, path, line)
                target.sources = [(directory, v) for v in rest
                                  if v not in LIBRARY_KEYWORDS and _resolved(v)]
                targets[name] = target
            elif command == "target_sources" and _resolved(name):
                extra_sources.extend((name, directory, v) for v, _ in args[1:]
                                     if v not in SOURCES_KEYWORDS and _resolved(v))
            elif command == "target_link_libraries" and _resolved(name):
                for item, item_line in args[1:]:
                    if item in LINK_KEYWORDS or not _resolved(item):
                        continue
                    if item.startswith("-") or "/" in item:  # linker flags, files
                        continue
                    links.append((path, name, item, item_line))
    for name, directory, source in extra_sources:
        if name in targets:
            targets[name].sources.append((directory, source))
    return targets, aliases, links


def assign_target_parts(rules, targets):
    """A target's part: that of its sources (a library mixed with its own edge:
    the edge), else that of the CMakeLists.txt defining it."""
    for target in targets.values():
        parts = set()
        for directory, source in target.sources:
            if os.path.isabs(source):
                continue
            path = os.path.normpath(os.path.join(directory, source)).replace(os.sep, "/")
            part = rules.part_of(path)
            if part:
                parts.add(part)
        folder = rules.part_of(target.cmake_path)
        if len(parts) == 1:
            target.part = parts.pop()
        elif parts and len({p.split(".")[0] for p in parts}) == 1:
            edges = [p for p in parts if p.endswith(EDGE_SUFFIX)]
            target.part = edges[0] if edges else folder
        else:
            target.part = folder


# --- the check --------------------------------------------------------------

class Checker:
    def __init__(self, root, rules):
        self.root = root
        self.rules = rules
        self.violations = []  # (path, line, message)
        self.counts = {"files": 0, "includes": 0, "targets": 0, "links": 0}
        self.targets = {}
        self.part_files = {}

    def report(self, path, line, message):
        self.violations.append((path, line, message))

    def run(self):
        rules = self.rules
        files = list_files(self.root, rules)
        file_set = set(files)
        top_dirs = {f.split("/", 1)[0] for f in files if "/" in f}
        for part in rules.parts.values():
            for g in part.files.globs:
                first = g.split("/", 1)[0]
                if "*" not in first and "?" not in first:
                    top_dirs.add(first)

        for part in rules.match_order:
            for glob, regex in zip(part.files.globs, part.files.regexes):
                if not any(regex.match(f) for f in files):
                    print(f"warning: {rules.path}: part {part.name}: '{glob}' matches no file",
                          file=sys.stderr)

        sources = [f for f in files if rules.sources.match(f.rsplit("/", 1)[-1])]
        for path in sources:
            self.check_source(path, file_set, top_dirs)

        cmake_files = [f for f in files if rules.cmake.match(f.rsplit("/", 1)[-1])]
        targets, aliases, links = parse_cmake_files(self.root, cmake_files)
        assign_target_parts(rules, targets)
        self.targets = targets
        self.counts["targets"] = len(targets)
        for path, name, item, line in links:
            self.check_link(targets, aliases, path, name, item, line)

        self.violations.sort(key=lambda v: (v[0], v[1], v[2]))
        return self.violations

    def explain(self):
        for name, target in sorted(self.targets.items()):
            print(f"target {name}: {target.part} ({target.cmake_path}:{target.line})")
        for part, count in sorted(self.part_files.items()):
            print(f"part {part}: {count} C/C++ file(s)")

    def check_source(self, path, file_set, top_dirs):
        rules = self.rules
        self.counts["files"] += 1
        frm = rules.part_of(path)
        self.part_files[str(frm)] = self.part_files.get(str(frm), 0) + 1
        if frm is None:
            self.report(path, 1, f"{path} belongs to no part of the architecture")
            return
        for line, delim, spec in includes_of(os.path.join(self.root, path)):
            self.counts["includes"] += 1
            target = self.resolve_include(path, delim, spec, file_set, top_dirs)
            if target[0] == "external":
                hit = rules.external_rule(frm, spec, "header")
                if hit:
                    rule, tail = hit
                    self.report(path, line, f"{frm} -> {rule.name} <{spec}> {tail}")
                continue
            if target[0] == "generated":
                to = target[1]
            else:
                to = rules.part_of(target[1])
                if to is None:
                    self.report(path, line, f"{frm} -> \"{spec}\" belongs to no part of the "
                                "architecture")
                    continue
                private = rules.private_owner(target[1], frm, to)
                if private:
                    self.report(path, line, f"{frm} -> {to} is forbidden: {private}"
                                f" [#include \"{spec}\"]")
                    continue
            tail = rules.arrow(frm, to)
            if tail:
                self.report(path, line, f"{frm} -> {to} {tail} [#include {delim}{spec}"
                            f"{'>' if delim == '<' else delim}]")

    def resolve_include(self, path, delim, spec, file_set, top_dirs):
        """('ours', repo path) | ('generated', part) | ('external', spec)."""
        normal = os.path.normpath(spec).replace(os.sep, "/")
        first = normal.split("/", 1)[0]
        if "/" in normal and not normal.startswith(".."):
            if (delim == '"' and first in top_dirs) or normal in file_set:
                return "ours", normal
        for globs, part in self.rules.generated:
            if globs.match(normal):
                return "generated", part
        if delim == '"':
            relative = os.path.normpath(os.path.join(os.path.dirname(path), spec))
            relative = relative.replace(os.sep, "/")
            if relative in file_set:
                return "ours", relative
        return "external", spec

    def check_link(self, targets, aliases, path, name, item, line):
        rules = self.rules
        source = targets.get(aliases.get(name, name))
        if source is None:
            return  # a target this checker cannot see (defined through a variable)
        frm = source.part
        if frm is None:
            self.report(path, line, f"target {name} belongs to no part of the architecture")
            return
        self.counts["links"] += 1
        dest = targets.get(aliases.get(item, item))
        if dest is None:
            hit = rules.external_rule(frm, item, "link")
            if hit:
                rule, tail = hit
                self.report(path, line, f"{frm} -> {rule.name} {item} {tail}"
                            f" [{name} links {item}]")
            return
        if dest.part is None:
            self.report(path, line, f"{frm} -> target {item} belongs to no part of the "
                        "architecture")
            return
        tail = rules.arrow(frm, dest.part)
        if tail:
            self.report(path, line, f"{frm} -> {dest.part} {tail} [{name} links {item}]")


def main(argv=None):
    default_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=default_root,
                        help="repository root (default: the one holding this script)")
    parser.add_argument("--rules", default=None,
                        help="rules file (default: ROOT/docs/architecture.json)")
    parser.add_argument("--explain", action="store_true",
                        help="also print the part of every CMake target and the files per part")
    args = parser.parse_args(argv)
    root = os.path.abspath(args.root)
    rules_path = args.rules or os.path.join(root, "docs", "architecture.json")
    shown_rules = os.path.relpath(rules_path, root) if not args.rules else args.rules
    try:
        rules = Rules(rules_path)
        rules.path = shown_rules
        checker = Checker(root, rules)
        violations = checker.run()
        if args.explain:
            checker.explain()
    except RulesError as e:
        print(f"check_architecture: rules error: {e}", file=sys.stderr)
        return 2
    for path, line, message in violations:
        print(f"{path}:{line}: {message}")
    c = checker.counts
    summary = (f"{c['files']} files, {c['includes']} #includes, {c['targets']} CMake targets, "
               f"{c['links']} links against {shown_rules} ({len(rules.parts)} parts)")
    if violations:
        print(f"check_architecture: {len(violations)} violation(s); checked {summary}")
        return 1
    print(f"check_architecture: OK: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
