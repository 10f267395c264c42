#!/usr/bin/env python3
"""Checks that the deployment agrees with the binary, without a cluster.

usage: check_deploy.py --taskstream BIN [--components FILE] [--helm HELM]
                       [--strimzi DIR] [--users FILE] [--set KEY=VALUE]...

The binary is the source of truth: `taskstream users list --json` says, for
each component, its KafkaUser, the ACLs it needs, the HTTP paths it serves and
how many replicas it may run. Against it, for the development environment
(values.yaml, topics-dev.yaml) and the production one (values.yaml +
values-production.yaml, topics-prod.yaml), with the chart rendered by
`helm template`:

  (a) every topic a component uses exists as a KafkaTopic (topics granted by
      prefix, such as the triage agent's `task-triage-replies.<name>`, are
      created by whoever names them, and only noted);
  (b) every KafkaUser in users.yaml grants exactly the ACLs its component
      needs, no more, no less; every taskstream workload the chart renders is
      a component the binary declares; and the chart's consumer groups
      (TASKSTREAM_GROUP of the notifier, the auditor, the saga and the triage
      agent) and topics are among its ACLs, and whoever publishes the outbox
      (the relay, or Kafka Connect) may write every topic the deployed
      components write through it;
  (c) no consumer may run more replicas than its topics have partitions, the
      chart runs no more than the binary allows, and a single-instance
      component is never doubled by a rolling update;
  (d) every probe targets the port the container listens on and a path the
      binary serves, and every Service reaches that port;
  (e) every KafkaUser Secret the chart references is a user in users.yaml, and
      each component authenticates as the user declared for it;
  (f) every pod runs hardened: non-root, read-only root filesystem, no
      capabilities, RuntimeDefault seccomp, resource requests and a memory limit;
  (g) every environment variable and flag the chart gives a taskstream
      container is one its subcommand reads (per `taskstream SUB --help`), with
      a value it accepts;
  (h) the publisher: with `publisher: relay` the relay runs and no Kafka
      Connect does; with `publisher: debezium` (each environment is rendered
      both ways) the relay does not run, the KafkaConnect uses the group and
      internal topics the connect component's ACLs grant (compacted
      KafkaTopics, the config topic with one partition) as its own KafkaUser,
      the KafkaConnector is exactly `taskstream cdc connector-config` for the
      chart's database, its password is read from a Secret the workers may
      read and nothing else, the API marks rows the connector's slot
      confirmed (`--publisher debezium`, the connector's slot), and the
      chart's PostgreSQL runs with wal_level=logical;
  (i) every taskstream container that stores or publishes Avro (`api`,
      `relay`, `saga` and the triage agent, whose auto-accept rule stores
      task events, with `--event-format avro`, the default) or reads it from
      task-events (the consumers and the processor, with `eventFormat:
      avro`) is told where the schema registry is;
  (j) secrets reach the containers only from Secrets: the database URL, the
      Kafka password and the triage agent's model API key are never literal
      values, and the agent's key file lies in a mounted Secret.

--components FILE replaces the output of `users list --json` (to check what a
changed declaration would break); --taskstream is still asked for (g).

Prints each check with its problems; exits 1 when there is any."""

import argparse
import json
import os
import re
import subprocess
import sys

import yaml

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CHART = os.path.join(REPO, "deploy", "helm", "taskstream")
STRIMZI = os.path.join(REPO, "deploy", "strimzi")
# name -> (values files, topics file, Kafka cluster file)
ENVIRONMENTS = {
    "dev": (["values.yaml"], "topics-dev.yaml", "kafka-dev.yaml"),
    "production": (["values.yaml", "values-production.yaml"], "topics-prod.yaml", "kafka-prod.yaml"),
}
# Each environment is also rendered with Debezium publishing the outbox; the
# development values name no registry for the Connect image, so one is given.
PUBLISHERS = {
    "relay": [],
    "debezium": ["publisher=debezium", "connect.build.image=registry.example.com/taskstream-connect:check"],
}
RELEASE = "taskstream"
# Secret keys Strimzi's User Operator writes for a SCRAM KafkaUser.
KAFKA_USER_SECRET_KEYS = {"password", "sasl.jaas.config"}
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


class Report:
    """Collects problems per check and prints them."""

    def __init__(self):
        self.checks = 0
        self.failed = 0

    def check(self, title, problems, notes=()):
        self.checks += 1
        if problems:
            self.failed += 1
            print(f"FAIL {title}")
            for p in problems:
                print(f"     - {p}")
        else:
            print(f"ok   {title}")
        for n in notes:
            print(f"     note: {n}")


# ---- inputs ---------------------------------------------------------------

def shown(path):
    """A path as the reader knows it: relative to the repository when inside it."""
    relative = os.path.relpath(os.path.abspath(path), REPO)
    return path if relative.startswith("..") else relative


def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def load_components(args):
    if args.components:
        with open(args.components) as f:
            text = f.read()
        source = args.components
    else:
        out = subprocess.run([args.taskstream, "users", "list", "--json"], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"`{args.taskstream} users list --json` failed ({out.returncode}):\n{out.stderr.strip()}")
        text = out.stdout
        source = "taskstream users list --json"
    try:
        components = json.loads(text)["components"]
    except (ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"{source}: not the expected document ({e})")
    by_name = {}
    for c in components:
        missing = {"name", "kafka_user", "http_paths", "max_replicas", "acls", "outbox_topics"} - set(c)
        if missing:
            raise SystemExit(f"{source}: component {c.get('name', '?')} lacks {sorted(missing)}")
        by_name[c["name"]] = c
    return by_name


