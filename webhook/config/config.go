// Package config holds the webhook's command-line configuration: what it injects (inject.Settings) and how it
// serves. Defaults come from internal/contract, the contract shared with the init container and the sidecar.
package config

import (
	"errors"
	"flag"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/version"

	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/webhook/inject"
)

// Mode selects how the sidecar is injected.
type Mode string

const (
	// ModeAuto picks ModeNative on API servers 1.29 and newer (native sidecars on by default), else ModeClassic.
	ModeAuto Mode = "auto"
	// ModeNative injects the sidecar as an init container with restartPolicy Always.
	ModeNative Mode = "native"
	// ModeClassic appends the sidecar to the pod's containers, where it never exits: pods meant to finish
	// (restartPolicy Never or OnFailure: Jobs, CronJobs) are refused, as they would never complete.
	ModeClassic Mode = "classic"
)

// Config is the webhook's whole configuration.
type Config struct {
	Inject inject.Settings
	Mode   Mode

	// InjectionLabel is the namespace label whose value "enabled" opts a namespace in.
	InjectionLabel string

	// AssignerUsername is the only user allowed to change the identities annotation or the injected
	// containers of a running pod (the assigner's service account).
	AssignerUsername string

	// Serving.
	Port             int
	CertDir          string
	CertName         string
	KeyName          string
	MetricsAddress   string
	HealthAddress    string
	WebhookPath      string
	CacheSyncTimeout time.Duration
	// ShutdownDelay is how long a stopping replica keeps serving, closing each connection after its answer.
	ShutdownDelay time.Duration

	sidecarRes, initRes resourceFlags
	// Guard mode's pool, as typed (parsed into Inject.Placement by Complete).
	poolLabel, poolTaint string
}

// resourceFlags are the four quantities of one container, as typed on the command line.
type resourceFlags struct{ cpuRequest, memRequest, cpuLimit, memLimit string }

// Path is where the webhook serves pod admissions.
const Path = "/mutate-v1-pod"

