#!/usr/bin/env python3
"""What changed in the OpenAPI document, each change marked additive or breaking for a client.

    make spec-diff                              # HEAD's document -> the working copy
    make spec-diff SPEC_BASE=origin/main        # another commit as the old side
    python scripts/spec_diff.py OLD.yaml NEW.yaml

Exit status: 0 when nothing changed or every change is additive, 1 when a change is breaking,
2 when a document cannot be read. Compared: paths and operations, request bodies, parameters,
response statuses, headers and media types, component schemas, properties (added, removed,
required), types and formats, limits, enums, additionalProperties. Not compared: descriptions,
summaries, examples, tags, servers, security and info.

The rule. This project is a client: it sends requests and reads responses. A change is
breaking when a request the client sends today may be refused, when a response it reads today
may hold what it does not expect, or when the generated names and types that the hand-written
code uses change. Everything else is additive.

- Operations: added is additive; removed, or a changed operationId (the generated function is
  renamed), is breaking.
- What the client sends (request bodies, parameters): a new optional property or parameter is
  additive; a new required one, an optional one made required, a removed one (additional
  properties are refused) is breaking. A loosened limit (maxLength, maxItems, maxProperties,
  maximum raised or dropped; minLength, minItems, minProperties, minimum lowered or dropped)
  is additive, a tightened or new one breaking. New enum values, dropped patterns and
  additional properties newly allowed are additive; the reverse is breaking.
- What the client reads (responses): a new status, header, media type or property is additive
  (the generated models ignore unknown keys); a removed one, a required property made
  optional, a property made nullable, new enum values are breaking. Limits of responses do
  not bind the client: changing them is additive.
- Both: a changed type or format, a changed ``$ref`` target, a changed allOf/oneOf/anyOf/not
  (not analysed further) is breaking: the generated Python types change.
- A component schema gets the rules of every direction it is used in (``Event`` is sent, and
  echoed in 207 errors): breaking in either is breaking. A schema used nowhere gets both. A new
  component schema is additive, a removed one breaking.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
SPEC = "openapi/togai-ingestion.yaml"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
REQUEST, RESPONSE = "request", "response"
BOTH = frozenset({REQUEST, RESPONSE})
# Limits that bound a value from above (raising one loosens it) and from below.
UPPER_LIMITS = ("maxLength", "maxItems", "maxProperties", "maximum")
LOWER_LIMITS = ("minLength", "minItems", "minProperties", "minimum")
# Constraints that only restrict: adding or changing one tightens, dropping one loosens.
CONSTRAINTS = ("pattern", "uniqueItems", "multipleOf", "exclusiveMinimum", "exclusiveMaximum")
COMPOSITION = ("allOf", "oneOf", "anyOf", "not")
SCHEMA_PREFIX = "#/components/schemas/"


@dataclass(frozen=True)
class Change:
    where: str  # "POST /ingest", "schema Event.id", ...
    what: str
    breaking: bool

    def __str__(self) -> str:
        return f"{'BREAKING' if self.breaking else 'additive'}  {self.where}: {self.what}"


def resolve(document: dict[str, Any], node: Any) -> Any:
    """``node`` with its local ``$ref`` chain followed."""
    seen: set[str] = set()
    while isinstance(node, dict) and isinstance(node.get("$ref"), str):
        ref: str = node["$ref"]
        if not ref.startswith("#/") or ref in seen:
            raise ValueError(f"unsupported or circular reference: {ref}")
        seen.add(ref)
        node = document
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """``(path, method) -> operation`` with the path item's parameters merged in."""
    found = {}
    for path, item in (document.get("paths") or {}).items():
        for method in HTTP_METHODS:
            if method in item:
                operation = dict(item[method])
                operation["parameters"] = [
                    *item.get("parameters", []),
                    *item[method].get("parameters", []),
                ]
                found[path, method] = operation
    return found


