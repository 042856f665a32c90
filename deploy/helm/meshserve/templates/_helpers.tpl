{{/* Names: <release>-meshserve-<part>, trimmed to DNS-1123 label length. */}}
{{- define "meshserve.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "meshserve.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* selector labels of one part: include "meshserve.selector" (list $ "gateway") */}}
{{- define "meshserve.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ $root.Chart.Name }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "meshserve.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "meshserve.natsUrl" -}}
{{- if .Values.nats.url -}}
{{ .Values.nats.url }}
{{- else -}}
nats://{{ include "meshserve.fullname" . }}-nats.{{ .Release.Namespace }}.svc.{{ .Values.clusterDomain }}:4222
{{- end -}}
{{- end -}}

{{- define "meshserve.prometheusAddress" -}}
{{- if .Values.autoscaling.prometheusAddress -}}
{{ .Values.autoscaling.prometheusAddress }}
{{- else -}}
http://{{ include "meshserve.fullname" . }}-prometheus.{{ .Release.Namespace }}.svc.{{ .Values.clusterDomain }}:9090
{{- end -}}
{{- end -}}

{{/* A model's name as a DNS label part: lower case, [a-z0-9-] only. */}}
{{- define "meshserve.modelSlug" -}}
{{- regexReplaceAll "[^a-z0-9-]+" (lower .) "-" | trunc 20 | trimAll "-" -}}
{{- end -}}

{{/* Environment shared by every meshserve container. */}}
{{- define "meshserve.env" -}}
- name: MESHSERVE_NATS_URL
  value: {{ include "meshserve.natsUrl" . | quote }}
- name: MESHSERVE_LOG_VERBOSE
  value: {{ .Values.mesh.logVerbose | quote }}
- name: MESHSERVE_MAX_MESSAGE_BYTES
  value: {{ .Values.mesh.maxMessageBytes | int | quote }}
- name: MESHSERVE_REQUEST_TIMEOUT_SECS
  value: {{ .Values.mesh.requestTimeoutSecs | quote }}
{{- end -}}

{{/* true when some model may scale to zero */}}
{{- define "meshserve.scalesToZero" -}}
{{- $zero := false -}}
{{- if .Values.autoscaling.enabled -}}
{{- range .Values.models -}}
{{- $a := mergeOverwrite (deepCopy $.Values.autoscaling) (.autoscaling | default dict) -}}
{{- if and $a.enabled (eq (int $a.minReplicas) 0) -}}{{- $zero = true -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- $zero -}}
{{- end -}}
