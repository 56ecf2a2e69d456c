{{/* Names ---------------------------------------------------------------------------------------- */}}

{{- define "taskproc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "taskproc.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "taskproc.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "taskproc.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "taskproc.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "taskproc.secretName" -}}
{{- include "taskproc.fullname" . }}
{{- end }}

{{- define "taskproc.redisHost" -}}
{{- printf "%s-redis" (include "taskproc.fullname" .) }}
{{- end }}

{{- define "taskproc.postgresHost" -}}
{{- printf "%s-postgresql" (include "taskproc.fullname" .) }}
{{- end }}

{{/* Labels --------------------------------------------------------------------------------------- */}}

{{- define "taskproc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "taskproc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "taskproc.labels" -}}
helm.sh/chart: {{ include "taskproc.chart" . }}
{{ include "taskproc.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: taskproc
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of one component: (dict "ctx" $ "component" "api") */}}
{{- define "taskproc.componentLabels" -}}
{{ include "taskproc.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Labels of a component's pod template: no helm.sh/chart or app.kubernetes.io/version, so that a chart or app
version bump alone does not restart pods (Redis and Postgres above all). (dict "ctx" $ "component" "api")
*/}}
{{- define "taskproc.podLabels" -}}
{{ include "taskproc.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: taskproc
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Annotations that roll the API and worker pods when the chart's Secret or the shared settings change. */}}
{{- define "taskproc.checksums" -}}
{{- /* The values that feed the Secret, not the rendered Secret: generated passwords are random in a render
without the cluster (helm template, a first install), and hashing them would roll the pods once for nothing. */}}
checksum/secret: {{ list .Values.auth .Values.postgresql.auth .Values.redis.auth .Values.externalRedis .Values.externalDatabase | toJson | sha256sum }}
checksum/config: {{ include "taskproc.commonEnv" . | sha256sum }}
{{- end }}

{{/* Name of the migration Job: a hash of its pod template (image, appVersion, settings), so an upgrade that
changes any of them creates a new Job (Job templates are immutable) and an unchanged render keeps the old one. */}}
{{- define "taskproc.migrateJobName" -}}
{{- $seed := printf "%s|%s|%s" (include "taskproc.image" .) .Chart.AppVersion (include "taskproc.migratePodSpec" . ) }}
{{- printf "%s-migrate-%s" (include "taskproc.fullname" .) (sha256sum $seed | trunc 8) }}
{{- end }}

{{/* Env of the migration containers (the Job and the init containers that wait for the schema). */}}
{{- define "taskproc.migrateEnv" -}}
{{- if and (eq .Values.migrations.hook "helm") (not .Values.postgresql.enabled) .Values.externalDatabase.url }}
- name: TASKPROC_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "taskproc.fullname" . }}-migrate
      key: database-url
{{- else }}
{{ include "taskproc.databaseEnv" . | trim }}
{{- end }}
{{- range $key, $value := .Values.config }}
{{- if and (has $key (list "log_format" "log_level" "db_timeout_s")) (ne (toString $value) "") }}
- name: {{ printf "TASKPROC_%s" (upper $key) }}
  value: {{ include "taskproc.scalar" $value | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* The init container of API and worker pods: start only once the schema is at this image's head revision
(the migration Job may still run, or run after these pods are created). It never migrates. */}}
{{- define "taskproc.waitForSchema" -}}
- name: wait-for-schema
  image: {{ include "taskproc.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["migrate", "--wait-for-schema", "--timeout", {{ include "taskproc.scalar" .Values.migrations.waitTimeoutSeconds | quote }}]
  env:
    {{- include "taskproc.databaseEnv" . | trim | nindent 4 }}
    {{- range $key, $value := .Values.config }}
    {{- if and (has $key (list "log_format" "log_level" "db_timeout_s")) (ne (toString $value) "") }}
    - name: {{ printf "TASKPROC_%s" (upper $key) }}
      value: {{ include "taskproc.scalar" $value | quote }}
    {{- end }}
    {{- end }}
  resources:
    {{- toYaml .Values.migrations.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
{{- end }}

{{- define "taskproc.componentSelector" -}}
{{ include "taskproc.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Images --------------------------------------------------------------------------------------- */}}

{{/* (dict "image" .Values.image "default" .Chart.AppVersion) */}}
{{- define "taskproc.imageRef" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (toString (default .default .image.tag)) }}
{{- end }}
{{- end }}

{{- define "taskproc.image" -}}
{{- if not .Values.image.repository }}
{{- fail "image.repository is empty: no public registry serves a taskproc image. Build it (`make image`), then either load it into your cluster (kind: `kind load docker-image taskproc:<version>`, and --set image.repository=taskproc,image.pullPolicy=Never) or push it to a registry (--set image.repository=registry.example.com/taskproc); see the chart README" }}
{{- end }}
{{- include "taskproc.imageRef" (dict "image" .Values.image "default" .Chart.AppVersion) }}
{{- end }}

{{/* checkov skip annotations shared by the pods' owners; each entry is "CHECK_ID=reason". */}}
{{- define "taskproc.checkovSkips" -}}
checkov.io/skip1: CKV_K8S_43=Images are referenced by tag by default; set image.digest (and redis/postgresql.image.digest) to pin a digest per environment
checkov.io/skip2: CKV_K8S_15=imagePullPolicy is a value (IfNotPresent by default) so that kind/skaffold can use locally loaded images
checkov.io/skip3: CKV_K8S_35=taskproc reads its settings (database and Redis URLs, API keys) only from TASKPROC_* environment variables; the values come from Secrets via secretKeyRef
{{- end }}

{{/* Scalars -------------------------------------------------------------------------------------- */}}

{{/* Renders a values scalar as an env string; whole floats (YAML numbers arrive as float64) print as integers. */}}
{{- define "taskproc.scalar" -}}
{{- if kindIs "float64" . }}
{{- if eq . (floor .) }}{{ printf "%d" (int64 .) }}{{ else }}{{ toString . }}{{ end }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/* Secrets -------------------------------------------------------------------------------------- */}}

{{/*
Value of one key of the chart's Secret: the given value, else the value already in the cluster (kept on
upgrade), else a new random string. (dict "ctx" $ "key" "redis-password" "value" "..." "length" 32)
*/}}
{{- define "taskproc.secretValue" -}}
{{- if .value }}
{{- .value }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace (include "taskproc.secretName" .ctx) }}
{{- if and $existing $existing.data (hasKey $existing.data .key) }}
{{- index $existing.data .key | b64dec }}
{{- else }}
{{- randAlphaNum (int .length) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Database ------------------------------------------------------------------------------------- */}}

{{- define "taskproc.postgresSecret" -}}
{{- default (include "taskproc.secretName" .) .Values.postgresql.auth.existingSecret }}
{{- end }}

{{/* The env entries that give TASKPROC_DATABASE_URL. */}}
{{- define "taskproc.databaseEnv" -}}
{{- if .Values.postgresql.enabled }}
- name: TASKPROC_DB_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "taskproc.postgresSecret" . }}
      key: {{ .Values.postgresql.auth.existingSecretPasswordKey }}
- name: TASKPROC_DATABASE_URL
  value: {{ printf "postgresql://%s:$(TASKPROC_DB_PASSWORD)@%s:5432/%s" .Values.postgresql.auth.username (include "taskproc.postgresHost" .) .Values.postgresql.auth.database | quote }}
{{- else if .Values.externalDatabase.url }}
- name: TASKPROC_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "taskproc.secretName" . }}
      key: database-url
{{- else if .Values.externalDatabase.existingSecret }}
- name: TASKPROC_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalDatabase.existingSecret }}
      key: {{ .Values.externalDatabase.existingSecretUrlKey }}
{{- else }}
{{- fail "postgresql.enabled is false: set externalDatabase.url or externalDatabase.existingSecret" }}
{{- end }}
{{- end }}

