{{/* Workers ------------------------------------------------------------------------------------- */}}

{{/*
The worker Deployments to render, as JSON {"pools": [...]}, each entry with every field resolved: worker.pools
with each unset field taken from worker.* (keda.* for the pool's keda block), or, when worker.pools is empty, one
unnamed entry (the catch-all Deployment `<fullname>-worker`) from worker.* and keda.* themselves. Templates range
over this instead of reading worker.*, so a pool and the catch-all Deployment render through the same code.
Entry fields: name ("" for the catch-all), deployment, queues, namedQueues, concurrency, replicaCount,
shutdownGraceSeconds, terminationGracePeriodSeconds, resources, podAnnotations, podLabels, nodeSelector,
tolerations, affinity, topologySpreadConstraints, hpa {minReplicas, maxReplicas, targetCPUUtilizationPercentage},
keda {minReplicaCount, maxReplicaCount, pollingInterval, cooldownPeriod, listLength, activationListLength}.
*/}}
{{- define "taskproc.workerPools" -}}
{{- $w := .Values.worker }}
{{- $fullname := include "taskproc.fullname" . }}
{{- $kedaKeys := list "minReplicaCount" "maxReplicaCount" "pollingInterval" "cooldownPeriod" "listLength" "activationListLength" }}
{{- $hpaKeys := list "minReplicas" "maxReplicas" "targetCPUUtilizationPercentage" }}
{{- $plain := list "concurrency" "replicaCount" "shutdownGraceSeconds" "terminationGracePeriodSeconds" "resources" "nodeSelector" "tolerations" "affinity" "topologySpreadConstraints" }}
{{- $items := $w.pools }}
{{- if not $items }}
{{- /* The catch-all Deployment: the same resolution with nothing overridden. */}}
{{- $items = list (dict "name" "" "queues" (default list $w.queues)) }}
{{- end }}
{{- $out := list }}
{{- $seen := dict }}
{{- range $p := $items }}
{{- if hasKey $seen $p.name }}
{{- fail (printf "worker.pools: the pool name %q is used twice; pool names must be unique (each is a Deployment)" $p.name) }}
{{- end }}
{{- $_ := set $seen $p.name true }}
{{- $deployment := ternary (printf "%s-worker-%s" $fullname $p.name) (printf "%s-worker" $fullname) (ne $p.name "") }}
{{- if gt (len $deployment) 63 }}
{{- fail (printf "worker.pools: %q (release full name + \"-worker-\" + pool name) is longer than 63 characters, the longest name KEDA can label its HPA with; shorten the pool name or fullnameOverride" $deployment) }}
{{- end }}
{{- $r := dict "name" $p.name "deployment" $deployment "queues" (uniq $p.queues) }}
{{- /* Only the catch-all Deployment serving every queue needs to be told which named queues exist. */}}
{{- $_ := set $r "namedQueues" (ternary (without (uniq $.Values.keda.namedQueues) "default") list (and (eq $p.name "") (empty $p.queues))) }}
{{- range $key := $plain }}
{{- /* A null value (shutdownGraceSeconds) may be missing altogether (helm 3 drops nulls in a subchart's values):
then the entry has no such key, which reads as null too, not as get's "". */}}
{{- if hasKey $p $key }}
{{- $_ := set $r $key (get $p $key) }}
{{- else if hasKey $w $key }}
{{- $_ := set $r $key (get $w $key) }}
{{- end }}
{{- end }}
{{- $_ := set $r "podAnnotations" (merge (dict) (default dict $p.podAnnotations) $w.podAnnotations) }}
{{- $_ := set $r "podLabels" (merge (dict) (default dict $p.podLabels) $w.podLabels) }}
{{- $hpa := dict }}
{{- $phpa := default dict $p.hpa }}
{{- range $key := $hpaKeys }}
{{- $_ := set $hpa $key (ternary (get $phpa $key) (get $w.hpa $key) (hasKey $phpa $key)) }}
{{- end }}
{{- $_ := set $r "hpa" $hpa }}
{{- $keda := dict }}
{{- $pkeda := default dict $p.keda }}
{{- range $key := $kedaKeys }}
{{- $_ := set $keda $key (ternary (get $pkeda $key) (get $.Values.keda $key) (hasKey $pkeda $key)) }}
{{- end }}
{{- /* Empty listLength: one pod per `concurrency` tasks, the pool's own slots. */}}
{{- if eq (toString $keda.listLength) "" }}
{{- $_ := set $keda "listLength" $r.concurrency }}
{{- end }}
{{- $_ := set $r "keda" $keda }}
{{- $where := ternary (printf "worker.pools[%s]" $p.name) "worker" (ne $p.name "") }}
{{- if and $.Values.keda.enabled (gt (int $keda.minReplicaCount) (int $keda.maxReplicaCount)) }}
{{- fail (printf "%s: keda.minReplicaCount must not exceed keda.maxReplicaCount" $where) }}
{{- end }}
{{- if and $w.hpa.enabled (gt (int $hpa.minReplicas) (int $hpa.maxReplicas)) }}
{{- fail (printf "%s: hpa.minReplicas must not exceed hpa.maxReplicas" $where) }}
{{- end }}
{{- $out = append $out $r }}
{{- end }}
{{- toJson (dict "pools" $out) }}
{{- end }}

