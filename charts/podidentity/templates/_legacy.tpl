{{- /*
Values files of AAD Pod Identity's chart (aad-pod-identity 3.x and 4.x; docs/migration.md, "Values files from AAD
Pod Identity's chart").

podidentity.legacy maps the keys of that chart that have a meaning here onto this chart's values, in place in
.Values, and records what it mapped, what it ignored and why, for NOTES.txt; it fails on keys whose loss would be
unsafe. It runs once per rendering (the record under .Values._aadPodIdentity marks it done; the schema refuses
that key in values files), so every template that reads a value it may change includes it first:
  include "podidentity.legacy" .
test/suites/packaging (TestTemplatesApplyLegacyValues) checks that they do.

A mapped key applies only while this chart's own value is still at its default; when both are given, this chart's
value wins and NOTES says so.
*/ -}}

{{- /* The defaults of the values podidentity.legacy may change (TestLegacyDefaultsMatchValues keeps them equal to
values.yaml). */ -}}
{{- define "podidentity.legacy.defaults" -}}
image:
  pullPolicy: IfNotPresent
sidecar:
  blockInstanceMetadata: false
  metadataHeaderRequired: true
  logLevel: info
rbac:
  userFacingClusterRoles: false
assigner:
  replicas: 2
  podDisruptionBudget:
    enabled: true
    minAvailable: 1
  affinity: {}
  podLabels: {}
  logLevel: info
  logFormat: json
  priorityClassName: system-cluster-critical
  aadPodIdentityMICLock: default/aad-pod-identity-mic
  cloud: ""
  nodeSelector:
    kubernetes.io/os: linux
  tolerations: []
  resources:
    requests: {cpu: 50m, memory: 64Mi}
    limits: {cpu: "1", memory: 256Mi}
  credentials:
    azureJSON: hostPath
    hostPath: /etc/kubernetes/azure.json
{{- end -}}

{{- /* Keys with no meaning here, and why: listed in NOTES when set. */ -}}
{{- define "podidentity.legacy.ignored" -}}
image.repository: "the registry path of MIC's and NMI's images; podidentity's images are <image.registry>/<component>:<tag> (mirror them and set image.registry)"
installMICException: "no NMI intercepts the assigner's or AKS add-ons' IMDS calls: the webhook never injects the release namespace or kube-system"
installCRDs: "helm installs the chart's crds/ on first install (chart README, Upgrading the CRDs)"
customUserAgent: "podidentity has no user-agent setting"
rbac.enabled: "the chart always creates its least-privilege RBAC (chart README, RBAC)"
rbac.allowAccessToSecrets: "no podidentity component reads identity Secrets through the API server: the sidecar mounts the Secret, which must be in the pod's namespace"
rbac.pspEnabled: "PodSecurityPolicy was removed in Kubernetes 1.25 (chart README, Pod Security)"
mic.image: "MIC's image; the assigner's is <image.registry>/<assigner.repository>"
mic.tag: "MIC's image tag; the assigner's is assigner.tag or image.tag"
mic.topologySpreadConstraints: "MIC's constraints select MIC's pods by MIC's labels: write assigner.topologySpreadConstraints (a constraint without labelSelector gets the assigner's)"
mic.leaderElection.instance: "the leader election identity is the pod's name"
mic.leaderElection.duration: "the Lease durations are controller-runtime's"
mic.probePort: "the assigner's /healthz and /readyz are on port 8081"
mic.prometheusPort: "the assigner's /metrics is on port 8080 (its Service's port metrics)"
mic.syncRetryDuration: "the assigner reads each VM and scale set in use back every --resync (10m; assigner.extraArgs) and repairs drift"
mic.identityAssignmentReconcileInterval: "the assigner reads each VM and scale set in use back every --resync (10m; assigner.extraArgs) and repairs drift"
mic.createDeleteBatch: "no batches: one work item per VM or scale set, --workers in parallel"
mic.clientQps: "the assigner's API server rate limit is --kube-api-qps/--kube-api-burst (assigner.extraArgs)"
mic.updateUserMSIMaxRetry: "ARM calls retry in the SDK with per-resource backoff; an identity ARM rejects is left out for --isolation-ttl"
mic.updateUserMSIRetryInterval: "ARM calls retry in the SDK with per-resource backoff; an identity ARM rejects is left out for --isolation-ttl"
mic.customCloud.configPath: "the assigner does not read AZURE_ENVIRONMENT_FILEPATH: give --arm-endpoint, --arm-audience and --aad-authority in assigner.extraArgs"
nmi.image: "NMI's image; there is no node agent: the webhook injects podidentity-init and podidentity-sidecar into opted-in pods"
nmi.tag: "NMI's image tag; the injected images are sidecar.tag/init.tag or image.tag"
nmi.priorityClassName: "no NMI DaemonSet: the token sidecar runs inside each opted-in pod, with that pod's priority"
nmi.loggingFormat: "the sidecar always logs JSON lines (its verbosity: sidecar.logLevel)"
nmi.resources: "NMI's resources were per node, the sidecar's are per pod: size it with sidecar.resources"
nmi.updateStrategy: "no NMI DaemonSet to roll: the sidecar is updated with each pod"
nmi.podAnnotations: "no NMI DaemonSet: the token sidecar runs inside each opted-in pod"
nmi.podLabels: "no NMI DaemonSet: the token sidecar runs inside each opted-in pod"
nmi.nodeSelector: "no NMI DaemonSet: the token sidecar runs inside each opted-in pod (CNI mode's node agent must run on every node: cni.nodeSelector)"
nmi.tolerations: "no NMI DaemonSet: the token sidecar runs inside each opted-in pod (CNI mode's node agent: cni.tolerations)"
nmi.affinity: "no NMI DaemonSet: the token sidecar runs inside each opted-in pod"
nmi.ipTableUpdateTimeIntervalInSeconds: "the redirect is installed once in each pod's own network namespace; nothing on the node to keep in sync"
nmi.micNamespace: "the assigner never asks the sidecar for tokens"
nmi.probePort: "the sidecar serves /healthz and /readyz on sidecar.healthPort"
nmi.prometheusPort: "the sidecar serves /metrics on sidecar.healthPort"
nmi.retryAttemptsForCreated: "the sidecar waits for the identity to be attached, then answers 503 with Retry-After"
nmi.retryAttemptsForAssigned: "the sidecar waits for the identity to be attached, then answers 503 with Retry-After"
nmi.findIdentityRetryIntervalInSeconds: "the sidecar waits for the identity to be attached, then answers 503 with Retry-After"
nmi.enableScaleFeatures: "nothing to scale: the sidecar serves its own pod and watches nothing"
nmi.allowNetworkPluginKubenet: "the sidecar does not identify pods by source IP, so kubenet is no concern"
nmi.kubeletConfig: "the sidecar does not identify pods by source IP"
nmi.setRetryAfterHeader: "the sidecar always sends Retry-After with its 503"
nmi.enableConntrackDeletion: "the redirect is in place before the pod's app containers start: no earlier connection to IMDS exists"
{{- end -}}

