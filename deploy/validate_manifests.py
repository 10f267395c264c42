#!/usr/bin/env python3
"""Validates Kubernetes manifests offline, strictly: an unknown field anywhere
(a typo) is an error, as the API server would otherwise drop it silently.

usage: validate_manifests.py [--kubernetes-version V]... CRD_DIR MANIFEST...

- Strimzi resources (kafka.strimzi.io) against the CustomResourceDefinitions
  in CRD_DIR;
- core Kubernetes kinds (Deployment, Service, ConfigMap, StatefulSet, ...)
  against the OpenAPI schemas bundled in the kubernetes-validate package, for
  each --kubernetes-version (default: 1.30, the oldest release taskstream
  supports, and the newest the package knows);
- ServiceMonitors (monitoring.coreos.com/v1): no schema for them is available
  offline, so they are checked structurally against the fields the chart uses.
A resource of any other kind is an error. Exits 0 when everything is valid;
prints one line per problem, then what was checked."""

import argparse
import glob
import json
import os
import re
import sys

import jsonschema
import yaml

try:
    import importlib_resources
    import kubernetes_validate
    import referencing
    import referencing.jsonschema
except ImportError:  # reported when a core kind needs it
    kubernetes_validate = None

OLDEST_SUPPORTED_KUBERNETES = "1.30"


def strict(schema, fragment=False):
    """Forbids properties a schema does not declare, where it declares some.

    The branches of oneOf/anyOf/allOf are fragments of their parent, not whole
    objects: Strimzi's CRDs use them to say which of the parent's properties
    are required (`oneOf: [{properties: {certificate: {}}, required:
    [certificate]}, ...]`), so they are not closed."""
    if isinstance(schema, dict):
        if "properties" in schema and not fragment and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
        for key, value in schema.items():
            if key in ("properties", "patternProperties"):
                for sub in value.values():
                    strict(sub)
            elif key in ("items", "additionalProperties", "not"):
                strict(value)
            elif key in ("anyOf", "oneOf", "allOf"):
                for sub in value:
                    strict(sub, fragment=True)
    return schema


def load_crd_schemas(crd_dir):
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


# The prometheus-operator's Duration pattern.
DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
LABEL_SELECTOR = {
    "type": "object",
    "properties": {
        "matchLabels": STRING_MAP,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
# The part of monitoring.coreos.com/v1 ServiceMonitor that the chart uses,
# with the types and constraints of the prometheus-operator's CRD.
SERVICE_MONITOR = strict({
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253},
                "namespace": {"type": "string"},
                "labels": STRING_MAP,
                "annotations": STRING_MAP,
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": LABEL_SELECTOR,
                "namespaceSelector": {
                    "type": "object",
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "jobLabel": {"type": "string"},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": DURATION,
                            "scrapeTimeout": DURATION,
                            "honorLabels": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
})


class CoreSchemas:
    """The Kubernetes OpenAPI schemas kubernetes-validate bundles, strict variant."""

    def __init__(self, versions):
        self.root = importlib_resources.files("kubernetes_validate").joinpath("kubernetes-json-schema")
        known = kubernetes_validate.utils.all_versions()
        self.versions = []
        for wanted in versions:
            # The newest bundled schema not newer than the wanted release.
            matching = [v for v in known if _minor(v) <= _minor(wanted)]
            if not matching:
                raise SystemExit(f"kubernetes-validate has no schemas for Kubernetes {wanted} or older")
            if matching[-1] not in self.versions:
                self.versions.append(matching[-1])
        self.validators = {}

    def validator(self, version, api_version, kind):
        # apps/v1 -> apps-v1, policy/v1 -> policy-v1, v1 -> v1, rbac.authorization.k8s.io/v1 -> rbac-v1
        group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
        directory = self.root.joinpath(f"v{version}-local-strict")
        name = f"{kind.lower()}-{group_version}.json"
        key = (version, name)
        if key not in self.validators:
            path = directory.joinpath(name)
            if not path.is_file():
                self.validators[key] = None
            else:
                schema = json.loads(path.read_text())
                definitions = json.loads(directory.joinpath("_definitions.json").read_text())
                registry = referencing.Registry().with_resources([
                    ("", referencing.Resource.from_contents(schema, default_specification=referencing.jsonschema.DRAFT202012)),
                    ("_definitions.json", referencing.Resource.from_contents(definitions, default_specification=referencing.jsonschema.DRAFT202012)),
                ])
                self.validators[key] = jsonschema.Draft202012Validator(schema, registry=registry)
        return self.validators[key]


def _minor(version):
    return tuple(int(part) for part in version.split(".")[:2])


def errors_of(validator, doc):
    return sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])