// Bind registers the flags on fs and returns the configuration they fill; call Complete after fs.Parse.
func Bind(fs *flag.FlagSet) *Config {
	d := inject.DefaultSettings()
	c := &Config{Inject: d}
	s := &c.Inject
	fs.StringVar(&s.InitImage, "init-image", d.InitImage, "image of the injected podidentity-init container")
	fs.StringVar(&s.SidecarImage, "sidecar-image", d.SidecarImage, "image of the injected podidentity-sidecar container")
	fs.Func("image-pull-policy", "pull policy of the injected containers (Always, IfNotPresent, Never; default IfNotPresent)", func(v string) error {
		switch p := corev1.PullPolicy(v); p {
		case corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
			s.ImagePullPolicy = p
			return nil
		}
		return fmt.Errorf("%q: use Always, IfNotPresent or Never", v)
	})
	fs.Func("image-pull-secrets", "pull Secrets (type kubernetes.io/dockerconfigjson) for the injected images from a private registry: their names are appended to spec.imagePullSecrets of every pod the webhook injects (the pod's own are kept; none is added to pods it skips); comma-separated or repeated. Each Secret must exist in every opted-in namespace: a pod can use only Secrets of its own namespace", func(v string) error {
		names, err := parseImagePullSecrets(v)
		if err != nil {
			return err
		}
		for _, n := range names {
			if !slices.Contains(s.ImagePullSecrets, n) {
				s.ImagePullSecrets = append(s.ImagePullSecrets, n)
			}
		}
		return nil
	})
	int32Var(fs, &s.SidecarPort, "sidecar-port", d.SidecarPort, "loopback port of the sidecar's token endpoint (the init container redirects IMDS there)")
	int32Var(fs, &s.HealthPort, "sidecar-health-port", d.HealthPort, "sidecar port for /healthz, /readyz and /metrics (probed by the kubelet)")
	fs.Int64Var(&s.SidecarUID, "sidecar-uid", d.SidecarUID, "uid the sidecar serves as (with --sidecar-exemption=uid also the one uid exempt from the redirect, then refused for every other container)")
	fs.Func("sidecar-exemption", "how the sidecar's own IMDS traffic passes the redirect: cgroup (the sidecar exempts its own container's cgroup at start, then drops to --sidecar-uid with no capabilities; needs Linux 5.13+ and cgroup v2) or uid (exempt --sidecar-uid; any container able to become that uid bypasses the redirect, see --uid-change-policy) (default cgroup)", func(v string) error {
		e, err := inject.ParseExemption(v)
		if err != nil {
			return err
		}
		s.Exemption = e
		return nil
	})
	fs.StringVar(&s.IMDSAddress, "imds-address", d.IMDSAddress, "address of the instance metadata service the init container redirects")
	int32Var(fs, &s.IMDSPort, "imds-port", d.IMDSPort, "port of the instance metadata service")
	fs.BoolVar(&s.BlockInstanceMetadata, "block-instance-metadata", d.BlockInstanceMetadata, "passed to the sidecar: refuse /metadata/instance requests")
	fs.BoolVar(&s.MetadataHeaderRequired, "metadata-header-required", d.MetadataHeaderRequired, "passed to the sidecar: require the Metadata: true header")
	fs.IntVar(&s.SidecarLogVerbosity, "sidecar-log-verbosity", d.SidecarLogVerbosity, "passed to the sidecar as --v, its log verbosity: 0 logs starts, errors and every token issued or not issued; 1 also logs refused token requests (applies to pods created afterwards)")
	fs.StringVar(&s.SidecarAADAuthorityHost, "sidecar-aad-authority-host", d.SidecarAADAuthorityHost, "passed to the sidecar as --aad-authority-host: the Azure AD authority of service principals and federated identities that set no adEndpoint, e.g. https://login.microsoftonline.us/ (empty: Azure public cloud)")
	fs.BoolVar(&s.SidecarAADDisableInstanceDiscovery, "sidecar-aad-disable-instance-discovery", d.SidecarAADDisableInstanceDiscovery, "passed to the sidecar as --aad-disable-instance-discovery: skip Azure AD instance discovery (Azure Stack, an emulated Azure AD)")
	fs.StringVar(&s.SidecarCABundleConfigMap, "sidecar-ca-bundle-configmap", d.SidecarCABundleConfigMap, "ConfigMap (key ca.crt, in each opted-in namespace) of CA certificates the sidecar trusts instead of the system's for Azure AD (a private CA); mounted into the sidecar only, named by SSL_CERT_FILE (empty: the image's roots)")
	fs.BoolVar(&s.ForceNamespaced, "force-namespaced", false, "bind only identities and bindings of the pod's own namespace")
	fs.Func("redirect-mode", "who installs the redirect: init (a NET_ADMIN init container; opted-in namespaces need Pod Security privileged) or cni (the podidentity CNI plugin of the node, which also fences every other pod; the injected containers are unprivileged and pass Pod Security restricted) (default init)", func(v string) error {
		m, err := inject.ParseRedirectMode(v)
		if err != nil {
			return err
		}
		s.RedirectMode = m
		return nil
	})
	fs.Func("uid-change-policy", "with --sidecar-exemption=uid: what to do with a user container able to change its uid to --sidecar-uid (runs as root or holds CAP_SETUID) and so bypass the redirect: deny, warn (admit with a warning, a Warning Event and a metric) or ignore (default deny)", func(v string) error {
		p, err := inject.ParseUIDChangePolicy(v)
		if err != nil {
			return err
		}
		s.UIDChangePolicy = p
		return nil
	})
	fs.StringVar(&c.poolLabel, "identity-pool-label", "", "guard mode: node label key=value of the identity pool; pods with label aadpodidbinding get a nodeSelector for it (needs --identity-pool-taint; empty: off)")
	fs.StringVar(&c.poolTaint, "identity-pool-taint", "", "guard mode: taint key=value:NoExecute of the identity pool; pods with label aadpodidbinding get a toleration for it")
	c.Mode = ModeAuto
	fs.Func("mode", "sidecar injection mode: auto (by API server version), native (restartPolicy Always init container, Kubernetes 1.29+) or classic (an app container that never exits: pods with restartPolicy Never or OnFailure, such as Jobs' and CronJobs', are refused) (default auto)", func(v string) error {
		switch m := Mode(v); m {
		case ModeAuto, ModeNative, ModeClassic:
			c.Mode = m
			return nil
		}
		return fmt.Errorf("%q: use auto, native or classic", v)
	})
	c.sidecarRes = flagsOf(d.SidecarResources)
	c.initRes = flagsOf(d.InitResources)
	fs.StringVar(&c.sidecarRes.cpuRequest, "sidecar-cpu-request", c.sidecarRes.cpuRequest, "CPU request of the sidecar")
	fs.StringVar(&c.sidecarRes.memRequest, "sidecar-memory-request", c.sidecarRes.memRequest, "memory request of the sidecar")
	fs.StringVar(&c.sidecarRes.cpuLimit, "sidecar-cpu-limit", c.sidecarRes.cpuLimit, "CPU limit of the sidecar")
	fs.StringVar(&c.sidecarRes.memLimit, "sidecar-memory-limit", c.sidecarRes.memLimit, "memory limit of the sidecar")
	fs.StringVar(&c.initRes.cpuRequest, "init-cpu-request", c.initRes.cpuRequest, "CPU request of the init container")
	fs.StringVar(&c.initRes.memRequest, "init-memory-request", c.initRes.memRequest, "memory request of the init container")
	fs.StringVar(&c.initRes.cpuLimit, "init-cpu-limit", c.initRes.cpuLimit, "CPU limit of the init container")
	fs.StringVar(&c.initRes.memLimit, "init-memory-limit", c.initRes.memLimit, "memory limit of the init container")

	fs.StringVar(&c.InjectionLabel, "namespace-injection-label", contract.NamespaceInjectionLabel, "namespace label (value enabled) that opts a namespace in, as in the webhook configuration's namespaceSelector")
	fs.StringVar(&c.AssignerUsername, "assigner-username", "system:serviceaccount:podidentity-system:podidentity-assigner", "user allowed to update a pod's identities annotation (the assigner's service account)")
	fs.IntVar(&c.Port, "port", 9443, "HTTPS port of the webhook server")
	fs.StringVar(&c.CertDir, "cert-dir", "/tmp/k8s-webhook-server/serving-certs", "directory with the serving certificate and key; reloaded when they change")
	fs.StringVar(&c.CertName, "cert-name", "tls.crt", "certificate file name in --cert-dir")
	fs.StringVar(&c.KeyName, "key-name", "tls.key", "key file name in --cert-dir")
	fs.StringVar(&c.MetricsAddress, "metrics-bind-address", ":8080", "address of the Prometheus /metrics endpoint (0 disables it)")
	fs.StringVar(&c.HealthAddress, "health-probe-bind-address", ":8081", "address of /healthz and /readyz")
	fs.StringVar(&c.WebhookPath, "webhook-path", Path, "HTTP path of the pod admission webhook")
	fs.DurationVar(&c.CacheSyncTimeout, "cache-sync-timeout", 2*time.Minute, "how long to wait for the informer caches at start")
	fs.DurationVar(&c.ShutdownDelay, "shutdown-delay", 5*time.Second, "after SIGTERM, keep serving this long, closing each connection after its answer, so that the API server moves to the other replicas before the port closes (0: stop at once)")
	return c
}

