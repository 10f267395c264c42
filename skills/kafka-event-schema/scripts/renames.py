#!/usr/bin/env python3
"""Report the schema changes a compatibility check lets through: renamed
records, enums and fixed types (a new full name is a new subject under
TopicRecordNameStrategy, and readers that look their schema up by name do
not find it), and renamed fields (without an alias the value is lost; with
one, only readers whose Avro library follows aliases keep it).

    python3 renames.py OLD NEW

OLD and NEW are two .avsc files, or two folders whose .avsc files are
compared by file name. Standard library only. Exits 1 when it finds
something, 0 when it finds nothing.
"""

import json
import sys
from pathlib import Path

NAMED = ("record", "error", "enum", "fixed")


def full_name(schema, namespace):
    name = schema["name"]
    if "." in name:
        return name.lstrip(".")
    namespace = schema.get("namespace", namespace)
    return f"{namespace}.{name}" if namespace else name


def walk(schema, path, namespace, types, records):
    """Collects the full name of every named type and the fields of every
    record, by their place in the schema (`data.task.priority`)."""
    if isinstance(schema, list):
        for branch in schema:
            walk(branch, path, namespace, types, records)
        return
    if not isinstance(schema, dict):
        return  # a primitive, or a reference to a type named elsewhere
    kind = schema.get("type")
    if kind in NAMED:
        name = full_name(schema, namespace)
        types[path or "(top)"] = name
        namespace = name.rpartition(".")[0]
    if kind in ("record", "error"):
        records[path or "(top)"] = {
            f["name"]: set(f.get("aliases", [])) for f in schema["fields"]
        }
        for field in schema["fields"]:
            inner = f"{path}.{field['name']}" if path else field["name"]
            walk(field["type"], inner, namespace, types, records)
    elif kind == "array":
        walk(schema["items"], f"{path}[]", namespace, types, records)
    elif kind == "map":
        walk(schema["values"], f"{path}{{}}", namespace, types, records)
    elif isinstance(kind, (dict, list)):
        walk(kind, path, namespace, types, records)


def findings(old, new):
    old_types, old_records, new_types, new_records = {}, {}, {}, {}
    walk(old, "", None, old_types, old_records)
    walk(new, "", None, new_types, new_records)
    for place, name in old_types.items():
        if place in new_types and new_types[place] != name:
            yield f"{place}: type renamed {name} -> {new_types[place]}"
    for place, fields in old_records.items():
        if place not in new_records:
            continue
        removed = set(fields) - set(new_records[place])
        added = set(new_records[place]) - set(fields)
        for name in sorted(added):
            aliased = new_records[place][name] & removed
            if aliased:
                yield (
                    f"{place}: field {', '.join(sorted(aliased))} renamed to {name} "
                    "with an alias (apache-avro readers do not follow it)"
                )
                removed -= aliased
            elif removed:
                yield (
                    f"{place}: field {name} added while {', '.join(sorted(removed))} "
                    "removed: a rename without an alias?"
                )


def pairs(old, new):
    if old.is_dir():
        for path in sorted(old.glob("*.avsc")):
            if (new / path.name).exists():
                yield path.name, path, new / path.name
    else:
        yield new.name, old, new


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip())
    found = False
    for label, old, new in pairs(Path(sys.argv[1]), Path(sys.argv[2])):
        old_schema = json.loads(old.read_text())
        new_schema = json.loads(new.read_text())
        for finding in findings(old_schema, new_schema):
            print(f"{label}: {finding}")
            found = True
    if not found:
        print("no renamed types or fields")
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
