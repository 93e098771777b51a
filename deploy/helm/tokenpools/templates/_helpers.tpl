{{/* Names: <release>-<component>, cut to 63 characters (a DNS label, as Services need). */}}
{{- define "tokenpools.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tokenpools.component" -}}
{{- printf "%s-%s" (include "tokenpools.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tokenpools.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "tokenpools.labels" -}}
{{ include "tokenpools.selectorLabels" . }}
app.kubernetes.io/part-of: tokenpools
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "tokenpools.image" -}}
{{- printf "%s:%s" (required "image.repository is required" .Values.image.repository) (required "image.tag is required" .Values.image.tag) -}}
{{- end -}}

{{/* Kafka: the bootstrap list, checked, and its distinct ports (for the NetworkPolicy). */}}
{{- define "tokenpools.kafkaBootstrap" -}}
{{- $bootstrap := required "kafka.bootstrap is required: the brokers as HOST:PORT[,HOST:PORT]" .Values.kafka.bootstrap -}}
{{- range splitList "," $bootstrap -}}
{{- if not (regexMatch "^[A-Za-z0-9.-]+:[0-9]{1,5}$" (trim .)) -}}
{{- fail (printf "kafka.bootstrap: %q is not HOST:PORT (write the brokers as HOST:PORT[,HOST:PORT])" (trim .)) -}}
{{- end -}}
{{- end -}}
{{- $bootstrap -}}
{{- end -}}

{{- define "tokenpools.kafkaPorts" -}}
{{- $ports := list -}}
{{- range splitList "," (include "tokenpools.kafkaBootstrap" .) -}}
{{- $ports = append $ports (regexFind "[0-9]+$" (trim .) | atoi) -}}
{{- end -}}
{{- toJson (uniq $ports) -}}
{{- end -}}

{{/* The pod-level securityContext every pod of the chart runs with. */}}
{{- define "tokenpools.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "tokenpools.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Where a read-only-root container may write: HOME and TMPDIR on /tmp, state under /var/lib/tokenpools. */}}
{{- define "tokenpools.env" -}}
- name: HOME
  value: /tmp
- name: TMPDIR
  value: /tmp
- name: XDG_STATE_HOME
  value: /var/lib/tokenpools
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end -}}

{{- define "tokenpools.writableMounts" -}}
- name: tmp
  mountPath: /tmp
- name: state
  mountPath: /var/lib/tokenpools
{{- end -}}

{{- define "tokenpools.writableVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
- name: state
  emptyDir:
    sizeLimit: 5Gi
{{- end -}}

{{- define "tokenpools.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A probe for a port the process binds on 127.0.0.1 only (the kubelet's probes reach the pod IP). */}}
{{- define "tokenpools.loopbackProbe" -}}
exec:
  command:
    - python
    - -c
    - "import socket; socket.create_connection(('127.0.0.1', {{ . }}), 2).close()"
{{- end -}}

{{/* The replicas of a pool's vLLM Deployment: the live value once the scaler owns it, so that
     `helm upgrade` does not undo a scale decision; initial (or min) replicas at install. */}}
{{- define "tokenpools.vllmReplicas" -}}
{{- $live := lookup "apps/v1" "Deployment" .root.Release.Namespace .name -}}
{{- if and $live $live.spec -}}
{{- $live.spec.replicas -}}
{{- else -}}
{{- $replicas := dig "replicas" dict .pool.spec -}}
{{- $min := dig "min" 1 $replicas -}}
{{- dig "initial" $min $replicas | int -}}
{{- end -}}
{{- end -}}

{{/* NetworkPolicy egress rules: DNS; TCP ports (.ports) to .peers, or anywhere without peers (Kafka, the API server). */}}
{{- define "tokenpools.np.dns" -}}
- ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{- end }}
{{- define "tokenpools.np.egress" -}}
- ports:
    {{- range .ports }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
  {{- with .peers }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
