{{/* The name of everything this release makes. */}}
{{- define "cassette.fullname" -}}
{{- if contains "cassette" .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-cassette" .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cassette.labels" -}}
app.kubernetes.io/name: cassette
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "cassette.selectorLabels" -}}
app.kubernetes.io/name: cassette
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "cassette.operatorImage" -}}
{{ .Values.image.operator.repository }}:{{ .Values.image.operator.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "cassette.sidecarImage" -}}
{{ .Values.image.sidecar.repository }}:{{ .Values.image.sidecar.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "cassette.webhookService" -}}
{{ include "cassette.fullname" . }}-webhook
{{- end -}}

{{/* Where the webhooks are: the Service, with the CA patched in by the operator or cert-manager. */}}
{{- define "cassette.clientConfig" -}}
clientConfig:
  service:
    name: {{ include "cassette.webhookService" .root }}
    namespace: {{ .root.Release.Namespace }}
    path: {{ .path }}
    port: 443
{{- end -}}

{{/* Never send the release's own namespace or system namespaces to the webhooks. */}}
{{- define "cassette.excludedNamespaces" -}}
- key: kubernetes.io/metadata.name
  operator: NotIn
  values:
    - {{ .Release.Namespace }}
    {{- range .Values.webhook.excludeNamespaces }}
    - {{ . }}
    {{- end }}
{{- end -}}

{{- define "cassette.certManagerAnnotation" -}}
{{- if .Values.certManager.enabled }}
annotations:
  cert-manager.io/inject-ca-from: {{ .Release.Namespace }}/{{ include "cassette.fullname" . }}-webhook
{{- end }}
{{- end -}}