{{- /* "true", "false" or "" (unset) for a value of AAD Pod Identity's chart that is a bool or a string. */ -}}
{{- define "podidentity.legacy.bool" -}}
{{- if kindIs "bool" . }}{{ . }}{{ else if kindIs "string" . }}{{ lower . }}{{ end -}}
{{- end -}}

{{- define "podidentity.legacy" -}}
{{- $v := .Values -}}
{{- if not (hasKey $v "_aadPodIdentity") -}}
{{- $d := include "podidentity.legacy.defaults" . | fromYaml -}}
{{- $mapped := list -}}
{{- $ignored := list -}}
{{- $empty := list -}}
{{- $warnings := list -}}
{{- $adminData := dict -}}
{{- $a := $v.assigner -}}
{{- $mic := $v.mic | default dict -}}
{{- $nmi := $v.nmi | default dict -}}
{{- $argNames := list -}}
{{- range ($a.extraArgs | default list) }}{{ $argNames = append $argNames (regexReplaceAll "=.*$" . "") }}{{ end -}}

{{- /* image.imagePullPolicy -> image.pullPolicy */ -}}
{{- if hasKey $v.image "imagePullPolicy" -}}
{{- if ne $v.image.pullPolicy $d.image.pullPolicy -}}
{{- $ignored = append $ignored (printf "image.imagePullPolicy: image.pullPolicy=%s is set and wins" $v.image.pullPolicy) -}}
{{- else -}}
{{- $_ := set $v.image "pullPolicy" $v.image.imagePullPolicy -}}
{{- $mapped = append $mapped (printf "image.imagePullPolicy: %s -> image.pullPolicy (the webhook, the assigner and the injected containers)" $v.image.imagePullPolicy) -}}
{{- end -}}
{{- end -}}

{{- /* forceNamespaced as AAD Pod Identity's string, forceNameSpaced (3.0.0's deprecated spelling) */ -}}
{{- $force := false -}}
{{- if kindIs "string" $v.forceNamespaced -}}
{{- $force = eq (lower $v.forceNamespaced) "true" -}}
{{- $mapped = append $mapped (printf "forceNamespaced: %q (a string) -> forceNamespaced=%t (webhook and assigner)" $v.forceNamespaced $force) -}}
{{- else -}}
{{- $force = $v.forceNamespaced | default false -}}
{{- end -}}
{{- if hasKey $v "forceNameSpaced" -}}
{{- $old := include "podidentity.legacy.bool" $v.forceNameSpaced -}}
{{- if eq $old "" -}}
{{- $empty = append $empty "forceNameSpaced" -}}
{{- else -}}
{{- $force = or $force (eq $old "true") -}}
{{- $mapped = append $mapped (printf "forceNameSpaced: %s (chart 3.0.0's deprecated spelling) -> forceNamespaced=%t" $old $force) -}}
{{- end -}}
{{- end -}}

