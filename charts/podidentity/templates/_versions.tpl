{{- /*
podidentity.kubeVersionChecks refuses a feature that the cluster's Kubernetes minor cannot run, naming the
feature, the minor it needs and the value that turns it off; without it the install would fail later on the API
server's "no matches for kind", which says neither what nor why, or leave a feature silently absent.

Chart.yaml's kubeVersion is the oldest minor the defaults run on: 1.29, where native sidecars (the sidecar as an
init container with restartPolicy Always, which webhook.mode=auto picks there) are on by default. A feature that
needs a newer minor gets a row here. Not here, on purpose: identityAnnotationPolicy, on by default, is skipped
below 1.30 with a NOTES warning (identity-annotation-policy.yaml), so that the defaults install on 1.29.

.Capabilities.KubeVersion is the cluster's at install and upgrade, --kube-version's with helm template.
*/ -}}
{{- define "podidentity.kubeVersionChecks" -}}
{{- $v := .Capabilities.KubeVersion.Version -}}
{{- $needs := list
  (dict "on" .Values.guard.enabled "feature" "guard mode (guard.enabled=true)" "minor" "1.30" "off" "guard.enabled=false"
        "why" "it keeps un-injected pods off the identity pool with a ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1), served from 1.30 on") -}}
{{- range $needs }}
{{- if and .on (not (semverCompare (printf ">=%s-0" .minor) $v)) }}
{{- fail (printf "%s needs Kubernetes %s or newer and this cluster is %s: %s. Set %s, or upgrade the cluster to %s+ first (docs/install.md, \"Supported versions\")" .feature .minor $v .why .off .minor) }}
{{- end }}
{{- end }}
{{- end -}}