def schema_usage(document: dict[str, Any]) -> dict[str, set[str]]:
    """For each component schema, the directions it is used in (request and/or response)."""
    usage: dict[str, set[str]] = {}
    seen: set[tuple[str, str]] = set()

    def mark(node: Any, direction: str) -> None:
        if isinstance(node, list):
            for item in node:
                mark(item, direction)
        elif isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                if (ref, direction) in seen:
                    return
                seen.add((ref, direction))
                if ref.startswith(SCHEMA_PREFIX):
                    usage.setdefault(ref.removeprefix(SCHEMA_PREFIX), set()).add(direction)
                mark(resolve(document, node), direction)
            else:
                for key, value in node.items():
                    if key not in ("example", "examples"):
                        mark(value, direction)

    for operation in operations(document).values():
        mark(operation["parameters"], REQUEST)
        mark(operation.get("requestBody"), REQUEST)
        mark(operation.get("responses"), RESPONSE)
    return usage


def describe(schema: Any) -> str:
    """A short description of a schema: ``string, maxLength 50`` or ``Event``."""
    if not isinstance(schema, dict):
        return repr(schema)
    if isinstance(schema.get("$ref"), str):
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    parts = [
        str(schema.get("type", "any")) + (f" ({schema['format']})" if "format" in schema else "")
    ]
    parts += [f"{key} {schema[key]}" for key in (*UPPER_LIMITS, *LOWER_LIMITS) if key in schema]
    return ", ".join(parts)