{{- /* operationMode -> assigner.managedMode; AAD Pod Identity's NMI always ran namespaced in managed mode */ -}}
{{- if hasKey $v "operationMode" -}}
{{- if eq $v.operationMode "managed" -}}
{{- $_ := set $a "managedMode" true -}}
{{- if $force -}}
{{- $mapped = append $mapped "operationMode: managed -> assigner.managedMode=true (the assigner never calls ARM)" -}}
{{- else -}}
{{- $force = true -}}
{{- $mapped = append $mapped "operationMode: managed -> assigner.managedMode=true (the assigner never calls ARM) and forceNamespaced=true (NMI ran namespaced in managed mode)" -}}
{{- end -}}
{{- else if $a.managedMode -}}
{{- $ignored = append $ignored "operationMode: standard: assigner.managedMode=true is set and wins" -}}
{{- else -}}
{{- $mapped = append $mapped "operationMode: standard -> assigner.managedMode=false (the assigner attaches identities through ARM, as MIC did)" -}}
{{- end -}}
{{- end -}}
{{- $_ := set $v "forceNamespaced" $force -}}

{{- /* mic.replicas -> assigner.replicas */ -}}
{{- if hasKey $mic "replicas" -}}
{{- $r := int $mic.replicas -}}
{{- if ne (int $a.replicas) (int $d.assigner.replicas) -}}
{{- $ignored = append $ignored (printf "mic.replicas: assigner.replicas=%d is set and wins" (int $a.replicas)) -}}
{{- else if and (gt $r 1) (not $a.leaderElection) -}}
{{- $ignored = append $ignored (printf "mic.replicas: %d replicas need assigner.leaderElection=true; the assigner keeps %d" $r (int $a.replicas)) -}}
{{- else -}}
{{- $_ := set $a "replicas" $r -}}
{{- $mapped = append $mapped (printf "mic.replicas: %d -> assigner.replicas (only the elected replica acts)" $r) -}}
{{- end -}}
{{- end -}}

{{- /* mic.resources -> assigner.resources (over the defaults, so a partial map keeps the rest) */ -}}
{{- if hasKey $mic "resources" -}}
{{- if empty $mic.resources -}}
{{- $empty = append $empty "mic.resources" -}}
{{- else if ne (toYaml $a.resources) (toYaml $d.assigner.resources) -}}
{{- $ignored = append $ignored "mic.resources: assigner.resources is set and wins" -}}
{{- else -}}
{{- $_ := set $a "resources" (mergeOverwrite (deepCopy $a.resources) (deepCopy $mic.resources)) -}}
{{- $mapped = append $mapped (printf "mic.resources -> assigner.resources %s" (toJson $a.resources)) -}}
{{- end -}}
{{- end -}}

{{- /* mic.podAnnotations -> assigner.podAnnotations (merged; this chart's win) */ -}}
{{- if hasKey $mic "podAnnotations" -}}
{{- if empty $mic.podAnnotations -}}
{{- $empty = append $empty "mic.podAnnotations" -}}
{{- else -}}
{{- $_ := set $a "podAnnotations" (merge (deepCopy ($a.podAnnotations | default dict)) $mic.podAnnotations) -}}
{{- $mapped = append $mapped (printf "mic.podAnnotations -> assigner.podAnnotations %s" (toJson $a.podAnnotations)) -}}
{{- end -}}
{{- end -}}

{{- /* mic.nodeSelector, mic.tolerations, mic.priorityClassName -> the assigner's */ -}}
{{- if hasKey $mic "nodeSelector" -}}
{{- if empty $mic.nodeSelector -}}
{{- $empty = append $empty "mic.nodeSelector" -}}
{{- else if ne (toYaml $a.nodeSelector) (toYaml $d.assigner.nodeSelector) -}}
{{- $ignored = append $ignored "mic.nodeSelector: assigner.nodeSelector is set and wins" -}}
{{- else -}}
{{- $_ := set $a "nodeSelector" $mic.nodeSelector -}}
{{- $mapped = append $mapped (printf "mic.nodeSelector -> assigner.nodeSelector %s" (toJson $mic.nodeSelector)) -}}
{{- end -}}
{{- end -}}
{{- if hasKey $mic "tolerations" -}}
{{- if empty $mic.tolerations -}}
{{- $empty = append $empty "mic.tolerations" -}}
{{- else if not (empty $a.tolerations) -}}
{{- $ignored = append $ignored "mic.tolerations: assigner.tolerations is set and wins" -}}
{{- else -}}
{{- $_ := set $a "tolerations" $mic.tolerations -}}
{{- $mapped = append $mapped (printf "mic.tolerations -> assigner.tolerations %s" (toJson $mic.tolerations)) -}}
{{- end -}}
{{- end -}}
{{- if hasKey $mic "priorityClassName" -}}
{{- if empty $mic.priorityClassName -}}
{{- $empty = append $empty "mic.priorityClassName" -}}
{{- else if ne $a.priorityClassName $d.assigner.priorityClassName -}}
{{- $ignored = append $ignored (printf "mic.priorityClassName: assigner.priorityClassName=%q is set and wins" $a.priorityClassName) -}}
{{- else -}}
{{- $_ := set $a "priorityClassName" $mic.priorityClassName -}}
{{- $mapped = append $mapped (printf "mic.priorityClassName: %s -> assigner.priorityClassName" $mic.priorityClassName) -}}
{{- end -}}
{{- end -}}