def merged(base, overlay):
    """Helm's merge of one values file over another."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def render(helm, values_files, sets):
    cmd = [helm, "template", RELEASE, CHART]
    for v in values_files:
        cmd += ["-f", os.path.join(CHART, v)]
    for s in sets:
        cmd += ["--set", s]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return None, out.stderr.strip()
    return [d for d in yaml.safe_load_all(out.stdout) if d], None


# ---- ACLs -----------------------------------------------------------------

def acl_key(acl):
    r = acl.get("resource") or {}
    return (
        acl.get("type", "allow"),
        acl.get("host", "*"),
        r.get("type"),
        r.get("name", "") if r.get("type") != "cluster" else "kafka-cluster",
        r.get("patternType", "literal"),
    )


def acl_map(acls):
    """{(type, host, resource type, name, pattern): {operations}}"""
    out = {}
    for acl in acls:
        out.setdefault(acl_key(acl), set()).update(acl.get("operations") or [])
    return out


def describe(key):
    kind, host, rtype, name, pattern = key
    where = "" if host == "*" else f" from {host}"
    deny = "" if kind == "allow" else "deny "
    if rtype == "cluster":
        return f"{deny}cluster{where}"
    return f"{deny}{rtype} {name!r}{' (prefix)' if pattern == 'prefix' else ''}{where}"


def matches(key, rtype, name):
    kind, _, ktype, kname, pattern = key
    if kind != "allow" or ktype != rtype:
        return False
    return name.startswith(kname) if pattern == "prefix" else name == kname


def allowed(component, rtype, name, operation):
    return any(matches(k, rtype, name) and (operation in ops or "All" in ops)
               for k, ops in acl_map(component["acls"]).items())


# ---- rendered workloads ---------------------------------------------------

class Workload:
    """One rendered pod template, with what its containers are given."""

    def __init__(self, doc, config_maps):
        self.doc = doc
        self.kind = doc["kind"]
        self.name = doc["metadata"]["name"]
        labels = doc["metadata"].get("labels") or {}
        self.component = labels.get("app.kubernetes.io/component")
        spec = doc.get("spec") or {}
        self.replicas = spec.get("replicas", 1)
        self.pod = ((spec.get("template") or {}).get("spec")) or {}
        self.pod_labels = (((spec.get("template") or {}).get("metadata") or {}).get("labels")) or {}
        self.config_maps = config_maps

    def containers(self, init=False):
        return (self.pod.get("initContainers") or []) if init else (self.pod.get("containers") or [])

    def env(self, container):
        """The container's environment, literal or from ConfigMaps; secrets as ('secret', name, key)."""
        env = {}
        for source in container.get("envFrom") or []:
            ref = source.get("configMapRef")
            if ref:
                env.update(self.config_maps.get(ref["name"], {}))
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = var["value"]
            else:
                frm = var.get("valueFrom") or {}
                if "configMapKeyRef" in frm:
                    ref = frm["configMapKeyRef"]
                    env[var["name"]] = self.config_maps.get(ref["name"], {}).get(ref["key"])
                elif "secretKeyRef" in frm:
                    ref = frm["secretKeyRef"]
                    env[var["name"]] = ("secret", ref["name"], ref["key"])
                else:
                    env[var["name"]] = ("field", json.dumps(frm, sort_keys=True))
        return env

    def secret_refs(self):
        """(container, env var, secret, key) for every secretKeyRef, and secret volumes as (None, volume, secret, key)."""
        refs = []
        for c in self.containers(init=True) + self.containers():
            for var in c.get("env") or []:
                ref = ((var.get("valueFrom") or {}).get("secretKeyRef"))
                if ref:
                    refs.append((c["name"], var["name"], ref["name"], ref["key"]))
        for v in self.pod.get("volumes") or []:
            if "secret" in v:
                keys = [i["key"] for i in v["secret"].get("items") or []] or ["*"]
                for k in keys:
                    refs.append((None, v["name"], v["secret"]["secretName"], k))
        return refs


# Components that join a consumer group named by TASKSTREAM_GROUP.
GROUP_CONSUMERS = ("notifier", "auditor", "saga", "agent")
# Components that read task-events, and so decode Avro when the events are Avro.
EVENT_READERS = ("notifier", "auditor", "saga", "processor", "agent")
# Variables holding secrets: never literal values in a manifest.
SECRET_ENV = ("TASKSTREAM_DATABASE_URL", "KAFKA_SASL_PASSWORD", "TASKSTREAM_AGENT_API_KEY",
              "SCHEMA_REGISTRY_KAFKASTORE_SASL_JAAS_CONFIG")


def runs_taskstream(workload, container):
    """Whether the container runs a taskstream subcommand named after its component."""
    args = [str(a) for a in container.get("args") or []]
    return not container.get("command") and bool(args) and args[0] == workload.component


def listen_port(workload, container):
    """The port a container listens on, from --http, TASKSTREAM_HTTP or SCHEMA_REGISTRY_LISTENERS."""
    args = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
    for i, arg in enumerate(args):
        if arg == "--http" and i + 1 < len(args):
            return address_port(args[i + 1]), f"--http {args[i + 1]}"
        if arg.startswith("--http="):
            return address_port(arg.split("=", 1)[1]), arg
    env = workload.env(container)
    if isinstance(env.get("TASKSTREAM_HTTP"), str):
        return address_port(env["TASKSTREAM_HTTP"]), f"TASKSTREAM_HTTP={env['TASKSTREAM_HTTP']}"
    if isinstance(env.get("SCHEMA_REGISTRY_LISTENERS"), str):
        first = env["SCHEMA_REGISTRY_LISTENERS"].split(",")[0]
        return address_port(first.split("://", 1)[-1]), f"SCHEMA_REGISTRY_LISTENERS={first}"
    return None, None


