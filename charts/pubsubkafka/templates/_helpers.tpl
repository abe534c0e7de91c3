{{- define "pubsubkafka.name" -}}
{{- printf "%s-controller" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- /*
Cluster-scoped objects (ClusterRoles and their bindings) carry the release's namespace too: two
releases of one name in two namespaces (a team each, with watchNamespace) must not share them.
*/ -}}
{{- define "pubsubkafka.clusterName" -}}
{{- printf "%s-%s" (include "pubsubkafka.name" .) .Release.Namespace -}}
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

{{- /* The operator's Kafka connection, shared by its Deployment and the cleanup hook. */ -}}
{{- define "pubsubkafka.kafkaEnv" -}}
- name: PSK_KAFKA_BOOTSTRAP_SERVERS
  value: {{ .Values.kafka.bootstrapServers | quote }}
{{- with .Values.kafka.workerBootstrapServers }}
- name: PSK_WORKER_BOOTSTRAP_SERVERS
  value: {{ . | quote }}
{{- end }}
- name: PSK_KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
- name: PSK_KAFKA_TIMEOUT
  value: {{ .Values.kafka.timeout | quote }}
{{- if .Values.kafka.credentialsSecret.name }}
- name: PSK_KAFKA_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.credentialsSecret.name }}
      key: {{ .Values.kafka.credentialsSecret.usernameKey }}
- name: PSK_KAFKA_PASSWORD_FILE
  value: /etc/pubsubkafka/kafka-credentials/{{ .Values.kafka.credentialsSecret.passwordKey }}
{{- end }}
{{- if .Values.kafka.caSecret.name }}
- name: PSK_KAFKA_CA_FILE
  value: /etc/pubsubkafka/kafka-ca/{{ .Values.kafka.caSecret.key }}
{{- end }}
{{- end -}}

{{- define "pubsubkafka.kafkaVolumeMounts" -}}
{{- if .Values.kafka.credentialsSecret.name }}
- name: kafka-credentials
  mountPath: /etc/pubsubkafka/kafka-credentials
  readOnly: true
{{- end }}
{{- if .Values.kafka.caSecret.name }}
- name: kafka-ca
  mountPath: /etc/pubsubkafka/kafka-ca
  readOnly: true
{{- end }}
{{- end -}}

{{- define "pubsubkafka.kafkaVolumes" -}}
{{- if .Values.kafka.credentialsSecret.name }}
- name: kafka-credentials
  secret: {secretName: {{ .Values.kafka.credentialsSecret.name }}}
{{- end }}
{{- if .Values.kafka.caSecret.name }}
- name: kafka-ca
  secret: {secretName: {{ .Values.kafka.caSecret.name }}}
{{- end }}
{{- end -}}