{{- /* mic.leaderElection.namespace/name -> assigner.aadPodIdentityMICLock: where the assigner looks for a
MIC that still runs (it holds while MIC does). */ -}}
{{- $le := $mic.leaderElection | default dict -}}
{{- range $k := list "namespace" "name" -}}
{{- if and (hasKey $le $k) (empty (get $le $k)) -}}
{{- $empty = append $empty (printf "mic.leaderElection.%s" $k) -}}
{{- end -}}
{{- end -}}
{{- if or $le.namespace $le.name -}}
{{- $lock := printf "%s/%s" ($le.namespace | default "default") ($le.name | default "aad-pod-identity-mic") -}}
{{- if ne $a.aadPodIdentityMICLock $d.assigner.aadPodIdentityMICLock -}}
{{- $ignored = append $ignored (printf "mic.leaderElection.namespace, mic.leaderElection.name: assigner.aadPodIdentityMICLock=%q is set and wins" $a.aadPodIdentityMICLock) -}}
{{- else -}}
{{- $_ := set $a "aadPodIdentityMICLock" $lock -}}
{{- $mapped = append $mapped (printf "mic.leaderElection.namespace, mic.leaderElection.name -> assigner.aadPodIdentityMICLock=%s (the assigner changes nothing while MIC holds that record)" $lock) -}}
{{- end -}}
{{- end -}}

{{- /* mic.immutableUserMSIs -> assigner.immutableUserMSIs (both lists are kept) */ -}}
{{- if hasKey $mic "immutableUserMSIs" -}}
{{- if empty $mic.immutableUserMSIs -}}
{{- $empty = append $empty "mic.immutableUserMSIs" -}}
{{- else -}}
{{- $_ := set $a "immutableUserMSIs" (concat ($a.immutableUserMSIs | default list) $mic.immutableUserMSIs | uniq) -}}
{{- $mapped = append $mapped (printf "mic.immutableUserMSIs -> assigner.immutableUserMSIs (--immutable-user-msis=%s)" (join "," $a.immutableUserMSIs)) -}}
{{- end -}}
{{- end -}}

{{- /* mic.logVerbosity, mic.loggingFormat -> assigner.logLevel, assigner.logFormat (the zap flags), unless they
are set or assigner.extraArgs gives the flags */ -}}
{{- if hasKey $mic "logVerbosity" -}}
{{- $lv := int $mic.logVerbosity -}}
{{- if eq $lv 0 -}}
{{- $empty = append $empty "mic.logVerbosity" -}}
{{- else if has "--zap-log-level" $argNames -}}
{{- $ignored = append $ignored "mic.logVerbosity: assigner.extraArgs gives --zap-log-level and wins" -}}
{{- else if ne (toString $a.logLevel) (toString $d.assigner.logLevel) -}}
{{- $ignored = append $ignored (printf "mic.logVerbosity: assigner.logLevel=%v is set and wins" $a.logLevel) -}}
{{- else -}}
{{- $_ := set $a "logLevel" $lv -}}
{{- $mapped = append $mapped (printf "mic.logVerbosity: %d -> assigner.logLevel=%d (--zap-log-level=%d; klog's -v)" $lv $lv $lv) -}}
{{- end -}}
{{- end -}}
{{- if hasKey $mic "loggingFormat" -}}
{{- $enc := ternary "json" "console" (eq $mic.loggingFormat "json") -}}
{{- if empty $mic.loggingFormat -}}
{{- $empty = append $empty "mic.loggingFormat" -}}
{{- else if has "--zap-encoder" $argNames -}}
{{- $ignored = append $ignored "mic.loggingFormat: assigner.extraArgs gives --zap-encoder and wins" -}}
{{- else if and (ne $a.logFormat $d.assigner.logFormat) (ne $a.logFormat $enc) -}}
{{- $ignored = append $ignored (printf "mic.loggingFormat: assigner.logFormat=%s is set and wins" $a.logFormat) -}}
{{- else -}}
{{- $_ := set $a "logFormat" $enc -}}
{{- $mapped = append $mapped (printf "mic.loggingFormat: %s -> assigner.logFormat=%s (--zap-encoder=%s)" $mic.loggingFormat $enc $enc) -}}
{{- end -}}
{{- end -}}