{{/* Redis ---------------------------------------------------------------------------------------- */}}

{{/*
Redis connection facts as a YAML dict: host, port, database, tls, passwordSecret, passwordKey (empty when
there is no password), username. Used by the env of the pods and by KEDA, so both read the same database.
*/}}
{{- define "taskproc.redisInfo" -}}
{{- if .Values.redis.enabled }}
host: {{ include "taskproc.redisHost" . }}
port: 6379
database: {{ include "taskproc.scalar" .Values.redis.database | quote }}
tls: false
passwordSecret: {{ default (include "taskproc.secretName" .) .Values.redis.auth.existingSecret }}
passwordKey: {{ .Values.redis.auth.existingSecretPasswordKey }}
username: ""
fromUrl: false
{{- else if .Values.externalRedis.url }}
{{- $u := urlParse .Values.externalRedis.url }}
{{- if not (has $u.scheme (list "redis" "rediss")) }}
{{- fail "externalRedis.url must start with redis:// or rediss://" }}
{{- end }}
{{- $hostport := splitList ":" $u.host }}
host: {{ first $hostport }}
port: {{ if gt (len $hostport) 1 }}{{ last $hostport }}{{ else }}6379{{ end }}
database: {{ default "0" (trimPrefix "/" $u.path) | quote }}
tls: {{ eq $u.scheme "rediss" }}
{{- $userinfo := splitList ":" (default "" $u.userinfo) }}
passwordSecret: {{ include "taskproc.secretName" . }}
passwordKey: {{ if gt (len $userinfo) 1 }}redis-password{{ end }}
username: {{ include "taskproc.urlDecode" (first $userinfo) | quote }}
fromUrl: true
{{- else if .Values.externalRedis.host }}
host: {{ .Values.externalRedis.host }}
port: {{ include "taskproc.scalar" .Values.externalRedis.port }}
database: {{ include "taskproc.scalar" .Values.externalRedis.database | quote }}
tls: {{ .Values.externalRedis.tls }}
passwordSecret: {{ .Values.externalRedis.existingSecret }}
passwordKey: {{ if .Values.externalRedis.existingSecret }}{{ .Values.externalRedis.existingSecretPasswordKey }}{{ end }}
username: ""
fromUrl: false
{{- else }}
{{- fail "redis.enabled is false: set externalRedis.url or externalRedis.host" }}
{{- end }}
{{- end }}