def address_port(address):
    m = re.search(r":(\d+)/?$", address.strip())
    return int(m.group(1)) if m else None


def container_port(container, port):
    """A probe's or Service's port, resolving a named port to its number."""
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return p.get("containerPort")
    return None


def compacted_topics(path):
    return {((d.get("spec") or {}).get("topicName") or d["metadata"]["name"])
            for d in load_yaml_docs(path)
            if d.get("kind") == "KafkaTopic"
            and ((d.get("spec") or {}).get("config") or {}).get("cleanup.policy") == "compact"}


def with_sets(values, sets):
    """values with helm's `--set a.b=c` applied (strings only, as the checks read them)."""
    out = values
    for s in sets:
        key, _, value = s.partition("=")
        overlay = value
        for part in reversed(key.split(".")):
            overlay = {part: overlay}
        out = merged(out, overlay)
    return out


def topics_of(path):
    topics = {}
    for doc in load_yaml_docs(path):
        if doc.get("kind") == "KafkaTopic":
            name = (doc.get("spec") or {}).get("topicName") or doc["metadata"]["name"]
            topics[name] = (doc.get("spec") or {}).get("partitions")
    return topics


def cluster_name(path):
    for doc in load_yaml_docs(path):
        if doc.get("kind") == "Kafka":
            return doc["metadata"]["name"]
    return None


# ---- the binary's command line ---------------------------------------------

OPTION_LINE = re.compile(r"^\s{0,8}(?:-\w, )?(--[a-z0-9][\w-]*)")