// Complete parses the resource quantities and checks the values; errors say which flag to fix.
func (c *Config) Complete() error {
	var errs []error
	var err error
	if c.Inject.SidecarResources, err = c.sidecarRes.parse("sidecar"); err != nil {
		errs = append(errs, err)
	}
	if c.Inject.InitResources, err = c.initRes.parse("init"); err != nil {
		errs = append(errs, err)
	}
	if c.Inject.Placement, err = inject.ParsePlacement(c.poolLabel, c.poolTaint); err != nil {
		errs = append(errs, err)
	}
	if c.Inject.SidecarLogVerbosity < 0 {
		errs = append(errs, fmt.Errorf("--sidecar-log-verbosity=%d: use 0 (the default) or more; a negative verbosity would hide the sidecar's audit lines", c.Inject.SidecarLogVerbosity))
	}
	if c.Inject.SidecarUID <= 0 {
		errs = append(errs, fmt.Errorf("--sidecar-uid=%d: the sidecar must run as a non-root uid (> 0)", c.Inject.SidecarUID))
	}
	for name, p := range map[string]int32{"--sidecar-port": c.Inject.SidecarPort, "--sidecar-health-port": c.Inject.HealthPort, "--imds-port": c.Inject.IMDSPort} {
		if p <= 0 || p > 65535 {
			errs = append(errs, fmt.Errorf("%s=%d: use a port between 1 and 65535", name, p))
		}
	}
	if c.Inject.SidecarPort == c.Inject.HealthPort {
		errs = append(errs, fmt.Errorf("--sidecar-port and --sidecar-health-port are both %d; use two ports", c.Inject.SidecarPort))
	}
	if c.Inject.InitImage == "" || c.Inject.SidecarImage == "" {
		errs = append(errs, errors.New("--init-image and --sidecar-image must name images"))
	}
	if c.Inject.RedirectMode == inject.RedirectCNI && c.Inject.Exemption != inject.ExemptionCgroup {
		errs = append(errs, errors.New("--redirect-mode=cni exempts the sidecar by its cgroup (the node agent installs it): drop --sidecar-exemption=uid"))
	}
	if c.InjectionLabel == "" {
		errs = append(errs, errors.New("--namespace-injection-label must name the label that opts namespaces in (default "+contract.NamespaceInjectionLabel+")"))
	}
	if c.AssignerUsername == "" {
		errs = append(errs, errors.New("--assigner-username must name the assigner's user (system:serviceaccount:<namespace>:<name>)"))
	}
	if !strings.HasPrefix(c.WebhookPath, "/") {
		errs = append(errs, fmt.Errorf("--webhook-path=%q must start with /", c.WebhookPath))
	}
	return errors.Join(errs...)
}