{{/* The env entries that give TASKPROC_REDIS_URL. */}}
{{- define "taskproc.redisEnv" -}}
{{- $r := include "taskproc.redisInfo" . | fromYaml }}
{{- if $r.fromUrl }}
- name: TASKPROC_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "taskproc.secretName" . }}
      key: redis-url
{{- else }}
{{- $scheme := ternary "rediss" "redis" $r.tls }}
{{- if $r.passwordKey }}
- name: TASKPROC_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $r.passwordSecret }}
      key: {{ $r.passwordKey }}
- name: TASKPROC_REDIS_URL
  value: {{ printf "%s://:$(TASKPROC_REDIS_PASSWORD)@%s:%v/%v" $scheme $r.host $r.port $r.database | quote }}
{{- else }}
- name: TASKPROC_REDIS_URL
  value: {{ printf "%s://%s:%v/%v" $scheme $r.host $r.port $r.database | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Common env of the taskproc containers ------------------------------------------------------- */}}

{{- define "taskproc.apiKeysSecret" -}}
{{- default (include "taskproc.secretName" .) .Values.auth.existingSecret }}
{{- end }}

{{- define "taskproc.commonEnv" -}}
{{ include "taskproc.databaseEnv" . | trim }}
{{ include "taskproc.redisEnv" . | trim }}
{{- if .Values.auth.enabled }}
- name: TASKPROC_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "taskproc.apiKeysSecret" . }}
      key: {{ .Values.auth.existingSecretKey }}
{{- end }}
{{- range $key, $value := .Values.config }}
{{- if and (ne (toString $value) "") (ne $key "maxShutdownRequeues") }}
- name: {{ printf "TASKPROC_%s" (upper $key) }}
  value: {{ include "taskproc.scalar" $value | quote }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Checks run by every render ------------------------------------------------------------------- */}}
{{- define "taskproc.validate" -}}
{{- $room := include "taskproc.requeueRoom" . | float64 }}
{{- range $pool := (include "taskproc.workerPools" . | fromJson).pools }}
{{- $g := dict "ctx" $ "pool" $pool }}
{{- $grace := include "taskproc.shutdownGrace" $g | float64 }}
{{- if lt (include "taskproc.terminationGrace" $g | float64) (addf $grace $room) }}
{{- $where := ternary (printf "worker.pools[%s]" $pool.name) "worker" (ne $pool.name "") }}
{{- fail (printf "%s.terminationGracePeriodSeconds (%v) must be at least %s.shutdownGraceSeconds (%v) + %v s (2 x config.db_timeout_s + 5 s for the requeue writes), or Kubernetes kills running tasks before the worker can requeue them" $where (include "taskproc.scalar" $pool.terminationGracePeriodSeconds) $where $grace $room) }}
{{- end }}
{{- end }}
{{- if lt (int .Values.api.terminationGracePeriodSeconds) (add (int .Values.api.preStopSleepSeconds) 10 | int) }}
{{- fail "api.terminationGracePeriodSeconds must be at least api.preStopSleepSeconds + 10 (uvicorn's graceful shutdown)" }}
{{- end }}
{{- if and (eq .Values.migrations.hook "helm") .Values.postgresql.enabled }}
{{- fail "migrations.hook=helm needs an external database: with the bundled Postgres a pre-install hook runs before Postgres exists and a post-install hook after `helm install --wait` gave up waiting for pods that need the schema; keep migrations.hook empty (an ordinary Job)" }}
{{- end }}
{{- if and .Values.keda.enabled .Values.worker.hpa.enabled }}
{{- fail "keda.enabled and worker.hpa.enabled both scale the workers: enable one of them" }}
{{- end }}
{{- if and .Values.keda.enabled (gt (int .Values.keda.minReplicaCount) (int .Values.keda.maxReplicaCount)) }}
{{- fail "keda.minReplicaCount must not exceed keda.maxReplicaCount" }}
{{- end }}
{{- if and .Values.worker.hpa.enabled (gt (int .Values.worker.hpa.minReplicas) (int .Values.worker.hpa.maxReplicas)) }}
{{- fail "worker.hpa.minReplicas must not exceed worker.hpa.maxReplicas" }}
{{- end }}
{{- end }}