{{/* The label that tells one pool's pods from another's (only pools have it; the catch-all's pods do not). */}}
{{- define "taskproc.poolLabelKey" -}}taskproc/pool{{- end }}

{{/* Selector of one worker Deployment: (dict "ctx" $ "pool" $pool); every worker pod still has component=worker,
which the worker Service, ServiceMonitor and NetworkPolicy select on. */}}
{{- define "taskproc.workerSelector" -}}
{{ include "taskproc.componentSelector" (dict "ctx" .ctx "component" "worker") }}
{{- if .pool.name }}
{{ include "taskproc.poolLabelKey" . }}: {{ .pool.name }}
{{- end }}
{{- end }}

{{/* Labels of one worker Deployment's objects (Deployment, ScaledObject, HPA, PDB): (dict "ctx" $ "pool" $pool) */}}
{{- define "taskproc.workerLabels" -}}
{{ include "taskproc.componentLabels" (dict "ctx" .ctx "component" "worker") }}
{{- if .pool.name }}
{{ include "taskproc.poolLabelKey" . }}: {{ .pool.name }}
{{- end }}
{{- end }}

{{/* Redis sorted set of a queue's ready jobs (src/taskproc/queue.py ready_key): what KEDA counts and workers take. */}}
{{- define "taskproc.readyKey" -}}
{{- if eq . "default" }}arq:queue{{ else }}taskproc:queue:{{ . }}{{ end }}
{{- end }}

{{/*
The KEDA redis triggers of one worker Deployment, as JSON {"triggers": [{name, key, queue, what}]}, and the
formula over their names. A Deployment with a list of queues counts exactly those queues' ready and running
sets (ready_<i> and running_<i>, i the queue's index in the list: queue names may hold "-", which a formula
would read as a minus). The catch-all Deployment serving every queue counts what it always did, every queue's
running jobs (taskproc:running) and the default queue's ready set, plus the ready sets of keda.namedQueues:
KEDA cannot list Redis keys, so it only sees the named queues it is told about.
*/}}
{{- define "taskproc.workerTriggers" -}}
{{- $t := list }}
{{- if .queues }}
{{- range $i, $q := .queues }}
{{- $t = append $t (dict "name" (printf "ready_%d" $i) "key" (include "taskproc.readyKey" $q) "queue" $q "what" "ready") }}
{{- $t = append $t (dict "name" (printf "running_%d" $i) "key" (printf "taskproc:running:%s" $q) "queue" $q "what" "running") }}
{{- end }}
{{- else }}
{{- $t = append $t (dict "name" "ready" "key" "arq:queue" "queue" "default" "what" "ready") }}
{{- $t = append $t (dict "name" "running" "key" "taskproc:running" "queue" "" "what" "running (every queue)") }}
{{- range $i, $q := .namedQueues }}
{{- $t = append $t (dict "name" (printf "ready_%d" $i) "key" (include "taskproc.readyKey" $q) "queue" $q "what" "ready") }}
{{- end }}
{{- end }}
{{- $names := list }}
{{- range $t }}{{ $names = append $names .name }}{{ end }}
{{- toJson (dict "triggers" $t "formula" (join " + " $names)) }}
{{- end }}

{{/* One worker Deployment: (dict "ctx" $ "pool" $pool), $pool an entry of taskproc.workerPools. */}}
{{- define "taskproc.workerDeployment" -}}
{{- $ctx := .ctx }}
{{- $p := .pool }}
{{- $sel := dict "ctx" $ctx "pool" $p }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $p.deployment }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "taskproc.workerLabels" $sel | nindent 4 }}
  annotations:
    {{- include "taskproc.checkovSkips" $ctx | nindent 4 }}
    {{- if $ctx.Values.worker.podDeletionCost.enabled }}
    checkov.io/skip4: CKV_K8S_38=worker.podDeletionCost.enabled - the worker patches its own pod's deletion cost with this token (Role - pods get and patch in this namespace only)
    {{- end }}
