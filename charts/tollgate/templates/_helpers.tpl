{{/* Release-scoped name: "<release>-tollgate", or the release name when it already says tollgate. */}}
{{- define "tollgate.fullname" -}}
{{- if contains "tollgate" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-tollgate" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tollgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/part-of: tollgate
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "tollgate.operator.selector" -}}
app.kubernetes.io/name: tollgate-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tollgate.proxy.selector" -}}
app.kubernetes.io/name: tollgate-proxy
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tollgate.image" -}}
{{- $root := index . 0 -}}
{{- printf "%s/%s:%s" $root.Values.image.registry (index . 1) (default $root.Chart.AppVersion $root.Values.image.tag) -}}
{{- end -}}

{{/* Pod and container hardening shared by both workloads. */}}
{{- define "tollgate.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "tollgate.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/*
The counter store, for proxies (--store) and the operator (usage roll-up): the same Redis.
*/}}
{{- define "tollgate.store.args" -}}
{{- if .Values.redis.deploy }}
- --store=redis://{{ include "tollgate.fullname" . }}-redis.{{ .Release.Namespace }}.svc:6379
{{- else if .Values.redis.url }}
- --store={{ .Values.redis.url }}
{{- end }}
{{- if .Values.redis.caSecret }}
- --store-ca-file=/etc/tollgate/redis-ca/ca.crt
{{- end }}
{{- end }}

{{- define "tollgate.store.env" -}}
{{- if and .Values.redis.existingSecret (not .Values.redis.deploy) (not .Values.redis.url) }}
- name: TOLLGATE_STORE
  valueFrom: {secretKeyRef: {name: {{ .Values.redis.existingSecret }}, key: url}}
{{- end }}
{{- end }}

{{- define "tollgate.store.volumeMounts" -}}
{{- if .Values.redis.caSecret }}
- {name: redis-ca, mountPath: /etc/tollgate/redis-ca, readOnly: true}
{{- end }}
{{- end }}

{{- define "tollgate.store.volumes" -}}
{{- if .Values.redis.caSecret }}
- name: redis-ca
  secret:
    secretName: {{ .Values.redis.caSecret }}
    items: [{key: ca.crt, path: ca.crt}]
{{- end }}
{{- end }}