def main() -> int:
    parser = argparse.ArgumentParser(
        usage="validate_manifests.py [--kubernetes-version V]... CRD_DIR MANIFEST...",
        description="Validates Kubernetes manifests offline and strictly (see the module's docstring).")
    parser.add_argument("--kubernetes-version", action="append", dest="versions", metavar="V",
                        help="a Kubernetes release to validate core kinds for (repeatable); "
                             f"default {OLDEST_SUPPORTED_KUBERNETES} and the newest bundled")
    parser.add_argument("crd_dir", help="directory of Strimzi CustomResourceDefinitions")
    parser.add_argument("manifests", nargs="+", help="YAML files, any number of documents each")
    args = parser.parse_args()

    crd_schemas = load_crd_schemas(args.crd_dir)
    if not crd_schemas:
        print(f"no CustomResourceDefinitions found in {args.crd_dir}", file=sys.stderr)
        return 2
    core = None
    problems = 0
    counts = {"strimzi": 0, "core": 0, "servicemonitor": 0}

    def problem(path, kind, name, where, message):
        nonlocal problems
        print(f"{path}: {kind}/{name}: {where}: {message}")
        problems += 1

    for path in args.manifests:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind"):
                problem(path, "?", "?", "(root)", "not a Kubernetes resource (no apiVersion or kind)")
                continue
            api_version, kind = doc["apiVersion"], doc["kind"]
            name = (doc.get("metadata") or {}).get("name", "?")
            if api_version.startswith("kafka.strimzi.io/"):
                schema = crd_schemas.get((api_version, kind))
                if schema is None:
                    problem(path, kind, name, "(root)", f"no CRD for {api_version} {kind}")
                    continue
                for error in errors_of(jsonschema.Draft7Validator(schema), doc):
                    where = ".".join(str(p) for p in error.absolute_path) or "(root)"
                    problem(path, kind, name, where, error.message)
                counts["strimzi"] += 1
            elif api_version.startswith("monitoring.coreos.com/"):
                if kind != "ServiceMonitor":
                    problem(path, kind, name, "(root)", f"no schema for {api_version} {kind}")
                    continue
                for error in errors_of(jsonschema.Draft7Validator(SERVICE_MONITOR), doc):
                    where = ".".join(str(p) for p in error.absolute_path) or "(root)"
                    problem(path, kind, name, where, error.message)
                counts["servicemonitor"] += 1
            else:
                if kubernetes_validate is None:
                    print("kubernetes-validate is not installed: pip install -r deploy/requirements.txt", file=sys.stderr)
                    return 2
                if core is None:
                    core = CoreSchemas(args.versions or [OLDEST_SUPPORTED_KUBERNETES, kubernetes_validate.utils.latest_version()])
                for version in core.versions:
                    validator = core.validator(version, api_version, kind)
                    if validator is None:
                        problem(path, kind, name, "(root)", f"no Kubernetes {_minor_str(version)} schema for {api_version} {kind}")
                        break
                    for error in errors_of(validator, doc):
                        where = ".".join(str(p) for p in error.absolute_path) or "(root)"
                        problem(path, kind, name, where, f"{error.message} (Kubernetes {_minor_str(version)})")
                else:
                    counts["core"] += 1

    print(f"{counts['strimzi']} Strimzi resource(s) checked against the CRDs in {args.crd_dir}")
    if counts["core"]:
        releases = " and ".join(_minor_str(v) for v in core.versions)
        print(f"{counts['core']} Kubernetes resource(s) checked strictly against the {releases} schemas")
    if counts["servicemonitor"]:
        print(f"{counts['servicemonitor']} ServiceMonitor(s) checked structurally only: "
              "no monitoring.coreos.com/v1 schema is available offline")
    print(f"{problems} problem(s)")
    return 1 if problems else 0


def _minor_str(version):
    return ".".join(version.split(".")[:2])


if __name__ == "__main__":
    sys.exit(main())
