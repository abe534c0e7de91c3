{{- define "pubsubkafka.name" -}}
{{- printf "%s-controller" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pubsubkafka.labels" -}}
app.kubernetes.io/name: pubsubkafka-controller
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- /* The names of a list of {name: ...} references, comma-separated. */ -}}
{{- define "pubsubkafka.secretNames" -}}
{{- $names := list -}}
{{- range . -}}{{- $names = append $names .name -}}{{- end -}}
{{- join "," $names -}}
{{- end -}}

{{- define "pubsubkafka.selectorLabels" -}}
app.kubernetes.io/name: pubsubkafka-controller
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
