{{/* The provider's app label: the AKS add-on's, so one selector finds both halves. */}}
{{- define "sscdpa.name" -}}
{{- default "secrets-store-provider-azure" .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The provider's DaemonSet name. */}}
{{- define "sscdpa.fullname" -}}
{{- default "secrets-store-provider-azure" .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The driver's DaemonSet name and app label. */}}
{{- define "sscd.fullname" -}}
{{- default "secrets-store-csi-driver" (index .Values "secrets-store-csi-driver" "fullnameOverride") | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "chart.labels" -}}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
app.kubernetes.io/part-of: secrets-store-csi-python
helm.sh/chart: "{{ .Chart.Name }}-{{ .Chart.Version | replace "+" "_" }}"
{{- end -}}

{{/* A Go duration (30s, 2m, 1h30m, 500ms), or fail naming the value. Call with (list NAME VALUE). */}}
{{- define "chart.duration" -}}
{{- $name := index . 0 -}}
{{- $value := toString (index . 1) -}}
{{- if not (regexMatch "^(0|([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(ns|us|µs|ms|s|m|h))+$" $value) -}}
{{- fail (printf "%s: %q is not a duration; use a Go duration such as 30s, 2m or 1h30m" $name $value) -}}
{{- end -}}
{{- $value -}}
{{- end -}}

{{/* A TCP port number, or fail naming the value. Call with (list NAME VALUE); a leading
     host part (":8095", "0.0.0.0:8095") is dropped. */}}
{{- define "chart.port" -}}
{{- $name := index . 0 -}}
{{- $value := toString (index . 1) -}}
{{- $port := regexReplaceAll "^.*:" $value "" -}}
{{- if not (regexMatch "^[0-9]{1,5}$" $port) -}}
{{- fail (printf "%s: %q is not a port; use a number from 1 to 65535 (or :PORT)" $name $value) -}}
{{- end -}}
{{- if or (lt (atoi $port) 1) (gt (atoi $port) 65535) -}}
{{- fail (printf "%s: %q is not a port; use a number from 1 to 65535 (or :PORT)" $name $value) -}}
{{- end -}}
{{- $port -}}
{{- end -}}

{{/* An image reference from {repository, tag, digest}. */}}
{{- define "chart.image" -}}
{{- if .digest -}}
{{- printf "%s@%s" .repository .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository (toString .tag) -}}
{{- end -}}
{{- end -}}

{{/* A ClusterRoleBinding of NAME-role to the driver's ServiceAccount. Call with (list $ NAME). */}}
{{- define "chart.binding" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {{ $name }}-rolebinding
  labels:
    {{- include "chart.labels" $root | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {{ $name }}-role
subjects:
  - kind: ServiceAccount
    name: secrets-store-csi-driver
    namespace: {{ $root.Release.Namespace }}
{{- end -}}