def binary_options(binary, subcommand):
    """{flag: (env var or None, accepted values or None)} from `taskstream SUB --help`."""
    out = subprocess.run([binary, subcommand, "--help"], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    blocks, current = {}, None
    for line in out.stdout.splitlines():
        m = OPTION_LINE.match(line)
        if m:
            current = m.group(1)
            blocks[current] = [line]
        elif current:
            blocks[current].append(line)
    options = {}
    for flag, lines in blocks.items():
        text = "\n".join(lines)
        env = re.search(r"\[env: ([A-Z0-9_]+)", text)
        short = re.search(r"\[possible values: ([^\]]+)\]", text)
        if short:
            values = {v.strip() for v in short.group(1).split(",")}
        elif "Possible values:" in text:
            values = set(re.findall(r"^\s+- ([^:\s]+):", text, flags=re.M))
        else:
            values = None
        options[flag] = (env.group(1) if env else None, values)
    return options


# Read by the Rust runtime or librdkafka rather than by an option.
PROCESS_ENV = {"RUST_LOG", "RUST_BACKTRACE"}


def check_command_lines(report, env, binary, workloads):
    """(g) the chart gives each taskstream container only what its subcommand reads."""
    problems, checked = [], 0
    helps = {}
    for w in workloads:
        for container in w.containers():
            args = [str(a) for a in container.get("args") or []]
            if container.get("command") or not args or args[0] != w.component:
                continue  # not the taskstream image running one of its subcommands
            sub = args[0]
            if sub not in helps:
                helps[sub] = binary_options(binary, sub)
            options = helps[sub]
            where = f"{w.name}/{container['name']}"
            if options is None:
                problems.append(f"{where}: `taskstream {sub} --help` failed: the binary has no subcommand {sub!r}")
                continue
            by_env = {e: (flag, values) for flag, (e, values) in options.items() if e}
            checked += 1
            for name, value in w.env(container).items():
                if name in PROCESS_ENV:
                    continue
                if name not in by_env:
                    problems.append(f"{where}: `taskstream {sub}` reads no {name} (no option has [env: {name}])")
                    continue
                flag, values = by_env[name]
                if values is not None and isinstance(value, str) and value not in values:
                    problems.append(f"{where}: {name}={value} is not accepted by {flag} (possible values: {', '.join(sorted(values))})")
            rest = args[1:]
            for i, arg in enumerate(rest):
                if not arg.startswith("--"):
                    continue
                flag, _, inline = arg.partition("=")
                if flag not in options:
                    problems.append(f"{where}: `taskstream {sub}` has no option {flag}")
                    continue
                values = options[flag][1]
                value = inline or (rest[i + 1] if i + 1 < len(rest) else None)
                if values is not None and value not in values:
                    problems.append(f"{where}: {flag} {value} is not accepted (possible values: {', '.join(sorted(values))})")
    report.check(f"[{env}] (g) the {checked} taskstream containers get only environment and flags their subcommand reads, with accepted values", problems)


# ---- the checks -------------------------------------------------------------

def check_users(report, components, users, users_path):
    """(b) users.yaml grants each component exactly what it declares."""
    problems = []
    declared = {c["kafka_user"]: c for c in components.values() if c["kafka_user"]}
    for name, user in users.items():
        if name not in declared:
            problems.append(f"{users_path}: KafkaUser {name} belongs to no component (taskstream users list declares {sorted(declared)})")
            continue
        component = declared[name]
        spec = user.get("spec") or {}
        if (spec.get("authentication") or {}).get("type") != "scram-sha-512":
            problems.append(f"KafkaUser {name}: authentication.type is {(spec.get('authentication') or {}).get('type')!r}, expected scram-sha-512")
        authz = spec.get("authorization") or {}
        if authz.get("type") != "simple":
            problems.append(f"KafkaUser {name}: authorization.type is {authz.get('type')!r}, expected simple")
        granted, needed = acl_map(authz.get("acls") or []), acl_map(component["acls"])
        for key in sorted(set(granted) | set(needed), key=str):
            extra = granted.get(key, set()) - needed.get(key, set())
            missing = needed.get(key, set()) - granted.get(key, set())
            if extra:
                problems.append(f"KafkaUser {name} grants {sorted(extra)} on {describe(key)}, which {component['name']} does not use")
            if missing:
                problems.append(f"KafkaUser {name} lacks {sorted(missing)} on {describe(key)}, which {component['name']} needs")
    for name, component in declared.items():
        if name not in users:
            problems.append(f"{users_path}: no KafkaUser {name} for {component['name']}")
    report.check(f"(b) {shown(users_path)} grants each component exactly the ACLs it declares", problems)


def check_users_cluster(report, users, cluster, users_path):
    problems = [f"KafkaUser {name}: label strimzi.io/cluster is {((u['metadata'].get('labels') or {}).get('strimzi.io/cluster'))!r}, the cluster is {cluster!r}"
                for name, u in users.items()
                if ((u["metadata"].get("labels") or {}).get("strimzi.io/cluster")) != cluster]
    report.check(f"(b) every KafkaUser belongs to the Kafka cluster {cluster!r}", problems)


def check_environment(report, env, components, users, args, values, topics, docs):
    config_maps = {d["metadata"]["name"]: d.get("data") or {} for d in docs if d["kind"] == "ConfigMap"}
    chart_secrets = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    workloads = [Workload(d, config_maps) for d in docs if d["kind"] in POD_KINDS]
    services = [d for d in docs if d["kind"] == "Service"]
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    ours = [w for w in workloads if w.component in components]

    # (a) topics
    problems, notes = [], []
    for c in components.values():
        for key, ops in acl_map(c["acls"]).items():
            kind, _, rtype, name, pattern = key
            if rtype != "topic" or kind != "allow":
                continue
            found = [t for t in topics if (t.startswith(name) if pattern == "prefix" else t == name)]
            if found:
                continue
            if pattern == "prefix":
                notes.append(f"{c['name']} may use topics named {name}* (prefix); none is a KafkaTopic: "
                             "whoever names one creates it")
            elif "Create" in ops or "All" in ops:
                notes.append(f"{c['name']} creates topic {name!r} itself (its ACLs allow Create); it is not a KafkaTopic")
            else:
                problems.append(f"{c['name']} uses topic {name!r}{' (prefix)' if pattern == 'prefix' else ''}, which is not a KafkaTopic in {args.topics_file}")
    report.check(f"[{env}] (a) every topic a component uses is a KafkaTopic in {args.topics_file}", problems, notes)

    # (b), chart side: the groups and topics the chart configures are covered by the component's ACLs.
    problems = []
    publisher = components.get("connect" if values.get("publisher", "relay") == "debezium" else "relay")
    for w in workloads:
        for container in w.containers():
            if runs_taskstream(w, container) and w.component not in components:
                problems.append(f"{w.kind} {w.name} runs `taskstream {w.component}`, which the binary does not declare "
                                "(taskstream users list): its KafkaUser, ACLs, paths and cap go unchecked")
    for w in ours:
        c = components[w.component]
        for container in w.containers():
            e = w.env(container)
            if w.component in GROUP_CONSUMERS:
                # Set explicitly, so that what the chart runs is what is checked.
                group = e.get("TASKSTREAM_GROUP")
                if not isinstance(group, str):
                    problems.append(f"{w.name}: TASKSTREAM_GROUP is not set, so its consumer group is the binary's default, unchecked")
                elif c["kafka_user"] and not allowed(c, "group", group, "Read"):
                    problems.append(f"{w.name}: consumer group {group!r} is not readable by {c['kafka_user']}")
            if c["outbox_topics"] and publisher is not None and publisher["kafka_user"]:
                # Rows it writes to the outbox go to these topics: the relay
                # writes them (and reads their tails back after a restart),
                # or Kafka Connect writes them.
                needed = ("Read", "Write") if publisher["name"] == "relay" else ("Write",)
                for topic in c["outbox_topics"]:
                    for op in needed:
                        if not allowed(publisher, "topic", topic, op):
                            problems.append(f"{w.name}: {c['name']} writes {topic!r} through the outbox, but "
                                            f"{publisher['kafka_user']}, which publishes it, may not {op} it")
            if w.component == "schema-registry":
                for var in ("SCHEMA_REGISTRY_KAFKASTORE_GROUP_ID", "SCHEMA_REGISTRY_SCHEMA_REGISTRY_GROUP_ID"):
                    group = e.get(var)
                    if not isinstance(group, str):
                        problems.append(f"{w.name}: {var} is not set")
                    elif not allowed(c, "group", group, "Read"):
                        problems.append(f"{w.name}: {var}={group} is not readable by {c['kafka_user']}")
                topic = e.get("SCHEMA_REGISTRY_KAFKASTORE_TOPIC", "_schemas")
                for op in ("Read", "Write"):
                    if not allowed(c, "topic", topic, op):
                        problems.append(f"{w.name}: {c['kafka_user']} may not {op} its store topic {topic!r}")
    report.check(f"[{env}] (b) the consumer groups and topics the chart configures are within each component's ACLs", problems)

    # (c) replicas
    problems = []
    declared_partitions = (values.get("kafka") or {}).get("taskEventsPartitions")
    if "task-events" in topics and declared_partitions != topics["task-events"]:
        problems.append(f"kafka.taskEventsPartitions is {declared_partitions}, but task-events has {topics['task-events']} partitions in {args.topics_file}")
    for c in components.values():
        read_topics = [key[3] for key, ops in acl_map(c["acls"]).items()
                       if key[2] == "topic" and key[4] == "literal" and ({"Read", "All"} & ops)]
        # A replica has work while any topic it reads has a partition left for
        # it: the triage agent's group on task-events (6 partitions) keeps
        # instances busy that its requests group (3) leaves idle.
        partitions = [max(topics[t] for t in read_topics if t in topics)] if any(t in topics for t in read_topics) else []
        if c["max_replicas"] is not None and partitions and c["max_replicas"] > min(partitions):
            problems.append(f"{c['name']} allows {c['max_replicas']} replicas, but reads a topic with {min(partitions)} partitions")
        for w in (w for w in ours if w.component == c["name"]):
            if c["max_replicas"] is not None and w.replicas > c["max_replicas"]:
                problems.append(f"{w.kind} {w.name} runs {w.replicas} replicas; {c['name']} allows at most {c['max_replicas']}")
            # Only a capped component shares partitions within a group; the schema
            # registry, for one, reads its whole topic from every instance.
            if c["max_replicas"] is not None and partitions and w.replicas > min(partitions):
                problems.append(f"{w.kind} {w.name} runs {w.replicas} replicas; its topics have {min(partitions)} partitions")
            strategy = ((w.doc.get("spec") or {}).get("strategy") or {}).get("type", "RollingUpdate")
            if c["max_replicas"] == 1 and w.kind == "Deployment" and strategy != "Recreate":
                problems.append(f"Deployment {w.name}: {c['name']} may run only one instance, but a {strategy} rollout starts a second one")
    report.check(f"[{env}] (c) no component runs more replicas than its topics have partitions or the binary allows", problems)

    # (d) probes and ports
    problems, checked = [], 0
    for w in ours:
        c = components[w.component]
        for container in w.containers():
            port, source = listen_port(w, container)
            if port is None:
                problems.append(f"{w.name}/{container['name']}: no listen address (--http, TASKSTREAM_HTTP or SCHEMA_REGISTRY_LISTENERS)")
                continue
            for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
                probe = container.get(probe_name)
                if probe is None:
                    if probe_name != "startupProbe":
                        problems.append(f"{w.name}/{container['name']}: no {probe_name}")
                    continue
                get = probe.get("httpGet")
                if get is None:
                    problems.append(f"{w.name}/{container['name']}: {probe_name} is not an HTTP probe")
                    continue
                checked += 1
                target = container_port(container, get.get("port"))
                if target != port:
                    problems.append(f"{w.name}/{container['name']}: {probe_name} targets port {get.get('port')!r} ({target}), but it listens on {port} ({source})")
                if get.get("path") not in c["http_paths"]:
                    problems.append(f"{w.name}/{container['name']}: {probe_name} path {get.get('path')!r} is not served by {c['name']} (serves {c['http_paths']})")
            for svc in services:
                selector = (svc.get("spec") or {}).get("selector") or {}
                if not selector or any(w.pod_labels.get(k) != v for k, v in selector.items()):
                    continue
                for sp in (svc.get("spec") or {}).get("ports") or []:
                    target = container_port(container, sp.get("targetPort", sp.get("port")))
                    if target != port:
                        problems.append(f"Service {svc['metadata']['name']} port {sp.get('name')}: targets {sp.get('targetPort')!r} ({target}), but {w.name} listens on {port}")
    report.check(f"[{env}] (d) {checked} probes target the port each container listens on and a path its binary serves", problems)

    # (e) KafkaUser secrets
    problems = []
    for w in workloads:
        c = components.get(w.component)
        for container_name, var, secret, key in w.secret_refs():
            if secret in chart_secrets or key not in KAFKA_USER_SECRET_KEYS:
                continue
            where = f"{w.name}" + (f"/{container_name} {var}" if container_name else f" volume {var}")
            if secret not in users:
                problems.append(f"{where}: Secret {secret!r} (key {key}) is not a KafkaUser in users.yaml")
            if c is None:
                problems.append(f"{where}: uses KafkaUser Secret {secret!r} but {w.component!r} is not a component the binary declares")
            elif secret != c["kafka_user"]:
                problems.append(f"{where}: {c['name']} must authenticate as {c['kafka_user']}, not {secret}")
        for container in w.containers():
            e = w.env(container)
            protocol = e.get("KAFKA_SECURITY_PROTOCOL") or e.get("SCHEMA_REGISTRY_KAFKASTORE_SECURITY_PROTOCOL")
            username = e.get("KAFKA_SASL_USERNAME")
            if c is not None and isinstance(username, str) and username != c["kafka_user"]:
                problems.append(f"{w.name}/{container['name']}: KAFKA_SASL_USERNAME={username}, but {c['name']} is {c['kafka_user']}")
            if c is not None and not c["kafka_user"] and protocol:
                problems.append(f"{w.name}/{container['name']}: {c['name']} has no KafkaUser but is configured for Kafka")
            if c is not None and isinstance(protocol, str) and protocol.lower().startswith("sasl"):
                refs = [s for (cn, _, s, k) in w.secret_refs() if cn == container["name"] and k in KAFKA_USER_SECRET_KEYS]
                if not refs:
                    problems.append(f"{w.name}/{container['name']}: {protocol} without a KafkaUser Secret")
    report.check(f"[{env}] (e) every KafkaUser Secret the chart references is in users.yaml and belongs to its component", problems)

    # (f) hardening
    problems = []
    for w in workloads:
        psc = w.pod.get("securityContext") or {}
        if psc.get("runAsNonRoot") is not True:
            problems.append(f"{w.name}: pod securityContext.runAsNonRoot is not true")
        if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{w.name}: pod seccompProfile is not RuntimeDefault")
        for container in w.containers(init=True) + w.containers():
            where = f"{w.name}/{container['name']}"
            sc = container.get("securityContext") or {}
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem is not true")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                problems.append(f"{where}: capabilities do not drop ALL")
            res = container.get("resources") or {}
            for field in ("cpu", "memory"):
                if field not in (res.get("requests") or {}):
                    problems.append(f"{where}: no {field} request")
            if "memory" not in (res.get("limits") or {}):
                problems.append(f"{where}: no memory limit")
        selected = any(all(w.pod_labels.get(k) == v for k, v in ((p["spec"].get("selector") or {}).get("matchLabels") or {}).items())
                       for p in pdbs)
        if w.kind in ("Deployment",) and not selected:
            problems.append(f"{w.name}: no PodDisruptionBudget selects its pods")
    report.check(f"[{env}] (f) {len(workloads)} workloads run non-root, read-only, without capabilities, with resources and a PodDisruptionBudget", problems)

    if args.taskstream:
        check_command_lines(report, env, args.taskstream, workloads)
    else:
        report.check(f"[{env}] (g) not checked: no --taskstream binary to ask", [])
    check_publisher(report, env, components, users, args, values, topics, docs, workloads)
    check_registry(report, env, workloads, values)
    check_secrets(report, env, workloads)


# The components that store or publish task events, with --event-format (Avro by default).
WRITERS_OF_TASK_EVENTS = ("api", "relay", "saga", "agent")


def check_registry(report, env, workloads, values):
    """(i) the API (and the saga, for its compensations' task events) encodes Avro with schema ids
    from the registry, so it needs one; so does every reader of Avro task events (and the triage
    agent's auto-accept rule, which stores task events)."""
    problems, checked = [], 0
    chart_format = values.get("eventFormat", "avro")
    for w in workloads:
        if w.component not in WRITERS_OF_TASK_EVENTS + EVENT_READERS:
            continue
        for container in w.containers():
            args_ = [str(a) for a in container.get("args") or []]
            fmt = args_[args_.index("--event-format") + 1] if "--event-format" in args_[:-1] else (
                "avro" if w.component in WRITERS_OF_TASK_EVENTS else chart_format)
            if fmt != "avro":
                continue
            checked += 1
            if not isinstance(w.env(container).get("SCHEMA_REGISTRY_URL"), str):
                problems.append(f"{w.name}/{container['name']}: reads, stores or publishes Avro but has no SCHEMA_REGISTRY_URL")
    report.check(f"[{env}] (i) the {checked} containers that encode or decode Avro know the schema registry", problems)


def check_secrets(report, env, workloads):
    """(j) secrets come from Secrets, never from literal values."""
    problems, checked = [], 0
    for w in workloads:
        volumes = {v["name"]: v for v in w.pod.get("volumes") or []}
        for container in w.containers(init=True) + w.containers():
            where = f"{w.name}/{container['name']}"
            for var in container.get("env") or []:
                if var["name"] in SECRET_ENV:
                    checked += 1
                    if "secretKeyRef" not in (var.get("valueFrom") or {}):
                        problems.append(f"{where}: {var['name']} is not read from a Secret (secretKeyRef)")
            secret_mounts = {m["mountPath"].rstrip("/"): volumes[m["name"]] for m in container.get("volumeMounts") or []
                             if "secret" in volumes.get(m["name"], {})}
            key_file = w.env(container).get("TASKSTREAM_AGENT_API_KEY_FILE")
            if key_file is None:
                continue
            checked += 1
            directory, _, name = str(key_file).rpartition("/")
            volume = secret_mounts.get(directory)
            if volume is None:
                problems.append(f"{where}: TASKSTREAM_AGENT_API_KEY_FILE={key_file} is not in a mounted Secret")
                continue
            items = volume["secret"].get("items")
            if items is not None and name not in {i.get("path") for i in items}:
                problems.append(f"{where}: TASKSTREAM_AGENT_API_KEY_FILE={key_file}: the Secret {volume['secret'].get('secretName')!r} "
                                f"mounted at {directory} has no item with path {name!r}")
    report.check(f"[{env}] (j) the {checked} secret values reach their containers from Secrets only", problems)


def check_publisher(report, env, components, users, args, values, topics, docs, workloads):
    """(h) the relay or Kafka Connect with Debezium, never both, wired as declared."""
    publisher = values.get("publisher", "relay")
    connects = [d for d in docs if d["kind"] == "KafkaConnect"]
    connectors = [d for d in docs if d["kind"] == "KafkaConnector"]
    relays = [w for w in workloads if w.component == "relay"]
    problems = []
    if publisher == "relay":
        if not relays:
            problems.append("publisher is relay, but no relay workload is rendered")
        if connects or connectors:
            problems.append("publisher is relay, but a KafkaConnect or KafkaConnector is rendered: two publishers would double every event")
        report.check(f"[{env}] (h) the relay publishes the outbox, and nothing else does", problems)
        return
    if relays:
        problems.append(f"publisher is debezium, but {relays[0].kind} {relays[0].name} runs the relay: two publishers would double every event")
    if len(connects) != 1 or len(connectors) != 1:
        problems.append(f"publisher is debezium: expected one KafkaConnect and one KafkaConnector, found {len(connects)} and {len(connectors)}")
        report.check(f"[{env}] (h) Kafka Connect with Debezium publishes the outbox", problems)
        return
    connect, connector = connects[0], connectors[0]
    cspec = connect.get("spec") or {}
    component = components.get("connect")
    if component is None:
        problems.append("the binary declares no `connect` component (taskstream users list)")
        report.check(f"[{env}] (h) Kafka Connect with Debezium publishes the outbox", problems)
        return
    user = component["kafka_user"]
    kafka = values.get("kafka") or {}
    if cspec.get("bootstrapServers") != kafka.get("bootstrapServers"):
        problems.append(f"KafkaConnect bootstrapServers is {cspec.get('bootstrapServers')!r}, the components use {kafka.get('bootstrapServers')!r}")
    group = cspec.get("groupId")
    if not allowed(component, "group", group or "", "Read"):
        problems.append(f"KafkaConnect groupId {group!r} is not readable by {user}")
    compacted = compacted_topics(os.path.join(args.strimzi, args.topics_file_name))
    for field in ("configStorageTopic", "offsetStorageTopic", "statusStorageTopic"):
        topic = cspec.get(field)
        for op in ("Read", "Write"):
            if not allowed(component, "topic", topic or "", op):
                problems.append(f"KafkaConnect {field} {topic!r}: {user} may not {op} it")
        if topic not in compacted:
            problems.append(f"KafkaConnect {field} {topic!r} is not a compacted KafkaTopic in {args.topics_file}")
    if topics.get(cspec.get("configStorageTopic")) not in (None, 1):
        problems.append(f"the config topic {cspec.get('configStorageTopic')!r} must have one partition, has {topics.get(cspec.get('configStorageTopic'))}")
    protocol = str(kafka.get("securityProtocol", "plaintext"))
    auth = cspec.get("authentication")
    if protocol.startswith("sasl"):
        if not auth:
            problems.append(f"KafkaConnect has no authentication with securityProtocol {protocol}")
        else:
            if auth.get("username") != user:
                problems.append(f"KafkaConnect authenticates as {auth.get('username')!r}, the connect component is {user}")
            secret = (auth.get("passwordSecret") or {}).get("secretName")
            if secret != user or secret not in users:
                problems.append(f"KafkaConnect's password Secret {secret!r} is not the KafkaUser {user} of users.yaml")
            if auth.get("type") != str(kafka.get("saslMechanism", "")).lower():
                problems.append(f"KafkaConnect authentication type {auth.get('type')!r} is not the cluster's {kafka.get('saslMechanism')!r}")
    elif auth:
        problems.append(f"KafkaConnect authenticates although securityProtocol is {protocol}")
    if protocol.endswith("ssl") and not (cspec.get("tls") or {}).get("trustedCertificates"):
        problems.append(f"KafkaConnect trusts no CA certificate with securityProtocol {protocol}")
    annotations = connect["metadata"].get("annotations") or {}
    if annotations.get("strimzi.io/use-connector-resources") != "true":
        problems.append("KafkaConnect lacks the annotation strimzi.io/use-connector-resources: \"true\", so Strimzi ignores KafkaConnector resources")
    labels = connector["metadata"].get("labels") or {}
    if labels.get("strimzi.io/cluster") != connect["metadata"]["name"]:
        problems.append(f"KafkaConnector's strimzi.io/cluster label is {labels.get('strimzi.io/cluster')!r}, the KafkaConnect is {connect['metadata']['name']!r}")

    # The connector is the binary's, for the chart's database.
    kspec = connector.get("spec") or {}
    config = dict(kspec.get("config") or {})
    ref = config.get("database.password", "")
    m = re.fullmatch(r"\$\{secrets:([^/]+)/([^:]+):([^}]+)\}", str(ref))
    if not m:
        problems.append(f"KafkaConnector database.password is {ref!r}, not a ${{secrets:NAMESPACE/SECRET:KEY}} reference")
    else:
        secret = m.group(2)
        roles = [d for d in docs if d["kind"] == "Role"
                 and any(secret in (r.get("resourceNames") or []) and "secrets" in (r.get("resources") or []) for r in d.get("rules") or [])]
        if not roles:
            problems.append(f"no Role lets the Connect workers read the Secret {secret!r}")
        for role in roles:
            for rule in role.get("rules") or []:
                if set(rule.get("verbs") or []) - {"get"} or len(rule.get("resourceNames") or []) != 1:
                    problems.append(f"Role {role['metadata']['name']} grants more than reading the one Secret: {rule}")
            bound = [b for b in docs if b["kind"] == "RoleBinding" and (b.get("roleRef") or {}).get("name") == role["metadata"]["name"]]
            subjects = [s.get("name") for b in bound for s in b.get("subjects") or []]
            if subjects != [f"{connect['metadata']['name']}-connect"]:
                problems.append(f"Role {role['metadata']['name']} is bound to {subjects}, not only to the workers' ServiceAccount {connect['metadata']['name']}-connect")
    if args.taskstream and m:
        url = f"postgres://{config.get('database.user')}@{config.get('database.hostname')}:{config.get('database.port')}/{config.get('database.dbname')}"
        out = subprocess.run([args.taskstream, "cdc", "connector-config", "--database-url", url, "--password-ref", ref],
                             capture_output=True, text=True)
        if out.returncode != 0:
            problems.append(f"`taskstream cdc connector-config --database-url {url}` refused the chart's database: {out.stderr.strip()}")
        else:
            expected = json.loads(out.stdout)
            wanted = dict(expected["config"])
            rendered = dict(config)
            rendered["connector.class"] = kspec.get("class")
            rendered["tasks.max"] = str(kspec.get("tasksMax"))
            if connector["metadata"]["name"] != expected["name"]:
                problems.append(f"KafkaConnector is named {connector['metadata']['name']!r}, the binary's connector {expected['name']!r}")
            for key in sorted(set(wanted) | set(rendered)):
                if str(wanted.get(key)) != str(rendered.get(key)):
                    problems.append(f"KafkaConnector {key}: the chart has {rendered.get(key)!r}, `taskstream cdc connector-config` {wanted.get(key)!r} "
                                    "(regenerate deploy/helm/taskstream/files/outbox-connector.json with "
                                    "`taskstream cdc connector-config --database-url postgres://taskstream@postgresql:5432/taskstream "
                                    "--password-ref '${secrets:namespace/secret:password}'`)")
    # The API marks what the slot confirmed, so the outbox does not grow forever.
    for w in (w for w in workloads if w.component == "api"):
        for c in w.containers():
            given = w.env(c)
            cargs = [str(a) for a in c.get("args") or []]
            chosen = cargs[cargs.index("--publisher") + 1] if "--publisher" in cargs[:-1] else given.get("TASKSTREAM_PUBLISHER")
            if chosen != "debezium":
                problems.append(f"{w.name}/{c['name']}: publisher is debezium, but the API runs with publisher {chosen or 'relay'!r}, so nothing marks captured rows and the outbox grows forever")
            slot = given.get("TASKSTREAM_CDC_SLOT", "taskstream_outbox")
            if slot != config.get("slot.name"):
                problems.append(f"{w.name}/{c['name']}: the API confirms captured rows against slot {slot!r}, the connector reads {config.get('slot.name')!r}")
    # Logical decoding on the chart's PostgreSQL.
    if (values.get("postgresql") or {}).get("enabled"):
        sets = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"].endswith("-postgresql")]
        args_ = [a for d in sets for c in d["spec"]["template"]["spec"]["containers"] for a in c.get("args") or []]
        if "wal_level=logical" not in args_:
            problems.append("the chart's PostgreSQL does not run with wal_level=logical, which Debezium needs")
    report.check(f"[{env}] (h) Kafka Connect with Debezium publishes the outbox, as its own KafkaUser, with the binary's connector", problems)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--taskstream", help="the taskstream binary, asked `users list --json` and `SUB --help`")
    parser.add_argument("--components", help="a file holding the output of `taskstream users list --json`")
    parser.add_argument("--helm", default=os.environ.get("TASKSTREAM_HELM", "helm"))
    parser.add_argument("--strimzi", default=STRIMZI, help="the Strimzi resources (default deploy/strimzi)")
    parser.add_argument("--users", help="the KafkaUsers (default STRIMZI/users.yaml)")
    parser.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE",
                        help="passed to helm template for every environment")
    args = parser.parse_args()
    if not (args.taskstream or args.components):
        parser.error("give --taskstream BIN (and optionally --components FILE)")

    components = load_components(args)
    strimzi = args.strimzi
    args.users = args.users or os.path.join(strimzi, "users.yaml")
    report = Report()
    if not os.path.exists(args.users):
        print(f"FAIL {args.users} does not exist: generate it with `taskstream users render --cluster taskstream`")
        return 1
    users = {d["metadata"]["name"]: d for d in load_yaml_docs(args.users) if d.get("kind") == "KafkaUser"}
    check_users(report, components, users, args.users)
    cluster = cluster_name(os.path.join(strimzi, "kafka-prod.yaml"))
    check_users_cluster(report, users, cluster, args.users)

    for (environment, (values_files, topics_file, kafka_file)), (publisher, publisher_sets) in (
            (e, p) for e in ENVIRONMENTS.items() for p in PUBLISHERS.items()):
        env = environment if publisher == "relay" else f"{environment}, publisher {publisher}"
        sets = publisher_sets + args.sets
        values = {}
        for v in values_files:
            with open(os.path.join(CHART, v)) as f:
                values = merged(values, yaml.safe_load(f) or {})
        values = with_sets(values, sets)
        docs, error = render(args.helm, values_files, sets)
        if docs is None:
            report.check(f"[{env}] helm template with {', '.join(values_files)} {' '.join('--set ' + s for s in sets)}".rstrip(), [error])
            continue
        args.topics_file = shown(os.path.join(strimzi, topics_file))
        args.topics_file_name = topics_file
        topics = topics_of(os.path.join(strimzi, topics_file))
        check_environment(report, env, components, users, args, values, topics, docs)
        if cluster_name(os.path.join(strimzi, kafka_file)) != cluster:
            report.check(f"[{env}] {kafka_file} names the cluster {cluster!r}", [f"{kafka_file} names another cluster"])

    print(f"check_deploy: {report.checks} checks, {report.failed} failing")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
