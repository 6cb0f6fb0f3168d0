{{/* The image reference: repository@digest, else repository:tag. */}}
{{- define "nodecreds.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{- define "nodecreds.labels" -}}
app.kubernetes.io/name: nodecreds
{{- end -}}

{{/* A volume name for a target's folder. */}}
{{- define "nodecreds.dirName" -}}
{{- if eq . "/var/lib/kubelet" -}}kubelet-dir
{{- else if eq . "/root/.docker" -}}docker-dir
{{- else -}}dir{{ . | replace "/" "-" | replace "." "-" | replace "_" "-" | lower | trunc 50 | trimSuffix "-" }}
{{- end -}}
{{- end -}}