// parseImagePullSecrets reads one --image-pull-secrets value: Secret names separated by commas, spaces around
// them ignored; "" names none. Each name is checked here, at start, because the API server accepts any string
// in a pod's imagePullSecrets and the kubelet would only report, pod by pod, a secret it cannot find.
func parseImagePullSecrets(v string) ([]string, error) {
	if strings.TrimSpace(v) == "" {
		return nil, nil
	}
	var names []string
	for _, n := range strings.Split(v, ",") {
		n = strings.TrimSpace(n)
		if n == "" {
			return nil, fmt.Errorf("%q has an empty name: give Secret names separated by single commas, e.g. acr-pull,mirror-pull", v)
		}
		if len(validation.IsDNS1123Subdomain(n)) > 0 {
			return nil, fmt.Errorf("%q is not a Secret name (a DNS-1123 subdomain: lower case letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters): give the pull Secrets' metadata.name, not a registry or a file", n)
		}
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	return names, nil
}

func flagsOf(r corev1.ResourceRequirements) resourceFlags {
	return resourceFlags{
		cpuRequest: r.Requests.Cpu().String(), memRequest: r.Requests.Memory().String(),
		cpuLimit: r.Limits.Cpu().String(), memLimit: r.Limits.Memory().String(),
	}
}

func (r resourceFlags) parse(container string) (corev1.ResourceRequirements, error) {
	q := map[string]string{"cpu-request": r.cpuRequest, "memory-request": r.memRequest, "cpu-limit": r.cpuLimit, "memory-limit": r.memLimit}
	parsed := map[string]resource.Quantity{}
	for k, v := range q {
		p, err := resource.ParseQuantity(v)
		if err != nil {
			return corev1.ResourceRequirements{}, fmt.Errorf("--%s-%s=%q is not a quantity (e.g. 10m, 64Mi): %w", container, k, v, err)
		}
		parsed[k] = p
	}
	for _, kind := range []string{"cpu", "memory"} {
		req, lim := parsed[kind+"-request"], parsed[kind+"-limit"]
		if req.Cmp(lim) > 0 {
			return corev1.ResourceRequirements{}, fmt.Errorf("--%s-%s-request exceeds --%s-%s-limit; lower the request or raise the limit", container, kind, container, kind)
		}
	}
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: parsed["cpu-request"], corev1.ResourceMemory: parsed["memory-request"]},
		Limits:   corev1.ResourceList{corev1.ResourceCPU: parsed["cpu-limit"], corev1.ResourceMemory: parsed["memory-limit"]},
	}, nil
}

// NativeSidecars decides the injection mode: native or classic are taken as given; auto is native on API
// servers 1.29 and newer, where native sidecars are enabled by default.
func NativeSidecars(m Mode, server *version.Info) (bool, error) {
	switch m {
	case ModeNative:
		return true, nil
	case ModeClassic:
		return false, nil
	}
	if server == nil {
		return false, errors.New("--mode=auto needs the API server version; pass --mode=native or --mode=classic")
	}
	major, err1 := strconv.Atoi(strings.TrimRight(server.Major, "+"))
	minor, err2 := strconv.Atoi(strings.TrimRight(server.Minor, "+"))
	if err1 != nil || err2 != nil {
		return false, fmt.Errorf("--mode=auto: cannot read API server version %q.%q; pass --mode=native or --mode=classic", server.Major, server.Minor)
	}
	return major > 1 || (major == 1 && minor >= 29), nil
}

func int32Var(fs *flag.FlagSet, p *int32, name string, def int32, usage string) {
	*p = def
	fs.Func(name, fmt.Sprintf("%s (default %d)", usage, def), func(v string) error {
		n, err := strconv.ParseInt(v, 10, 32)
		if err != nil {
			return fmt.Errorf("%q is not a number", v)
		}
		*p = int32(n)
		return nil
	})
}
