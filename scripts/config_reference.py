#!/usr/bin/env python3
"""Writes the configuration reference (docs/reference.md) from the JSON
Schemas that `tributary schema pipeline|config` prints: the same types that
read the files, so the reference names every key they take, with its type
and doc comment. The test suite regenerates it and fails when the file in
the repository differs (tests/it/check.rs), so it cannot go stale.

Usage: scripts/config_reference.py TRIBUTARY_BINARY > docs/reference.md
"""
import json
import subprocess
import sys

HEADER = """# Configuration reference

Every key of `tributary.toml` and of a pipeline file, with its type and
what it does, generated from the types that read the files
(`scripts/config_reference.py`, from `tributary schema config|pipeline`; the
test suite fails when this file is not current). `docs/configuration.md`
explains them with examples; `tributary check --explain` prints the
settings in effect, defaults filled in.
"""


def resolve(schema, root):
    """The schema `schema` stands for, with `$ref` and `Option`'s
    `anyOf [X, null]` looked through."""
    while True:
        if "$ref" in schema:
            schema = root["$defs"][schema["$ref"].split("/")[-1]]
            continue
        options = [s for s in schema.get("anyOf", []) if s.get("type") != "null"]
        if "anyOf" in schema and len(options) == 1:
            merged = dict(options[0])
            if "description" in schema and "description" not in merged:
                merged["description"] = schema["description"]
            schema = merged
            continue
        return schema


def type_name(schema, root):
    """A short type for a person: string, integer, table, [table], a | b."""
    schema = resolve(schema, root)
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return " \\| ".join(json.dumps(v) for v in schema["enum"] if v is not None)
    for key in ("oneOf", "anyOf"):
        if key in schema:
            names = []
            for option in schema[key]:
                option = resolve(option, root)
                if option.get("type") == "null":
                    continue
                name = type_name(option, root)
                if name not in names:
                    names.append(name)
            return " \\| ".join(names)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = [k for k in kind if k != "null"]
        kind = kind[0] if len(kind) == 1 else " \\| ".join(kind)
    if kind == "array":
        return "[" + type_name(schema.get("items", {}), root) + "]"
    if kind == "object" or "properties" in schema:
        return "table"
    if kind == "number":
        return "number"
    return kind or "value"


def describe(schema):
    text = " ".join(schema.get("description", "").split())
    return text.replace("|", "\\|")


def rows(schema, root, prefix, out):
    """One row per key under `prefix`, then the keys of its tables."""
    schema = resolve(schema, root)
    variants = schema.get("oneOf")
    if variants and all("properties" in resolve(v, root) for v in variants):
        # A table tagged by `type`: each kind's keys under its own heading.
        for variant in variants:
            variant = resolve(variant, root)
            tag = variant["properties"].get("type", {}).get("const")
            label = f"{prefix} (type = \"{tag}\")" if tag else prefix
            out.append(("section", label, describe(variant)))
            keys(variant, root, prefix, out)
        return
    if "properties" in schema:
        keys(schema, root, prefix, out)
        return
    if schema.get("type") == "array" or (
        isinstance(schema.get("type"), list) and "array" in schema["type"]
    ):
        items = resolve(schema.get("items", {}), root)
        if "properties" in items or "oneOf" in items:
            rows(items, root, prefix + "[]", out)


def keys(schema, root, prefix, out):
    nested = []
    for name in sorted(schema.get("properties", {})):
        value = schema["properties"][name]
        path = f"{prefix}.{name}" if prefix else name
        out.append(("key", path, type_name(value, root), describe(value) or describe(resolve(value, root))))
        inner = resolve(value, root)
        if (
            "properties" in inner
            or "oneOf" in inner
            or inner.get("type") == "array"
            or (isinstance(inner.get("type"), list) and "array" in inner["type"])
        ):
            nested.append((value, path))
    for value, path in nested:
        rows(value, root, path, out)


def render(title, schema):
    out = []
    rows(schema, schema, "", out)
    lines = [f"## {title}", "", describe(schema), ""]
    table_open = False
    for row in out:
        if row[0] == "section":
            lines += ["", f"### `{row[1]}`", ""]
            if row[2]:
                lines += [row[2], ""]
            table_open = False
            continue
        if not table_open:
            lines += ["| key | type | what it does |", "|---|---|---|"]
            table_open = True
        _, path, kind, text = row
        lines.append(f"| `{path}` | {kind} | {text} |")
    return "\n".join(lines).rstrip() + "\n"


def main():
    binary = sys.argv[1]
    schemas = {
        name: json.loads(
            subprocess.run([binary, "schema", name], check=True, capture_output=True).stdout
        )
        for name in ("config", "pipeline")
    }
    print(HEADER)
    print(render("`tributary.toml`", schemas["config"]))
    print(render("Pipeline files (`pipelines/*.toml`)", schemas["pipeline"]), end="")


if __name__ == "__main__":
    main()
