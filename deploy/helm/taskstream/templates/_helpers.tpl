{{/*
The chart name, or nameOverride.
*/}}
{{- define "taskstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every resource name: fullnameOverride, else the release name,
followed by the chart name unless the release name already contains it.
*/}}
{{- define "taskstream.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "taskstream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels that select one component's pods; they never change between releases.
Call with (dict "root" $ "component" "api").
*/}}
{{- define "taskstream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "taskstream.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
All labels of one component's resources. Call with (dict "root" $ "component" "api").
*/}}
{{- define "taskstream.labels" -}}
helm.sh/chart: {{ include "taskstream.chart" .root }}
{{ include "taskstream.selectorLabels" . }}
app.kubernetes.io/part-of: taskstream
{{- with .version }}
app.kubernetes.io/version: {{ . | quote }}
{{- else }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{/*
The taskstream image reference.
*/}}
{{- define "taskstream.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}

{{/*
The taskstream components the release runs, comma-separated: the relay only
when it is the publisher, the workload processor, the saga and the triage
agent when enabled.
*/}}
{{- define "taskstream.components" -}}
{{- if eq .Values.publisher "relay" }}api,relay,notifier,auditor{{ else }}api,notifier,auditor{{ end }}
{{- if .Values.processor.enabled }},processor{{ end }}
{{- if .Values.saga.enabled }},saga{{ end }}
{{- if .Values.agent.enabled }},agent{{ end }}
{{- end }}

{{/*
Where the triage agent's model API key is mounted, from agent.model.apiKeySecret.
*/}}
{{- define "taskstream.agentKeyDir" -}}
/etc/taskstream/agent-model
{{- end }}

{{/*
The Strimzi KafkaConnect that runs Debezium (publisher: debezium).
*/}}
{{- define "taskstream.connectName" -}}
{{- printf "%s-cdc" (include "taskstream.fullname" .) }}
{{- end }}

{{/*
Whether the components authenticate with SASL ("true" or "").
*/}}
{{- define "taskstream.kafkaSasl" -}}
{{- if has .Values.kafka.securityProtocol (list "sasl_plaintext" "sasl_ssl") }}true{{ end }}
{{- end }}

{{/*
Whether the components check the brokers' TLS certificates ("true" or "").
*/}}
{{- define "taskstream.kafkaTls" -}}
{{- if has .Values.kafka.securityProtocol (list "ssl" "sasl_ssl") }}true{{ end }}
{{- end }}

{{/*
Where the cluster CA certificate is mounted in the taskstream containers.
*/}}
{{- define "taskstream.kafkaCaDir" -}}
/etc/taskstream/kafka-ca
{{- end }}

{{/*
The schema registry the components use.
*/}}
{{- define "taskstream.schemaRegistryUrl" -}}
{{- if .Values.schemaRegistry.enabled }}
{{- printf "http://%s-schema-registry:%d" (include "taskstream.fullname" .) (int .Values.schemaRegistry.port) }}
{{- else }}
{{- .Values.schemaRegistry.url }}
{{- end }}
{{- end }}

{{/*
The Secret and key holding DATABASE_URL.
*/}}
{{- define "taskstream.databaseSecretName" -}}
{{- if .Values.postgresql.enabled }}
{{- printf "%s-postgresql" (include "taskstream.fullname" .) }}
{{- else }}
{{- .Values.database.existingSecret }}
{{- end }}
{{- end }}

{{- define "taskstream.databaseSecretKey" -}}
{{- if .Values.postgresql.enabled }}DATABASE_URL{{ else }}{{ .Values.database.secretKey }}{{ end }}
{{- end }}

{{/*
The pod-level security context of the taskstream components: the image's
numeric non-root user, and the runtime's default seccomp profile.
*/}}
{{- define "taskstream.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
The container-level security context every container of the chart gets.
*/}}
{{- define "taskstream.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Scheduling constraints shared by every pod of the chart.
*/}}
{{- define "taskstream.scheduling" -}}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Checks the values before anything is rendered; a wrong combination fails
`helm install` and `helm template` with a message naming the values at fault.
*/}}
{{- define "taskstream.validateValues" -}}
{{- $partitions := int .Values.kafka.taskEventsPartitions }}
{{- if lt $partitions 1 }}
{{- fail (printf "kafka.taskEventsPartitions must be at least 1, got %v" .Values.kafka.taskEventsPartitions) }}
{{- end }}
{{- range $component := list "notifier" "auditor" "saga" "agent" }}
{{- if has $component (splitList "," (include "taskstream.components" $)) }}
{{- $replicas := int (index $.Values $component).replicas }}
{{- if gt $replicas $partitions }}
{{- fail (printf "%s.replicas (%d) exceeds kafka.taskEventsPartitions (%d): a consumer group cannot use more instances than task-events has partitions; the extra ones would sit idle" $component $replicas $partitions) }}
{{- end }}
{{- if lt $replicas 1 }}
{{- fail (printf "%s.replicas must be at least 1, got %d" $component $replicas) }}
{{- end }}
{{- end }}
{{- end }}
{{- if .Values.agent.enabled }}
{{- include "taskstream.validateAgent" . }}
{{- end }}
{{- if not (has .Values.kafka.securityProtocol (list "plaintext" "ssl" "sasl_plaintext" "sasl_ssl")) }}
{{- fail (printf "kafka.securityProtocol must be plaintext, ssl, sasl_plaintext or sasl_ssl, got %q" .Values.kafka.securityProtocol) }}
{{- end }}
{{- if include "taskstream.kafkaSasl" . }}
{{- if not (has .Values.kafka.saslMechanism (list "SCRAM-SHA-512" "SCRAM-SHA-256" "PLAIN")) }}
{{- fail (printf "kafka.saslMechanism must be SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN, got %q" .Values.kafka.saslMechanism) }}
{{- end }}
{{- range $component := without (splitList "," (include "taskstream.components" .)) "api" }}
{{- if not (index $.Values $component).kafkaUser }}
{{- fail (printf "%s.kafkaUser is required with kafka.securityProtocol %s" $component $.Values.kafka.securityProtocol) }}
{{- end }}
{{- end }}
{{- if and .Values.schemaRegistry.enabled (not .Values.schemaRegistry.kafkaUser) }}
{{- fail (printf "schemaRegistry.kafkaUser is required with kafka.securityProtocol %s" .Values.kafka.securityProtocol) }}
{{- end }}
{{- end }}
{{- if and (include "taskstream.kafkaTls" .) (not .Values.kafka.clusterCaSecret) }}
{{- fail (printf "kafka.clusterCaSecret is required with kafka.securityProtocol %s" .Values.kafka.securityProtocol) }}
{{- end }}
{{- if hasKey (.Values.relay | default dict) "eventFormat" }}
{{- fail "relay.eventFormat is now eventFormat (the API stores each event in it, the relay publishes it as stored): set eventFormat instead" }}
{{- end }}
{{- if not (has .Values.eventFormat (list "avro" "json")) }}
{{- fail (printf "eventFormat must be avro or json, got %q" .Values.eventFormat) }}
{{- end }}
{{- if and (not .Values.schemaRegistry.enabled) (not .Values.schemaRegistry.url) (eq .Values.eventFormat "avro") }}
{{- fail "schemaRegistry.url is required when schemaRegistry.enabled is false and eventFormat is avro" }}
{{- end }}
{{- if and (not .Values.postgresql.enabled) (not .Values.database.existingSecret) }}
{{- fail "database.existingSecret (a Secret holding the PostgreSQL URL) is required when postgresql.enabled is false" }}
{{- end }}
{{- if and .Values.postgresql.enabled .Values.postgresql.password (not (regexMatch "^[A-Za-z0-9]+$" (toString .Values.postgresql.password))) }}
{{- fail "postgresql.password may hold letters and digits only (it is part of DATABASE_URL)" }}
{{- end }}
{{- if not (has .Values.publisher (list "relay" "debezium")) }}
{{- fail (printf "publisher must be relay or debezium, got %q" .Values.publisher) }}
{{- end }}
{{- if eq .Values.publisher "debezium" }}
{{- if not .Values.connect.build.image }}
{{- fail "connect.build.image is required with publisher: debezium (where Strimzi pushes the Connect image it builds)" }}
{{- end }}
{{- if lt (int .Values.connect.replicas) 1 }}
{{- fail (printf "connect.replicas must be at least 1, got %v" .Values.connect.replicas) }}
{{- end }}
{{- if and (include "taskstream.kafkaSasl" .) (not .Values.connect.kafkaUser) }}
{{- fail (printf "connect.kafkaUser is required with kafka.securityProtocol %s" .Values.kafka.securityProtocol) }}
{{- end }}
{{- if not .Values.postgresql.enabled }}
{{- range $key := list "host" "user" "name" }}
{{- if not (index $.Values.connect.database $key) }}
{{- fail (printf "connect.database.%s is required with publisher: debezium when postgresql.enabled is false" $key) }}
{{- end }}
{{- end }}
{{- if not .Values.connect.database.passwordSecret.name }}
{{- fail "connect.database.passwordSecret.name is required with publisher: debezium when postgresql.enabled is false" }}
{{- end }}
{{- end }}
{{- end }}
{{- if not (has .Values.logFormat (list "json" "human")) }}
{{- fail (printf "logFormat must be json or human, got %q" .Values.logFormat) }}
{{- end }}
{{- end }}

