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

{{/* <registry>/<repository>:<tag>, or <registry>/<repository>@<digest> when the component has a digest (it
wins over the tag): call with (dict "ctx" $ "c" .Values.webhook). The webhook, the assigner and the node agent
compare the sidecar's image as a string, so all of them get it from here. */}}
{{- define "podidentity.image" -}}
{{- if .c.digest -}}
{{- printf "%s/%s@%s" .ctx.Values.image.registry .c.repository .c.digest -}}
{{- else -}}
{{- printf "%s/%s:%s" .ctx.Values.image.registry .c.repository (.c.tag | default .ctx.Values.image.tag | default .ctx.Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* The user's podLabels of a component, checked: a label the chart sets on the pods itself (its selector, the
base labels, reserved ones) is refused rather than silently dropped or duplicated. Call with (dict "ctx" $
"component" "webhook" "value" "webhook" "labels" $w.podLabels "reserved" (list ...)); renders the labels as YAML. */}}
{{- define "podidentity.podLabels" -}}
{{- $own := merge (include "podidentity.baseLabels" .ctx | fromYaml) (include "podidentity.selector" (dict "ctx" .ctx "component" .component) | fromYaml) -}}
{{- range $k := .reserved | default list }}{{ $_ := set $own $k "" }}{{ end -}}
{{- range $k, $_ := .labels -}}
{{- if hasKey $own $k -}}
{{- fail (printf "%s.podLabels: the chart sets the pod label %s itself; remove it from %s.podLabels" $.value $k $.value) -}}
{{- end -}}
{{- end -}}
{{- toYaml .labels -}}
{{- end -}}

{{/* The anti-affinity the component's antiAffinity value asks for (soft or hard spreading over nodes): call with
(dict "ctx" $ "component" "webhook" "mode" $w.antiAffinity); renders the podAntiAffinity's content. */}}
{{- define "podidentity.podAntiAffinity" -}}
{{- if eq .mode "hard" -}}
requiredDuringSchedulingIgnoredDuringExecution:
- topologyKey: kubernetes.io/hostname
  labelSelector:
    matchLabels:
      {{- include "podidentity.selector" (dict "ctx" .ctx "component" .component) | nindent 6 }}
{{- else -}}
preferredDuringSchedulingIgnoredDuringExecution:
- weight: 100
  podAffinityTerm:
    topologyKey: kubernetes.io/hostname
    labelSelector:
      matchLabels:
        {{- include "podidentity.selector" (dict "ctx" .ctx "component" .component) | nindent 8 }}
{{- end -}}
{{- end -}}

{{/* A pod's affinity: the component's affinity value, plus (unless it has a podAntiAffinity key) the spreading
antiAffinity asks for. Call with (dict "ctx" $ "component" "webhook" "affinity" $w.affinity "mode" $w.antiAffinity);
"mode" "" adds no anti-affinity. Renders the affinity's content, or nothing. */}}
{{- define "podidentity.affinity" -}}
{{- $aff := .affinity | default dict -}}
{{- $out := list -}}
{{- with omit $aff "podAntiAffinity" }}{{ $out = append $out (toYaml .) }}{{ end -}}
{{- if hasKey $aff "podAntiAffinity" -}}
{{- $out = append $out (printf "podAntiAffinity:\n%s" (toYaml $aff.podAntiAffinity | indent 2)) -}}
{{- else if .mode -}}
{{- $out = append $out (printf "podAntiAffinity:\n%s" (include "podidentity.podAntiAffinity" . | indent 2)) -}}
{{- end -}}
{{- join "\n" $out -}}
{{- end -}}

{{/* topologySpreadConstraints with the component's selector labels filled in where a constraint has no
labelSelector: call with (dict "ctx" $ "component" "webhook" "constraints" $w.topologySpreadConstraints). */}}
{{- define "podidentity.topologySpreadConstraints" -}}
{{- $sel := include "podidentity.selector" (dict "ctx" .ctx "component" .component) | fromYaml -}}
{{- $out := list -}}
{{- range .constraints -}}
{{- $c := deepCopy . -}}
{{- if not (hasKey $c "labelSelector") }}{{ $_ := set $c "labelSelector" (dict "matchLabels" $sel) }}{{ end -}}
{{- $out = append $out $c -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* The sidecar's --v for sidecar.logLevel: info 0, debug 1, or the number given. */}}
{{- define "podidentity.sidecarVerbosity" -}}
{{- $l := .Values.sidecar.logLevel -}}
{{- if eq (toString $l) "info" -}}0{{- else if eq (toString $l) "debug" -}}1{{- else -}}{{ int $l }}{{- end -}}
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

{{/*
podidentity.goMemLimit: the GOMEMLIMIT of a container, percent % of its memory limit in MiB (rounded down),
from a dict with "resources" and "percent"; "" when the container has no memory limit or percent is 0.
*/}}
{{- define "podidentity.goMemLimit" -}}
{{- $limit := toString (dig "limits" "memory" "" .resources) -}}
{{- $percent := int .percent -}}
{{- if and $limit (gt $percent 0) -}}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" $limit -}}
{{- $unit := trimPrefix $num $limit -}}
{{- $mib := dict "Ki" (divf 1 1024) "Mi" 1.0 "Gi" 1024.0 "Ti" 1048576.0 "k" (divf 1000 1048576) "M" (divf 1000000 1048576) "G" (divf 1000000000 1048576) "T" (divf 1000000000000 1048576) "" (divf 1 1048576) -}}
{{- if not (hasKey $mib $unit) -}}
{{- fail (printf "resources.limits.memory %q: use a unit of bytes (Ki, Mi, Gi, Ti, k, M, G, T or none)" $limit) -}}
{{- end -}}
{{- $v := floor (divf (mulf (float64 $num) (get $mib $unit) $percent) 100) | int64 -}}
{{- if gt $v 0 -}}{{ $v }}MiB{{- end -}}
{{- end -}}
{{- end -}}