class _Differ:
    def __init__(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        self.old, self.new = old, new
        self.changes: list[Change] = []
        old_usage, new_usage = schema_usage(old), schema_usage(new)
        self.usage = {
            name: old_usage.get(name, set()) | new_usage.get(name, set())
            for name in {*old_usage, *new_usage}
        }

    def note(self, where: str, what: str, breaking: bool) -> None:
        self.changes.append(Change(where, what, breaking))

    def note_by_direction(
        self, where: str, what: str, directions: frozenset[str], *, request: bool, response: bool
    ) -> None:
        """Breaking if breaking for one of the directions the schema is used in."""
        breaking = (REQUEST in directions and request) or (RESPONSE in directions and response)
        self.note(where, what, breaking)

    # --- Operations.

    def operations(self) -> None:
        old, new = operations(self.old), operations(self.new)
        for key in new:
            if key not in old:
                self.note(_name(key), "operation added", breaking=False)
        for key in old:
            if key not in new:
                self.note(_name(key), "operation removed", breaking=True)
            else:
                self.operation(_name(key), old[key], new[key])

    def operation(self, where: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        if old.get("operationId") != new.get("operationId"):
            what = f"operationId {old.get('operationId')} -> {new.get('operationId')}"
            self.note(where, f"{what} (the generated function is renamed)", breaking=True)
        self.parameters(where, old["parameters"], new["parameters"])
        self.request_body(where, old.get("requestBody"), new.get("requestBody"))
        self.responses(where, old.get("responses") or {}, new.get("responses") or {})

    def parameters(self, where: str, old: list[Any], new: list[Any]) -> None:
        def by_key(document: dict[str, Any], items: list[Any]) -> dict[str, dict[str, Any]]:
            found = (resolve(document, item) for item in items)
            return {f"{item.get('in')} parameter {item.get('name')}": item for item in found}

        olds, news = by_key(self.old, old), by_key(self.new, new)
        for key, parameter in news.items():
            if key not in olds:
                required = bool(parameter.get("required"))
                kind = "required" if required else "optional"
                self.note(where, f"{key} added ({kind})", breaking=required)
        for key, parameter in olds.items():
            if key not in news:
                self.note(where, f"{key} removed", breaking=True)
                continue
            was, now = bool(parameter.get("required")), bool(news[key].get("required"))
            if was != now:
                what = "now required" if now else "now optional"
                self.note(where, f"{key} {what}", breaking=now)
            self.schema(
                f"{where} {key}", parameter.get("schema"), news[key].get("schema"), {REQUEST}
            )

    def request_body(self, where: str, old: Any, new: Any) -> None:
        old, new = resolve(self.old, old), resolve(self.new, new)
        if old is None and new is None:
            return
        if old is None:
            required = bool(new.get("required"))
            kind = "required" if required else "optional"
            self.note(where, f"request body added ({kind})", breaking=required)
            return
        if new is None:
            self.note(where, "request body removed", breaking=True)
            return
        was, now = bool(old.get("required")), bool(new.get("required"))
        if was != now:
            what = "request body now required" if now else "request body now optional"
            self.note(where, what, breaking=now)
        self.content(f"{where} request", old.get("content"), new.get("content"), {REQUEST})

    def responses(self, where: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        for status in new:
            if status not in old:
                self.note(where, f"response {status} added", breaking=False)
        for status in old:
            if status not in new:
                self.note(where, f"response {status} removed", breaking=True)
                continue
            here = f"{where} {status}"
            old_response = resolve(self.old, old[status])
            new_response = resolve(self.new, new[status])
            self.headers(here, old_response.get("headers"), new_response.get("headers"))
            self.content(
                f"{here} response",
                old_response.get("content"),
                new_response.get("content"),
                {RESPONSE},
            )

    def headers(self, where: str, old: Any, new: Any) -> None:
        old, new = old or {}, new or {}
        for name in new:
            if name not in old:
                self.note(where, f"response header {name} added", breaking=False)
        for name in old:
            if name not in new:
                self.note(where, f"response header {name} removed", breaking=True)
                continue
            old_header, new_header = resolve(self.old, old[name]), resolve(self.new, new[name])
            if bool(old_header.get("required")) and not new_header.get("required"):
                self.note(where, f"response header {name} now optional", breaking=True)
            self.schema(
                f"{where} header {name}",
                old_header.get("schema"),
                new_header.get("schema"),
                {RESPONSE},
            )

    def content(self, where: str, old: Any, new: Any, direction: set[str]) -> None:
        old, new = old or {}, new or {}
        for media in new:
            if media not in old:
                self.note(where, f"media type {media} added", breaking=False)
        for media in old:
            if media not in new:
                self.note(where, f"media type {media} removed", breaking=True)
            else:
                self.schema(
                    f"{where} {media}",
                    old[media].get("schema"),
                    new[media].get("schema"),
                    direction,
                )

    # --- Schemas.

    def components(self) -> None:
        old = (self.old.get("components") or {}).get("schemas") or {}
        new = (self.new.get("components") or {}).get("schemas") or {}
        for name in new:
            if name not in old:
                self.note(f"schema {name}", "schema added", breaking=False)
        for name in old:
            if name not in new:
                self.note(f"schema {name}", "schema removed (its model goes)", breaking=True)
            else:
                self.schema(f"schema {name}", old[name], new[name], self.usage.get(name) or BOTH)

    def schema(self, where: str, old: Any, new: Any, directions: set[str] | frozenset[str]) -> None:
        dirs = frozenset(directions)
        if old is None and new is None:
            return
        if not isinstance(old, dict) or not isinstance(new, dict):
            if old != new:
                self.note(where, f"schema {describe(old)} -> {describe(new)}", breaking=True)
            return
        old_ref, new_ref = old.get("$ref"), new.get("$ref")
        if old_ref is not None or new_ref is not None:
            if old_ref != new_ref:
                self.note(where, f"now {describe(new)} (was {describe(old)})", breaking=True)
            return  # the same component: compared once, as a component
        for keyword in ("type", "format"):
            if old.get(keyword) != new.get(keyword):
                what = f"{keyword} {old.get(keyword, '(none)')} -> {new.get(keyword, '(none)')}"
                self.note(where, what, breaking=True)
                if keyword == "type":
                    return
        for keyword in COMPOSITION:
            if old.get(keyword) != new.get(keyword):
                self.note(where, f"{keyword} changed (not analysed)", breaking=True)
        self.nullable(where, old, new, dirs)
        self.limits(where, old, new, dirs)
        self.enum(where, old, new, dirs)
        self.properties(where, old, new, dirs)
        self.additional_properties(where, old, new, dirs)
        if "items" in old or "items" in new:
            self.schema(f"{where}[]", old.get("items"), new.get("items"), dirs)

    def nullable(
        self, where: str, old: dict[str, Any], new: dict[str, Any], dirs: frozenset[str]
    ) -> None:
        was, now = bool(old.get("nullable")), bool(new.get("nullable"))
        if was != now:
            what = "now nullable" if now else "no longer nullable"
            self.note_by_direction(where, what, dirs, request=was, response=now)

    def limits(
        self, where: str, old: dict[str, Any], new: dict[str, Any], dirs: frozenset[str]
    ) -> None:
        for keyword in (*UPPER_LIMITS, *LOWER_LIMITS, *CONSTRAINTS):
            was, now = old.get(keyword), new.get(keyword)
            if was == now:
                continue
            if now is None:
                what, loosened = f"{keyword} {was} dropped", True
            elif was is None:
                what, loosened = f"{keyword} {now} added", False
            elif keyword in CONSTRAINTS:
                what, loosened = f"{keyword} {was!r} -> {now!r}", False
            else:
                raised = now > was
                what = f"{keyword} {'raised' if raised else 'lowered'} {was} -> {now}"
                loosened = raised if keyword in UPPER_LIMITS else not raised
            self.note_by_direction(where, what, dirs, request=not loosened, response=False)

    def enum(
        self, where: str, old: dict[str, Any], new: dict[str, Any], dirs: frozenset[str]
    ) -> None:
        was, now = old.get("enum"), new.get("enum")
        if was == now:
            return
        if was is None or now is None:
            what = "enum added" if was is None else "enum dropped"
            self.note_by_direction(where, what, dirs, request=was is None, response=now is None)
            return
        added = [value for value in now if value not in was]
        removed = [value for value in was if value not in now]
        if added:
            what = f"enum values added: {', '.join(map(str, added))}"
            self.note_by_direction(where, what, dirs, request=False, response=True)
        if removed:
            what = f"enum values removed: {', '.join(map(str, removed))}"
            self.note_by_direction(where, what, dirs, request=True, response=False)

    def properties(
        self, where: str, old: dict[str, Any], new: dict[str, Any], dirs: frozenset[str]
    ) -> None:
        old_props, new_props = old.get("properties") or {}, new.get("properties") or {}
        old_required, new_required = set(old.get("required", [])), set(new.get("required", []))
        for name, schema in new_props.items():
            if name not in old_props:
                required = name in new_required
                kind = "required" if required else "optional"
                what = f"property {name} added ({kind}; {describe(schema)})"
                self.note_by_direction(where, what, dirs, request=required, response=False)
        added = [name for name in new_props if name not in old_props]
        removed = [name for name in old_props if name not in new_props]
        for name in old_props:
            if name not in new_props:
                same = len(added) == len(removed) == 1
                same = same and describe(old_props[name]) == describe(new_props[added[0]])
                hint = f" (renamed {added[0]}?)" if same else ""
                self.note(where, f"property {name} removed{hint}", breaking=True)
                continue
            was, now = name in old_required, name in new_required
            if was != now:
                what = "now required (was optional)" if now else "now optional (was required)"
                self.note_by_direction(f"{where}.{name}", what, dirs, request=now, response=was)
            self.schema(f"{where}.{name}", old_props[name], new_props[name], dirs)

    def additional_properties(
        self, where: str, old: dict[str, Any], new: dict[str, Any], dirs: frozenset[str]
    ) -> None:
        if old.get("type") != "object" and "additionalProperties" not in {*old, *new}:
            return
        was, now = old.get("additionalProperties", True), new.get("additionalProperties", True)
        if isinstance(was, dict) and isinstance(now, dict):
            self.schema(f"{where}{{}}", was, now, dirs)
        elif was != now:
            if now is False:
                what, request, response = "additional properties no longer allowed", True, False
            elif was is False:
                what, request, response = "additional properties now allowed", False, False
            elif isinstance(now, dict):  # any value -> values of one schema
                what, request, response = f"additional properties now {describe(now)}", True, False
            else:  # values of one schema -> any value
                what, request, response = "additional properties now of any type", False, True
            self.note_by_direction(where, what, dirs, request=request, response=response)


def _name(key: tuple[str, str]) -> str:
    return f"{key[1].upper()} {key[0]}"


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """Every change from ``old`` to ``new`` (parsed documents): operations, then schemas."""
    differ = _Differ(old, new)
    differ.operations()
    differ.components()
    return differ.changes


def report(changes: Sequence[Change], old_name: str, new_name: str) -> str:
    lines = [f"spec-diff: {old_name} -> {new_name}"]
    if not changes:
        lines.append(
            "no change in operations, statuses, headers, schemas, properties, types or limits "
            "(descriptions and examples are not compared)"
        )
        return "\n".join(lines)
    lines += [f"  {change}" for change in changes]
    breaking = sum(change.breaking for change in changes)
    lines.append(
        f"{len(changes)} change(s): {len(changes) - breaking} additive, {breaking} breaking"
    )
    if breaking:
        lines.append(
            "breaking: run `make generate && make test` to see the hand-written code that "
            "depends on it"
        )
    return "\n".join(lines)


class DocumentError(Exception):
    """A document could not be read or parsed."""


def load_file(path: Path) -> dict[str, Any]:
    try:
        return _parse(path.read_text(encoding="utf-8"), str(path))
    except OSError as error:
        raise DocumentError(f"cannot read {path}: {error}") from None


def load_revision(revision: str, path: str = SPEC, repo: Path = REPO_ROOT) -> dict[str, Any]:
    """The document as committed at ``revision`` (``git show REV:path``)."""
    result = subprocess.run(
        ["git", "-C", str(repo), "show", f"{revision}:{path}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise DocumentError(f"git show {revision}:{path} failed: {result.stderr.strip()}")
    return _parse(result.stdout, f"{revision}:{path}")


def _parse(text: str, name: str) -> dict[str, Any]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise DocumentError(f"{name} is not YAML: {error}") from None
    if not isinstance(document, dict) or "paths" not in document:
        raise DocumentError(f"{name} is not an OpenAPI document (no paths)")
    return document


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Summarise what changed in the OpenAPI document, marked additive or "
        "breaking; exit 1 if a change is breaking.",
    )
    parser.add_argument("old", nargs="?", type=Path, help=f"old document (default: BASE:{SPEC})")
    parser.add_argument("new", nargs="?", type=Path, help=f"new document (default: {SPEC})")
    parser.add_argument("--base", default="HEAD", help="commit of the old side (default: HEAD)")
    args = parser.parse_args(argv)
    new_path: Path = args.new or REPO_ROOT / SPEC
    try:
        if args.old is not None:
            old, old_name = load_file(args.old), str(args.old)
        else:
            old, old_name = load_revision(args.base), f"{args.base}:{SPEC}"
        new = load_file(new_path)
    except DocumentError as error:
        print(f"spec-diff: {error}", file=sys.stderr)
        return 2
    new_name = str(args.new) if args.new is not None else f"{SPEC} (working copy)"
    changes = diff(old, new)
    print(report(changes, old_name, new_name))
    return 1 if any(change.breaking for change in changes) else 0


if __name__ == "__main__":
    sys.exit(main())