{{/* Optional APIs -------------------------------------------------------------------------------- */}}

{{/* "true" when KEDA scales the workers: keda.enabled and the cluster serves KEDA's ScaledObject. */}}
{{- define "taskproc.kedaActive" -}}
{{- if and .Values.keda.enabled (.Capabilities.APIVersions.Has "keda.sh/v1alpha1/ScaledObject") }}true{{ end }}
{{- end }}

{{/* "true" when ServiceMonitors can be created (monitoring.enabled and the prometheus-operator CRDs). */}}
{{- define "taskproc.serviceMonitorActive" -}}
{{- if and .Values.monitoring.enabled (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor") }}true{{ end }}
{{- end }}

{{- define "taskproc.prometheusRuleActive" -}}
{{- if and .Values.monitoring.enabled .Values.monitoring.prometheusRule.enabled (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/PrometheusRule") }}true{{ end }}
{{- end }}

{{/* Pod template of the migration Job (also hashed into its name). */}}
{{- define "taskproc.migratePodSpec" -}}
metadata:
  labels:
    {{- include "taskproc.podLabels" (dict "ctx" . "component" "migrate") | nindent 4 }}
spec:
  restartPolicy: Never
  # The Job needs no Kubernetes API access: it runs as the namespace's default ServiceAccount without a token
  # (the chart's ServiceAccount may not exist yet when it runs as a pre-install hook).
  automountServiceAccountToken: false
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
    - name: migrate
      image: {{ include "taskproc.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args: ["migrate", "--wait", {{ include "taskproc.scalar" .Values.migrations.activeDeadlineSeconds | quote }}]
      env:
        {{- include "taskproc.migrateEnv" . | trim | nindent 8 }}
      resources:
        {{- toYaml .Values.migrations.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
{{- end }}

{{/* Worker shutdown grace of one worker Deployment, (dict "ctx" $ "pool" $pool), $pool an entry of
taskproc.workerPools: its shutdownGraceSeconds, else the task timeout (a running task may finish). */}}
{{- define "taskproc.shutdownGrace" -}}
{{- if kindIs "invalid" .pool.shutdownGraceSeconds }}
{{- include "taskproc.scalar" .ctx.Values.config.task_timeout_s }}
{{- else }}
{{- include "taskproc.scalar" .pool.shutdownGraceSeconds }}
{{- end }}
{{- end }}

{{/* Seconds after the shutdown grace for the requeue writes (Postgres and Redis): 2 x db timeout + 5 s. */}}
{{- define "taskproc.requeueRoom" -}}
{{- include "taskproc.scalar" (addf (mulf 2 (float64 .Values.config.db_timeout_s)) 5) }}
{{- end }}

{{/* terminationGracePeriodSeconds of one worker Deployment, (dict "ctx" $ "pool" $pool): its value, else the
shutdown grace + requeue room (rounded up). */}}
{{- define "taskproc.terminationGrace" -}}
{{- if kindIs "invalid" .pool.terminationGracePeriodSeconds }}
{{- addf (include "taskproc.shutdownGrace" . | float64) (include "taskproc.requeueRoom" .ctx | float64) | ceil | int64 }}
{{- else }}
{{- include "taskproc.scalar" .pool.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* Redis maxmemory in bytes: redis.maxmemory, else redis.maxmemoryPercent of the container's memory limit. */}}
{{- define "taskproc.redisMaxmemory" -}}
{{- if .Values.redis.maxmemory }}
{{- .Values.redis.maxmemory }}
{{- else }}
{{- $limit := toString (dig "limits" "memory" "" .Values.redis.resources) }}
{{- $m := regexFindAll "^([0-9]+)(Ki|Mi|Gi|Ti|K|M|G|T)?$" $limit -1 }}
{{- if not $m }}
{{- fail (printf "set redis.maxmemory: the Redis memory limit %q is not a plain quantity the chart can take a share of" $limit) }}
{{- end }}
{{- $num := regexReplaceAll "[^0-9]" $limit "" | float64 }}
{{- $unit := regexReplaceAll "^[0-9]+" $limit "" }}
{{- $mult := get (dict "" 1.0 "K" 1000.0 "M" 1000000.0 "G" 1000000000.0 "T" 1000000000000.0 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0) $unit }}
{{- mulf $num $mult (divf (float64 .Values.redis.maxmemoryPercent) 100) | floor | int64 }}
{{- end }}
{{- end }}

{{/* Percent-decoding of a URL's userinfo part (ASCII escapes; anything else is refused). */}}
{{- define "taskproc.urlDecode" -}}
{{- $chars := dict }}
{{- range $i := until 128 }}
{{- $_ := set $chars (printf "%02X" $i) (printf "%c" $i) }}
{{- end }}
{{- $parts := splitList "%" . }}
{{- first $parts }}
{{- range $p := rest $parts }}
{{- $code := upper (substr 0 2 $p) }}
{{- if not (hasKey $chars $code) }}
{{- fail (printf "externalRedis.url: cannot decode the escape %%%s in its credentials (ASCII escapes only)" (substr 0 2 $p)) }}
{{- end }}
{{- get $chars $code }}{{ substr 2 (len $p) $p }}
{{- end }}
{{- end }}

{{/*
Postgres max_connections for the bundled server, from the connection budget of the processes (see
src/taskproc/config.py): an API process holds at most 2 x db_pool_size + 1, a worker 2 x min(db_pool_size,
concurrency + 4) + 3; each Deployment (every worker pool is one) counted at its maximum replicas plus the one pod a
rollout adds (maxSurge), plus 2 for the migration Job and 10 spare (psql, monitoring, superuser_reserved_connections).
*/}}
{{- define "taskproc.postgresMaxConnections" -}}
{{- if .Values.postgresql.maxConnections }}
{{- .Values.postgresql.maxConnections }}
{{- else }}
{{- $pool := int .Values.config.db_pool_size }}
{{- $api := add (mul 2 $pool) 1 }}
{{- $total := add (mul (add (int .Values.api.replicaCount) 1) $api) 2 10 }}
{{- range $p := (include "taskproc.workerPools" . | fromJson).pools }}
{{- $worker := add (mul 2 (min $pool (add (int $p.concurrency) 4))) 3 }}
{{- $workers := int $p.replicaCount }}
{{- if $.Values.keda.enabled }}{{ $workers = max $workers (int $p.keda.maxReplicaCount) }}{{ end }}
{{- if $.Values.worker.hpa.enabled }}{{ $workers = int $p.hpa.maxReplicas }}{{ end }}
{{- $total = add $total (mul (add $workers 1) $worker) }}
{{- end }}
{{- $total }}
{{- end }}
{{- end }}
