#!/usr/bin/env python3
"""Validates Kubernetes manifests against the Strimzi CustomResourceDefinitions,
strictly: an unknown field anywhere (a typo) is an error, as it would be
silently pruned by the API server otherwise.

usage: validate_manifests.py CRD_DIR MANIFEST...
Exits 0 when every Strimzi resource is valid; prints one line per problem."""

import glob
import os
import sys

import jsonschema
import yaml


def strict(schema):
    """Forbids properties a schema does not declare, where it declares some."""
    if isinstance(schema, dict):
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
        for key, value in schema.items():
            if key in ("properties", "patternProperties"):
                for sub in value.values():
                    strict(sub)
            elif key in ("items", "additionalProperties", "not"):
                strict(value)
            elif key in ("anyOf", "oneOf", "allOf"):
                for sub in value:
                    strict(sub)
    return schema


def load_schemas(crd_dir):
    schemas = {}
    for path in sorted(glob.glob(os.path.join(crd_dir, "*.yaml"))):
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                group = doc["spec"]["group"]
                kind = doc["spec"]["names"]["kind"]
                for version in doc["spec"]["versions"]:
                    schema = strict(version["schema"]["openAPIV3Schema"])
                    schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    schemas = load_schemas(sys.argv[1])
    if not schemas:
        print(f"no CustomResourceDefinitions found in {sys.argv[1]}", file=sys.stderr)
        return 2
    problems = 0
    checked = 0
    for path in sys.argv[2:]:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            key = (doc.get("apiVersion"), doc.get("kind"))
            name = (doc.get("metadata") or {}).get("name", "?")
            if key[0] and key[0].startswith("kafka.strimzi.io/"):
                schema = schemas.get(key)
                if schema is None:
                    print(f"{path}: {key[1]}/{name}: no CRD for {key[0]} {key[1]}")
                    problems += 1
                    continue
                validator = jsonschema.Draft7Validator(schema)
                for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
                    where = ".".join(str(p) for p in error.path) or "(root)"
                    print(f"{path}: {key[1]}/{name}: {where}: {error.message}")
                    problems += 1
                checked += 1
    print(f"{checked} Strimzi resource(s) checked, {problems} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
