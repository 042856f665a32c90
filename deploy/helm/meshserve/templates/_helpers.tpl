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
{{ ternary "tls" "nats" .Values.nats.tls.enabled }}://{{ include "meshserve.natsUserInfo" . }}{{ include "meshserve.fullname" . }}-nats.{{ .Release.Namespace }}.svc.{{ .Values.clusterDomain }}:4222
{{- end -}}
{{- end -}}

{{/* "$(NATS_TOKEN)@" or "$(NATS_USER):$(NATS_PASSWORD)@": Kubernetes expands them from the Secret-backed
     variables "meshserve.natsAuthEnv" defines before MESHSERVE_NATS_URL. */}}
{{- define "meshserve.natsUserInfo" -}}
{{- if .Values.nats.auth.token.secretName -}}
$(NATS_TOKEN)@
{{- else if .Values.nats.auth.user.secretName -}}
$(NATS_USER):$(NATS_PASSWORD)@
{{- end -}}
{{- end -}}

{{- define "meshserve.natsAuthEnv" -}}
{{- $a := .Values.nats.auth -}}
{{- if and $a.token.secretName $a.user.secretName -}}
{{- fail "nats.auth: set token.secretName or user.secretName, not both" -}}
{{- end -}}
{{- if $a.token.secretName }}
- name: NATS_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ $a.token.secretName | quote }}, key: {{ $a.token.key | quote }}}
{{- else if $a.user.secretName }}
- name: NATS_USER
  valueFrom:
    secretKeyRef: {name: {{ $a.user.secretName | quote }}, key: {{ $a.user.userKey | quote }}}
- name: NATS_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ $a.user.secretName | quote }}, key: {{ $a.user.passwordKey | quote }}}
{{- end }}
{{- end -}}

{{/* Volumes and mounts of the NATS client secrets, in every meshserve pod. */}}
{{- define "meshserve.natsVolumeMounts" -}}
{{- if .Values.nats.tls.enabled }}
- {name: nats-tls, mountPath: /etc/meshserve/nats-tls, readOnly: true}
{{- end }}
{{- if .Values.nats.auth.creds.secretName }}
- {name: nats-creds, mountPath: /etc/meshserve/nats-creds, readOnly: true}
{{- end }}
{{- end -}}

{{- define "meshserve.natsVolumes" -}}
{{- if .Values.nats.tls.enabled }}
- name: nats-tls
  secret:
    secretName: {{ required "nats.tls.enabled needs nats.tls.clientSecret (ca.crt, and tls.crt/tls.key for verifyClients)" .Values.nats.tls.clientSecret | quote }}
{{- end }}
{{- if .Values.nats.auth.creds.secretName }}
- name: nats-creds
  secret:
    secretName: {{ .Values.nats.auth.creds.secretName | quote }}
{{- end }}
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
{{- $auth := include "meshserve.natsAuthEnv" . | trim -}}
{{- if $auth }}{{ $auth }}
{{ end -}}
- name: MESHSERVE_NATS_URL
  value: {{ include "meshserve.natsUrl" . | quote }}
- name: MESHSERVE_LOG_VERBOSE
  value: {{ .Values.mesh.logVerbose | quote }}
- name: MESHSERVE_MAX_MESSAGE_BYTES
  value: {{ .Values.mesh.maxMessageBytes | int | quote }}
- name: MESHSERVE_REQUEST_TIMEOUT_SECS
  value: {{ .Values.mesh.requestTimeoutSecs | quote }}
{{- if .Values.nats.tls.enabled }}
- name: MESHSERVE_NATS_TLS_CA
  value: /etc/meshserve/nats-tls/ca.crt
{{- if .Values.nats.tls.verifyClients }}
- name: MESHSERVE_NATS_TLS_CERT
  value: /etc/meshserve/nats-tls/tls.crt
- name: MESHSERVE_NATS_TLS_KEY
  value: /etc/meshserve/nats-tls/tls.key
{{- end }}
{{- end }}
{{- if .Values.nats.auth.creds.secretName }}
- name: MESHSERVE_NATS_CREDS
  value: /etc/meshserve/nats-creds/{{ .Values.nats.auth.creds.key }}
{{- end }}
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


{{/* The chart's nats.conf: payload limits (as `meshserve up`), then TLS and who may connect. */}}
{{- define "meshserve.natsConf" -}}
max_payload: {{ .Values.mesh.maxMessageBytes | int }}
max_pending: {{ max (mul 4 (int .Values.mesh.maxMessageBytes)) 268435456 }}
{{- if .Values.nats.tls.enabled }}
tls {
  cert_file: /etc/nats-tls/tls.crt
  key_file: /etc/nats-tls/tls.key
  ca_file: /etc/nats-tls/ca.crt
  verify: {{ .Values.nats.tls.verifyClients }}
  timeout: 5
}
{{- end }}
{{- if .Values.nats.auth.token.secretName }}
authorization {
  token: $NATS_TOKEN
}
{{- else if .Values.nats.auth.user.secretName }}
authorization {
  user: $NATS_USER
  password: $NATS_PASSWORD
}
{{- end }}
{{- end -}}