spec:
  {{- if not (or (include "taskproc.kedaActive" $ctx) $ctx.Values.worker.hpa.enabled) }}
  replicas: {{ int $p.replicaCount }}
  {{- end }}
  revisionHistoryLimit: 5
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 0
      maxSurge: 1
  selector:
    matchLabels:
      {{- include "taskproc.workerSelector" $sel | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "taskproc.podLabels" (dict "ctx" $ctx "component" "worker") | nindent 8 }}
        {{- if $p.name }}
        {{ include "taskproc.poolLabelKey" . }}: {{ $p.name }}
        {{- end }}
        {{- with $p.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        {{- include "taskproc.checksums" $ctx | nindent 8 }}
        {{- with $p.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      {{- if $ctx.Values.worker.podDeletionCost.enabled }}
      # The worker patches controller.kubernetes.io/pod-deletion-cost on its own pod (busy pods go last on
      # scale-down): its own ServiceAccount, allowed only pods get/patch in this namespace.
      serviceAccountName: {{ include "taskproc.fullname" $ctx }}-worker
      automountServiceAccountToken: true
      {{- else }}
      serviceAccountName: {{ include "taskproc.serviceAccountName" $ctx }}
      automountServiceAccountToken: false
      {{- end }}
      # worker.shutdownGraceSeconds (default: the task timeout) plus room for the requeue writes: on SIGTERM the
      # worker lets running tasks finish for that long, then requeues the rest, before Kubernetes sends SIGKILL.
      terminationGracePeriodSeconds: {{ include "taskproc.terminationGrace" . }}
      {{- with $ctx.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $ctx.Values.podSecurityContext | nindent 8 }}
      initContainers:
        {{- include "taskproc.waitForSchema" $ctx | nindent 8 }}
      containers:
        - name: worker
          image: {{ include "taskproc.image" $ctx | quote }}
          imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
          args: ["worker"]
          ports:
            - name: metrics
              containerPort: {{ $ctx.Values.worker.metricsPort }}
              protocol: TCP
          env:
            {{- include "taskproc.commonEnv" $ctx | nindent 12 }}
            - name: TASKPROC_WORKER_CONCURRENCY
              value: {{ include "taskproc.scalar" $p.concurrency | quote }}
            {{- if $p.queues }}
            # The only queues this worker takes from (after extraEnv, so a TASKPROC_WORKER_QUEUES there loses).
            - name: TASKPROC_WORKER_QUEUES
              value: {{ join "," $p.queues | quote }}
            {{- end }}
            - name: TASKPROC_WORKER_METRICS_PORT
              value: {{ include "taskproc.scalar" $ctx.Values.worker.metricsPort | quote }}
            - name: TASKPROC_SHUTDOWN_GRACE_S
              value: {{ include "taskproc.shutdownGrace" . | quote }}
            {{- if $ctx.Values.worker.podDeletionCost.enabled }}
            - name: TASKPROC_POD_DELETION_COST
              value: "true"
            - name: TASKPROC_POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            - name: TASKPROC_POD_NAMESPACE
              valueFrom:
                fieldRef:
                  fieldPath: metadata.namespace
            {{- end }}
            - name: TASKPROC_MAX_SHUTDOWN_REQUEUES
              value: {{ include "taskproc.scalar" $ctx.Values.config.maxShutdownRequeues | quote }}
          startupProbe:
            httpGet:
              path: /healthz
              port: metrics
            periodSeconds: {{ $ctx.Values.worker.startupProbe.periodSeconds }}
            failureThreshold: {{ $ctx.Values.worker.startupProbe.failureThreshold }}
          livenessProbe:
            httpGet:
              path: /healthz
              port: metrics
            periodSeconds: {{ $ctx.Values.worker.livenessProbe.periodSeconds }}
            timeoutSeconds: {{ $ctx.Values.worker.livenessProbe.timeoutSeconds }}
            failureThreshold: {{ $ctx.Values.worker.livenessProbe.failureThreshold }}
          readinessProbe:
            httpGet:
              path: /healthz
              port: metrics
            periodSeconds: {{ $ctx.Values.worker.livenessProbe.periodSeconds }}
            timeoutSeconds: {{ $ctx.Values.worker.livenessProbe.timeoutSeconds }}
          resources:
            {{- toYaml $p.resources | nindent 12 }}
          securityContext:
            {{- toYaml $ctx.Values.securityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
      volumes:
        # The only writable path (Prometheus multiprocess files live under $TMPDIR).
        - name: tmp
          emptyDir:
            sizeLimit: 256Mi
      {{- with $p.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $p.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $p.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $p.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}
