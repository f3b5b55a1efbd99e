{{/* Object name prefix: the release name, unless it already contains the chart name. */}}
{{- define "podidentity.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "podidentity.webhook" -}}{{ include "podidentity.fullname" . }}-webhook{{- end -}}
{{- define "podidentity.assigner" -}}{{ include "podidentity.fullname" . }}-assigner{{- end -}}
{{- define "podidentity.node" -}}{{ include "podidentity.fullname" . }}-node{{- end -}}
{{- define "podidentity.certSecret" -}}{{ include "podidentity.webhook" . }}-cert{{- end -}}

{{/* Labels of every object; podidentity.labels adds the instance, which the selector labels carry too. */}}
{{- define "podidentity.baseLabels" -}}
app.kubernetes.io/part-of: podidentity
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "podidentity.labels" -}}
{{ include "podidentity.baseLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Selector labels of one component: call with (dict "ctx" $ "component" "webhook"). */}}
{{- define "podidentity.selector" -}}
app.kubernetes.io/name: {{ include "podidentity.fullname" .ctx }}-{{ .component }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- end -}}

{{/* <registry>/<repository>:<tag>: call with (dict "ctx" $ "c" .Values.webhook). */}}
{{- define "podidentity.image" -}}
{{- printf "%s/%s:%s" .ctx.Values.image.registry .c.repository (.c.tag | default .ctx.Values.image.tag | default .ctx.Chart.AppVersion) -}}
{{- end -}}

{{- define "podidentity.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "podidentity.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}