{{/*
The replication slot the Debezium connector reads (its slot.name in
files/outbox-connector.json): the API confirms captured rows against it.
*/}}
{{- define "taskstream.cdcSlot" -}}
{{- (.Files.Get "files/outbox-connector.json" | fromJson).config | dig "slot.name" "taskstream_outbox" }}
{{- end }}

{{/*
Checks the triage agent's values (agent.enabled), as the binary would at start.
*/}}
{{- define "taskstream.validateAgent" -}}
{{- $agent := .Values.agent }}
{{- range $entry := $agent.assignees }}
{{- if not (regexMatch "^\\s*[\\p{L}\\p{N}]+\\s*=[^,]*[^,\\s][^,]*$" (toString $entry)) }}
{{- fail (printf "agent.assignees: expected keyword=assignee (one word of letters and digits, an assignee without commas), got %q" (toString $entry)) }}
{{- end }}
{{- end }}
{{- if $agent.autoAccept.enabled }}
{{- $min := $agent.autoAccept.minConfidence }}
{{- if not (regexMatch "^[0-9]+$" (toString $min)) }}
{{- fail (printf "agent.autoAccept.minConfidence must be a whole number from 0 to 100, got %v" $min) }}
{{- end }}
{{- if gt (int $min) 100 }}
{{- fail (printf "agent.autoAccept.minConfidence must be a whole number from 0 to 100, got %v" $min) }}
{{- end }}
{{- end }}
{{- with $agent.model.url }}
{{- if not (regexMatch "^https?://[^@]+$" (toString .)) }}
{{- fail "agent.model.url must be an http(s) URL without credentials, such as http://ollama:11434/v1 (the key goes in a Secret named by agent.model.apiKeySecret.name)" }}
{{- end }}
{{- else }}
{{- if $agent.model.apiKeySecret.name }}
{{- fail "agent.model.apiKeySecret.name is set but agent.model.url is empty: the local model uses no key" }}
{{- end }}
{{- end }}
{{- end }}