{{- /* mic.podLabels -> assigner.podLabels (merged, this chart's win; labels the chart sets itself are left out) */ -}}
{{- if hasKey $mic "podLabels" -}}
{{- if empty $mic.podLabels -}}
{{- $empty = append $empty "mic.podLabels" -}}
{{- else -}}
{{- $own := list "app.kubernetes.io/name" "app.kubernetes.io/instance" "app.kubernetes.io/part-of" "app.kubernetes.io/managed-by" "app.kubernetes.io/version" "helm.sh/chart" "azure.workload.identity/use" -}}
{{- $labels := dict -}}
{{- range $k, $val := $mic.podLabels -}}
{{- if has $k $own }}{{ $ignored = append $ignored (printf "mic.podLabels: %s: the chart sets that label itself" $k) }}{{ else }}{{ $_ := set $labels $k $val }}{{ end -}}
{{- end -}}
{{- with $labels -}}
{{- $_ := set $a "podLabels" (merge (deepCopy ($a.podLabels | default dict)) .) -}}
{{- $mapped = append $mapped (printf "mic.podLabels -> assigner.podLabels %s" (toJson $a.podLabels)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- /* mic.affinity: its nodeAffinity -> assigner.affinity; its pod (anti-)affinity terms select MIC's pods */ -}}
{{- if hasKey $mic "affinity" -}}
{{- $aff := $mic.affinity | default dict -}}
{{- $podTerms := list -}}
{{- range $k, $val := omit $aff "nodeAffinity" }}{{ if $val }}{{ $podTerms = append $podTerms $k }}{{ end }}{{ end -}}
{{- if and (empty $aff.nodeAffinity) (empty $podTerms) -}}
{{- $empty = append $empty "mic.affinity" -}}
{{- else -}}
{{- with $aff.nodeAffinity -}}
{{- if hasKey ($a.affinity | default dict) "nodeAffinity" -}}
{{- $ignored = append $ignored "mic.affinity: assigner.affinity.nodeAffinity is set and wins" -}}
{{- else -}}
{{- $_ := set $a "affinity" (merge (dict "nodeAffinity" .) ($a.affinity | default dict)) -}}
{{- $mapped = append $mapped (printf "mic.affinity: nodeAffinity -> assigner.affinity.nodeAffinity %s" (toJson .)) -}}
{{- end -}}
{{- end -}}
{{- with $podTerms -}}
{{- $ignored = append $ignored (printf "mic.affinity: %s: MIC's terms select MIC's pods by MIC's labels; the assigner spreads its replicas by assigner.antiAffinity (or write assigner.affinity)" (sortAlpha . | join ", ")) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- /* mic.podDisruptionBudget.minAvailable -> assigner.podDisruptionBudget.minAvailable */ -}}
{{- if hasKey $mic "podDisruptionBudget" -}}
{{- $pdb := $mic.podDisruptionBudget | default dict -}}
{{- if empty $pdb -}}
{{- $empty = append $empty "mic.podDisruptionBudget" -}}
{{- else -}}
{{- if hasKey $pdb "minAvailable" -}}
{{- if ne (toYaml $a.podDisruptionBudget) (toYaml $d.assigner.podDisruptionBudget) -}}
{{- $ignored = append $ignored "mic.podDisruptionBudget: assigner.podDisruptionBudget is set and wins" -}}
{{- else -}}
{{- $_ := set $a "podDisruptionBudget" (dict "enabled" true "minAvailable" $pdb.minAvailable) -}}
{{- $mapped = append $mapped (printf "mic.podDisruptionBudget: minAvailable %v -> assigner.podDisruptionBudget.minAvailable (rendered with 2 or more replicas)" $pdb.minAvailable) -}}
{{- end -}}
{{- end -}}
{{- with omit $pdb "minAvailable" -}}
{{- $ignored = append $ignored (printf "mic.podDisruptionBudget: %s: the assigner's budget takes minAvailable (assigner.podDisruptionBudget)" (keys . | sortAlpha | join ", ")) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- /* nmi.logVerbosity -> sidecar.logLevel (the sidecar's --v, webhook --sidecar-log-verbosity) */ -}}
{{- if hasKey $nmi "logVerbosity" -}}
{{- $lv := int $nmi.logVerbosity -}}
{{- if eq $lv 0 -}}
{{- $empty = append $empty "nmi.logVerbosity" -}}
{{- else if ne (toString $v.sidecar.logLevel) (toString $d.sidecar.logLevel) -}}
{{- $ignored = append $ignored (printf "nmi.logVerbosity: sidecar.logLevel=%v is set and wins" $v.sidecar.logLevel) -}}
{{- else -}}
{{- $_ := set $v.sidecar "logLevel" $lv -}}
{{- $mapped = append $mapped (printf "nmi.logVerbosity: %d -> sidecar.logLevel=%d (the sidecar's --v; 1 and more also log refused token requests)" $lv $lv) -}}
{{- end -}}
{{- end -}}

{{- /* rbac.createUserFacingClusterRoles -> rbac.userFacingClusterRoles */ -}}
{{- $rbac := $v.rbac | default dict -}}
{{- if hasKey $rbac "createUserFacingClusterRoles" -}}
{{- $b := include "podidentity.legacy.bool" $rbac.createUserFacingClusterRoles -}}
{{- if eq $b "" -}}
{{- $empty = append $empty "rbac.createUserFacingClusterRoles" -}}
{{- else if ne (toString $rbac.userFacingClusterRoles) (toString $d.rbac.userFacingClusterRoles) -}}
{{- $ignored = append $ignored (printf "rbac.createUserFacingClusterRoles: rbac.userFacingClusterRoles=%v is set and wins" $rbac.userFacingClusterRoles) -}}
{{- else -}}
{{- $_ := set $rbac "userFacingClusterRoles" (eq $b "true") -}}
{{- $mapped = append $mapped (printf "rbac.createUserFacingClusterRoles: %s -> rbac.userFacingClusterRoles (%s-view and %s-edit, aggregated into view, edit and admin; AAD Pod Identity's go with its release)" $b (include "podidentity.fullname" .) (include "podidentity.fullname" .)) -}}
{{- end -}}
{{- end -}}

{{- /* mic.customCloud.enabled: refused, unless the assigner is given the custom cloud's endpoints */ -}}
{{- $cc := $mic.customCloud | default dict -}}
{{- if hasKey $cc "enabled" -}}
{{- if ne (include "podidentity.legacy.bool" $cc.enabled) "true" -}}
{{- $empty = append $empty "mic.customCloud.enabled" -}}
{{- else if has "--arm-endpoint" $argNames -}}
{{- $ignored = append $ignored "mic.customCloud.enabled: assigner.extraArgs gives --arm-endpoint, which replaces AZURE_ENVIRONMENT_FILEPATH" -}}
{{- else -}}
{{- fail (printf "mic.customCloud.enabled=true (AAD Pod Identity chart): podidentity's assigner does not read the custom cloud file %s (AZURE_ENVIRONMENT_FILEPATH), so it would call the public cloud's ARM. Give the custom cloud's endpoints as assigner.extraArgs (--arm-endpoint=<Resource Manager URL>, --arm-audience=<its token audience>, --aad-authority=<Azure AD authority host>; docs/reference.md), or set mic.customCloud.enabled=false" ($cc.configPath | default "/etc/kubernetes/akscustom.json")) -}}
{{- end -}}
{{- end -}}

{{- /* adminsecret -> a Secret with AZURE_* variables for the assigner (azure.json is then not used, as MIC did) */ -}}
{{- $adminUsed := false -}}
{{- if hasKey $v "adminsecret" -}}
{{- $as := $v.adminsecret -}}
{{- $cred := $a.credentials -}}
{{- if empty $as -}}
{{- $empty = append $empty "adminsecret" -}}
{{- else if or (ne $cred.azureJSON $d.assigner.credentials.azureJSON) $cred.workloadIdentity.enabled -}}
{{- $ignored = append $ignored (printf "adminsecret: assigner.credentials is set (azureJSON=%s, workloadIdentity.enabled=%v) and wins" $cred.azureJSON $cred.workloadIdentity.enabled) -}}
{{- else -}}
{{- $msi := eq (include "podidentity.legacy.bool" $as.useMSI) "true" -}}
{{- if $msi -}}
{{- with $as.userAssignedMSIClientID }}{{ $_ := set $adminData "AZURE_CLIENT_ID" . }}{{ end -}}
{{- $mapped = append $mapped (printf "adminsecret.useMSI, adminsecret.userAssignedMSIClientID -> the assigner uses the node's managed identity%s (AZURE_CLIENT_ID from the Secret %s-adminsecret); assigner.credentials.azureJSON=none" (ternary (printf " %s" ($as.userAssignedMSIClientID | default "")) " (system-assigned)" (not (empty $as.userAssignedMSIClientID))) (include "podidentity.assigner" .)) -}}
{{- range $k := list "tenantID" "clientID" "clientSecret" -}}
{{- if get $as $k }}{{ $ignored = append $ignored (printf "adminsecret.%s: not used with adminsecret.useMSI=true" $k) }}{{ else if hasKey $as $k }}{{ $empty = append $empty (printf "adminsecret.%s" $k) }}{{ end -}}
{{- end -}}
{{- else -}}
{{- if or (empty $as.tenantID) (empty $as.clientID) (empty $as.clientSecret) (eq (lower ($as.clientSecret | default "")) "msi") -}}
{{- fail "adminsecret (AAD Pod Identity chart): the assigner's service principal needs adminsecret.tenantID, adminsecret.clientID and adminsecret.clientSecret (not \"msi\"); for a managed identity set adminsecret.useMSI=true and adminsecret.userAssignedMSIClientID, or remove adminsecret to use azure.json (assigner.credentials)" -}}
{{- end -}}
{{- $_ := set $adminData "AZURE_TENANT_ID" $as.tenantID -}}
{{- $_ := set $adminData "AZURE_CLIENT_ID" $as.clientID -}}
{{- $_ := set $adminData "AZURE_CLIENT_SECRET" $as.clientSecret -}}
{{- $mapped = append $mapped (printf "adminsecret.tenantID, adminsecret.clientID, adminsecret.clientSecret -> the Secret %s-adminsecret, read by the assigner as AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET; assigner.credentials.azureJSON=none" (include "podidentity.assigner" .)) -}}
{{- if hasKey $as "useMSI" }}{{ $empty = append $empty "adminsecret.useMSI" }}{{ end -}}
{{- if $as.userAssignedMSIClientID }}{{ $ignored = append $ignored "adminsecret.userAssignedMSIClientID: not used without adminsecret.useMSI=true" }}{{ else if hasKey $as "userAssignedMSIClientID" }}{{ $empty = append $empty "adminsecret.userAssignedMSIClientID" }}{{ end -}}
{{- end -}}
{{- if and (hasKey $as "cloud") (empty $as.cloud) }}{{ $empty = append $empty "adminsecret.cloud" }}{{ end -}}
{{- with $as.cloud -}}
{{- $clouds := dict "azurepubliccloud" "AzurePublicCloud" "azurechinacloud" "AzureChinaCloud" "azureusgovernmentcloud" "AzureUSGovernmentCloud" -}}
{{- $c := get $clouds (lower .) -}}
{{- if ne $a.cloud $d.assigner.cloud -}}
{{- $ignored = append $ignored (printf "adminsecret.cloud: assigner.cloud=%s is set and wins" $a.cloud) -}}
{{- else if $c -}}
{{- $_ := set $a "cloud" $c -}}
{{- $mapped = append $mapped (printf "adminsecret.cloud: %s -> assigner.cloud=%s" . $c) -}}
{{- else if has "--arm-endpoint" $argNames -}}
{{- $ignored = append $ignored (printf "adminsecret.cloud: %s: assigner.extraArgs gives --arm-endpoint" .) -}}
{{- else -}}
{{- fail (printf "adminsecret.cloud=%s (AAD Pod Identity chart): the assigner knows AzurePublicCloud, AzureChinaCloud and AzureUSGovernmentCloud. For another cloud (Azure Stack Hub) give its endpoints as assigner.extraArgs (--arm-endpoint, --arm-audience, --aad-authority; docs/reference.md); then set adminsecret.cloud to \"\" or remove it" .) -}}
{{- end -}}
{{- end -}}
{{- range $k := list "subscriptionID" "resourceGroup" "vmType" -}}
{{- if and (hasKey $as $k) (empty (get $as $k)) -}}
{{- $empty = append $empty (printf "adminsecret.%s" $k) -}}
{{- else if get $as $k -}}
{{- $ignored = append $ignored (printf "adminsecret.%s: the assigner finds each node's VM or scale set (subscription, resource group, type) from the node's providerID" $k) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $cred "azureJSON" "none" -}}
{{- $env := $a.extraEnv | default list -}}
{{- range $k := keys $adminData | sortAlpha -}}
{{- $env = append $env (dict "name" $k "valueFrom" (dict "secretKeyRef" (dict "name" (printf "%s-adminsecret" (include "podidentity.assigner" $)) "key" $k))) -}}
{{- end -}}
{{- $_ := set $a "extraEnv" $env -}}
{{- $adminUsed = true -}}
{{- end -}}
{{- end -}}

{{- /* mic.cloudConfig -> assigner.credentials.hostPath */ -}}
{{- if hasKey $mic "cloudConfig" -}}
{{- $cred := $a.credentials -}}
{{- if empty $mic.cloudConfig -}}
{{- $empty = append $empty "mic.cloudConfig" -}}
{{- else if $adminUsed -}}
{{- $ignored = append $ignored "mic.cloudConfig: adminsecret is used instead, as AAD Pod Identity's MIC did" -}}
{{- else if ne $cred.azureJSON "hostPath" -}}
{{- $ignored = append $ignored (printf "mic.cloudConfig: assigner.credentials.azureJSON=%s is set and wins" $cred.azureJSON) -}}
{{- else if and (ne $cred.hostPath $d.assigner.credentials.hostPath) (ne $cred.hostPath $mic.cloudConfig) -}}
{{- $ignored = append $ignored (printf "mic.cloudConfig: assigner.credentials.hostPath=%s is set and wins" $cred.hostPath) -}}
{{- else -}}
{{- $_ := set $cred "hostPath" $mic.cloudConfig -}}
{{- $mapped = append $mapped (printf "mic.cloudConfig: %s -> assigner.credentials.hostPath (the node's azure.json; MIC ran as root to read it, the assigner gets a copy from its init container stage-azure-json and runs as uid %d)" $mic.cloudConfig (int $a.runAsUser)) -}}
{{- end -}}
{{- end -}}

{{- /* nmi.metadataHeaderRequired, nmi.blockInstanceMetadata -> the sidecar's (webhook flags) */ -}}
{{- range $k := list "metadataHeaderRequired" "blockInstanceMetadata" -}}
{{- if hasKey $nmi $k -}}
{{- $b := include "podidentity.legacy.bool" (get $nmi $k) -}}
{{- $ours := get $v.sidecar $k -}}
{{- if eq $b "" -}}
{{- $empty = append $empty (printf "nmi.%s" $k) -}}
{{- else if ne (toString $ours) (toString (get $d.sidecar $k)) -}}
{{- $ignored = append $ignored (printf "nmi.%s: sidecar.%s=%v is set and wins" $k $k $ours) -}}
{{- else -}}
{{- $_ := set $v.sidecar $k (eq $b "true") -}}
{{- $mapped = append $mapped (printf "nmi.%s: %s -> sidecar.%s (webhook --%s)" $k $b $k (ternary "metadata-header-required" "block-instance-metadata" (eq $k "metadataHeaderRequired"))) -}}
{{- if and (eq $k "metadataHeaderRequired") (eq $b "false") -}}
{{- $warnings = append $warnings "nmi.metadataHeaderRequired=false carried over: the sidecar serves token requests without the header \"Metadata: true\", which IMDS itself requires; a request forgery (SSRF) in an app can then obtain its tokens. Once your apps send the header, remove the key (sidecar.metadataHeaderRequired defaults to true)." -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- /* azureIdentities: chart 2.x's list, 4.x's name, the clientPassword JSON string; templates/identities.yaml */ -}}
{{- with $v.azureIdentities -}}
{{- $ids := . -}}
{{- $wasList := kindIs "slice" $ids -}}
{{- if $wasList -}}
{{- $ids = dict -}}
{{- range $i, $id := $v.azureIdentities }}{{ $_ := set $ids (printf "%03d" $i) $id }}{{ end -}}
{{- $mapped = append $mapped (printf "azureIdentities: a list (chart 2.x's form) of %d entries -> one AzureIdentity and binding per entry, named by its name" (len $v.azureIdentities)) -}}
{{- $_ := set $v "azureIdentities" $ids -}}
{{- end -}}
{{- range $key, $id := $ids -}}
{{- $label := ternary (printf "azureIdentities[%d]" (atoi $key)) (printf "azureIdentities.%s" $key) $wasList -}}
{{- with $id.name -}}
{{- $mapped = append $mapped (printf "%s.name: %s -> the AzureIdentity's name (chart 4.x)" $label .) -}}
{{- end -}}
{{- if kindIs "string" $id.clientPassword -}}
{{- if eq $id.clientPassword "" -}}
{{- $_ := unset $id "clientPassword" -}}
{{- else -}}
{{- $p := fromJson $id.clientPassword -}}
{{- if or (hasKey $p "Error") (not (kindIs "string" $p.name)) (empty $p.name) (not (kindIs "string" ($p.namespace | default ""))) (gt (len (omit $p "name" "namespace")) 0) -}}
{{- fail (printf "%s.clientPassword: %q is not the JSON string AAD Pod Identity's chart documented, {\"name\":\"<secret name>\",\"namespace\":\"<secret namespace>\"}: fix it, or give a map (clientPassword: {name: <secret name>, namespace: <secret namespace>})" $label $id.clientPassword) -}}
{{- end -}}
{{- $_ := set $id "clientPassword" (pick $p "name" "namespace") -}}
{{- $mapped = append $mapped (printf "%s.clientPassword: the JSON string -> spec.clientPassword %s" $label (toJson $id.clientPassword)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $mapped = append $mapped (printf "azureIdentities: %d AzureIdentity and AzureIdentityBinding pairs (templates/identities.yaml)" (len $ids)) -}}
{{- end -}}

{{- /* Everything else: no meaning here */ -}}
{{- range $path, $why := include "podidentity.legacy.ignored" . | fromYaml -}}
{{- $cur := $v -}}
{{- $found := true -}}
{{- range $k := splitList "." $path -}}
{{- if and $found (kindIs "map" $cur) (hasKey $cur $k) -}}
{{- $cur = get $cur $k -}}
{{- else -}}
{{- $found = false -}}
{{- end -}}
{{- end -}}
{{- if $found -}}
{{- /* "", {} and [] say nothing; false and 0 are an operator's choice and get their reason */ -}}
{{- if and (or (kindIs "string" $cur) (kindIs "map" $cur) (kindIs "slice" $cur)) (empty $cur) -}}
{{- $empty = append $empty $path -}}
{{- else -}}
{{- $ignored = append $ignored (printf "%s: %s" $path $why) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- $_ := set $v "_aadPodIdentity" (dict "mapped" $mapped "ignored" (sortAlpha $ignored) "empty" (sortAlpha $empty) "warnings" $warnings "adminSecret" $adminData) -}}
{{- end -}}
{{- end -}}
