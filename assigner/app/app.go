// Package app wires the assigner's flags, credentials, manager and controllers together; main only calls Run.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/assigner/azure"
	"github.com/podidentity/podidentity/assigner/cachetrim"
	"github.com/podidentity/podidentity/assigner/config"
	"github.com/podidentity/podidentity/assigner/controller"
	"github.com/podidentity/podidentity/assigner/desired"
	"github.com/podidentity/podidentity/assigner/guard"
	"github.com/podidentity/podidentity/assigner/podaudit"
	"github.com/podidentity/podidentity/assigner/upgrade"
	"github.com/podidentity/podidentity/internal/binding"
	"github.com/podidentity/podidentity/internal/cmdline"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/internal/imdspolicy"
	"github.com/podidentity/podidentity/internal/version"
)

// Options are the command line (ParseFlags); Run runs them.
type Options struct {
	Kubeconfig               string
	MetricsAddr, ProbeAddr   string
	LeaderElect              bool
	LeaderElectionNamespace  string
	Namespace                string
	Immutable                string
	ForceNamespaced, Managed bool
	// FederatedOnly: every identity in use is federated; read no Azure credentials and never call ARM.
	FederatedOnly                    bool
	Workers                          int
	Resync, Debounce, IsolationTTL   time.Duration
	DetachGrace                      time.Duration
	PollFrequency                    time.Duration
	AzureConfig                      string
	CloudName, ARMEndpoint, Audience string
	AuthorityHost                    string
	UpgradeCRDFields                 bool
	UpgradeCRDFieldsOnly             bool
	KubeAPIQPS                       float64
	KubeAPIBurst                     int
	// AttachUninjected: attach identities for pods the webhook did not inject too (AAD Pod Identity's
	// behaviour, while its NMI still protects them during a migration).
	AttachUninjected bool
	// MICLock is namespace/name of AAD Pod Identity MIC's leader record; while MIC holds it nothing is done.
	MICLock string
	// StageAzureConfig: copy AzureConfig there (0440) and exit (the chart's init container, as root).
	StageAzureConfig string
	Guard            GuardFlags
	Zap              zap.Options
}

// GuardFlags configure guard mode (on when Pool is set).
type GuardFlags struct {
	Pool *desired.Pool
	// InjectionLabel (--namespace-injection-label) is not guard mode's only: with or without it, identities
	// are attached only for pods the webhook injected in namespaces carrying this label.
	InjectionLabel         string
	TrustedNamespaces      []string
	TrustedServiceAccounts []string
	AuditInterval          time.Duration
	// RedirectMode is the webhook's: in CNI mode the node's plugin fences un-injected pods, which the guard
	// audit then does not report. SidecarImage, CNIExemptNamespaces and CNIFenceScope are the plugin's.
	RedirectMode        string
	SidecarImage        string
	CNIExemptNamespaces []string
	CNIFenceScope       imdspolicy.Scope
}

func (g GuardFlags) rules() guard.Rules {
	r := guard.Rules{Pool: g.Pool, InjectionLabel: g.InjectionLabel, TrustedNamespaces: g.TrustedNamespaces, TrustedServiceAccounts: g.TrustedServiceAccounts}
	if g.RedirectMode == "cni" {
		r.CNI = &imdspolicy.Policy{InjectionLabel: g.InjectionLabel, SidecarImage: g.SidecarImage, ExemptNamespaces: g.CNIExemptNamespaces, Scope: g.CNIFenceScope}
	}
	return r
}

// ParseFlags parses args (without the program name).
func ParseFlags(args []string) (Options, error) {
	var f Options
	fs := flag.NewFlagSet("podidentity-assigner", flag.ContinueOnError)
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = "kube-system"
	}
	fs.StringVar(&f.Kubeconfig, "kubeconfig", "", "kubeconfig file; default: in-cluster config or $KUBECONFIG")
	fs.StringVar(&f.MetricsAddr, "metrics-bind-address", ":8080", "address of /metrics")
	fs.StringVar(&f.ProbeAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz")
	fs.BoolVar(&f.LeaderElect, "leader-elect", true, "elect a leader through a Lease so that only one replica acts")
	fs.StringVar(&f.LeaderElectionNamespace, "leader-election-namespace", ns, "namespace of the leader election Lease")
	fs.StringVar(&f.Namespace, "namespace", ns, "namespace of the assigner's bookkeeping ConfigMaps (default: $POD_NAMESPACE)")
	fs.StringVar(&f.Immutable, "immutable-user-msis", "", "comma-separated identities never removed from VMs and scale sets: client ids or resource ids (the cluster's own identity is added from azure.json)")
	fs.BoolVar(&f.ForceNamespaced, "forceNamespaced", false, "treat every AzureIdentity as namespaced (AAD Pod Identity's flag)")
	fs.BoolVar(&f.Managed, "managed", false, "managed mode: never call ARM; identities are attached by someone else")
	fs.BoolVar(&f.FederatedOnly, "federated-only", false, "every identity is federated (podidentity.io/backend: federated): read no Azure credentials (no azure.json, no AZURE_* variables) and never call ARM; pods bound to a node identity get a Warning Event NodeIdentityNotAttached and no AzureAssignedIdentity")
	fs.IntVar(&f.Workers, "workers", 100, "VMs and scale sets worked on at once (each slow PATCH holds one)")
	fs.DurationVar(&f.Resync, "resync", 10*time.Minute, "how often each resource in use is read back from ARM to repair drift")
	fs.DurationVar(&f.Debounce, "debounce", 500*time.Millisecond, "delay after an event so that bursts become one PATCH (not for what a starting assigner first lists)")
	fs.DurationVar(&f.IsolationTTL, "isolation-ttl", 5*time.Minute, "how long an identity ARM rejected is left out before it is tried again")
	fs.DurationVar(&f.DetachGrace, "detach-grace-period", controller.DefaultDetachGrace, "how long an identity stays attached after the AzureIdentity or AzureIdentityBinding that running pods use is deleted, so that a delete and re-create (a GitOps prune, kubectl replace) does not cut their tokens; 0 detaches at once")
	fs.DurationVar(&f.PollFrequency, "poll-frequency", 5*time.Second, "polling interval of ARM operations when ARM gives no Retry-After")
	fs.StringVar(&f.AzureConfig, "azure-config", "/etc/kubernetes/azure.json", "AKS's azure.json; empty to use AZURE_* environment variables only")
	fs.StringVar(&f.CloudName, "cloud", "", "cloud name (AzurePublicCloud, AzureChinaCloud, AzureUSGovernmentCloud); default: azure.json's, else public")
	fs.StringVar(&f.ARMEndpoint, "arm-endpoint", "", "custom cloud: Resource Manager endpoint")
	fs.StringVar(&f.Audience, "arm-audience", "", "custom cloud: Resource Manager token audience (default: the endpoint)")
	fs.StringVar(&f.AuthorityHost, "aad-authority", "", "custom cloud: Azure AD authority host")
	fs.BoolVar(&f.UpgradeCRDFields, "upgrade-crd-fields", true, "at start-up, rewrite pre-1.6 AAD Pod Identity objects (PascalCase fields) to camelCase once, recorded in the ConfigMap "+upgrade.ConfigMapName)
	fs.StringVar(&f.StageAzureConfig, "stage-azure-config", "", "one-shot: copy --azure-config to this file, readable by its owner and group (0440), and exit; the chart's init container runs it as root so that the assigner's non-root uid reads AKS's root-only azure.json through the pod's fsGroup")
	fs.BoolVar(&f.UpgradeCRDFieldsOnly, "upgrade-crd-fields-only", false, "one-shot: rewrite pre-1.6 objects (even if the ConfigMap says it was done), record it and exit; run it while the old CRDs are still installed (see README)")
	fs.Float64Var(&f.KubeAPIQPS, "kube-api-qps", controller.DefaultKubeAPIQPS, "queries per second to the Kubernetes API server (client-side limit; each pod bound to an identity costs about one write when its identities are attached; negative: no client-side limit)")
	fs.IntVar(&f.KubeAPIBurst, "kube-api-burst", controller.DefaultKubeAPIBurst, "burst of queries to the Kubernetes API server above --kube-api-qps")
	fs.BoolVar(&f.AttachUninjected, "attach-uninjected-pods", false, "attach identities also for bound pods the podidentity webhook did not inject (AAD Pod Identity's behaviour), "+
		"which can otherwise ask their node's IMDS directly for every identity attached to it: only while AAD Pod Identity's NMI still protects those pods during a migration")
	fs.StringVar(&f.MICLock, "aad-pod-identity-mic-lock", DefaultMICLock, "namespace/name of AAD Pod Identity MIC's leader election record (Endpoints or Lease): while MIC holds it the assigner changes nothing and is not ready; empty: no check")
	bindGuardFlags(fs, &f.Guard)
	f.Zap = zap.Options{}
	f.Zap.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		// -h exits 2 too (nothing ran), as the assigner always has.
		return Options{}, &cmdline.ExitError{Code: cmdline.ExitUsage, Err: err}
	}
	if errs := validation.IsQualifiedName(f.Guard.InjectionLabel); len(errs) > 0 {
		err := fmt.Errorf("--namespace-injection-label %q is not a label key (%s): give the label the webhook's namespaceSelector uses, by default %s",
			f.Guard.InjectionLabel, strings.Join(errs, "; "), contract.NamespaceInjectionLabel)
		fmt.Fprintln(fs.Output(), err)
		return Options{}, err
	}
	return f, nil
}

func bindGuardFlags(fs *flag.FlagSet, g *GuardFlags) {
	fs.Func("identity-pool-label", "guard mode: attach user-assigned identities only to VMs and scale sets whose nodes all carry this node label key=value (the identity pool), and audit the pool; empty: off", func(v string) error {
		p, err := desired.ParsePool(v)
		g.Pool = p
		return err
	})
	fs.StringVar(&g.InjectionLabel, "namespace-injection-label", contract.NamespaceInjectionLabel, "namespace label (value enabled) that opts namespaces in to injection, as in the webhook's namespaceSelector: identities are attached only for pods the webhook injected in such namespaces (see --attach-uninjected-pods), and guard mode's audit uses it too")
	g.TrustedNamespaces = []string{"kube-system"}
	fs.Func("guard-trusted-namespaces", "guard mode: comma-separated namespaces whose un-injected pods may run on the identity pool (system DaemonSets) (default kube-system)", func(v string) error {
		l, err := guard.ParseNamespaces(v)
		g.TrustedNamespaces = l
		return err
	})
	fs.Func("guard-trusted-service-accounts", "guard mode: comma-separated namespace/name service accounts whose un-injected pods may run on the identity pool", func(v string) error {
		l, err := guard.ParseServiceAccounts(v)
		g.TrustedServiceAccounts = l
		return err
	})
	fs.Func("redirect-mode", "the webhook's --redirect-mode (init or cni): in CNI mode the guard audit does not report pods the node's CNI plugin fences (default init)", func(v string) error {
		if v != "init" && v != "cni" {
			return fmt.Errorf("%q: use init or cni", v)
		}
		g.RedirectMode = v
		return nil
	})
	fs.StringVar(&g.SidecarImage, "sidecar-image", "", "CNI mode: the image the webhook injects as podidentity-sidecar (as the node agent's --sidecar-image)")
	fs.Func("cni-exempt-namespaces", "CNI mode: comma-separated namespaces whose pods the CNI plugin never fences (as the node agent's --exempt-namespaces)", func(v string) error {
		l, err := guard.ParseNamespaces(v)
		g.CNIExemptNamespaces = l
		return err
	})
	fs.Func("cni-fence-scope", "CNI mode: which pods the CNI plugin fences, all or opted-in (as the node agent's --fence-scope) (default all)", func(v string) error {
		sc, err := imdspolicy.ParseScope(v)
		g.CNIFenceScope = sc
		return err
	})
	fs.DurationVar(&g.AuditInterval, "guard-audit-interval", time.Minute, "guard mode: how often pods on nodes with identities are audited for untrusted, un-injected pods and bound pods outside the pool (also within 5s of a pod being created or scheduled); 0 disables the audit and its Events")
}

// Run runs the assigner until ctx ends.
func Run(ctx context.Context, f Options) error {
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&f.Zap)))
	log := ctrl.Log.WithName("assigner")
	log.Info("starting", "version", version.Version, "managed", f.Managed, "federatedOnly", f.FederatedOnly)
	if f.StageAzureConfig != "" {
		if err := config.StageAzureJSON(f.AzureConfig, f.StageAzureConfig); err != nil {
			return err
		}
		log.Info("azure.json staged", "from", f.AzureConfig, "to", f.StageAzureConfig)
		return nil
	}
	if f.UpgradeCRDFieldsOnly {
		return upgradeCRDFields(ctx, f, log, upgrade.Options{Force: true})
	}

	var arm azure.Client
	var cred azcore.TokenCredential
	var scope string
	immutable := guard.SplitList(f.Immutable)
	if f.FederatedOnly {
		log.Info("federated-only: no Azure credentials are read and ARM is never called; federated identities are served by the pods' sidecars through workload identity federation, " +
			"and a pod bound to a node identity gets a Warning Event " + controller.EventNodeIdentityNotAttached + " instead of an attachment (run without --federated-only, with Azure credentials, to attach node identities)")
	}
	if !f.Managed && !f.FederatedOnly {
		var azj config.AzureJSON
		if f.AzureConfig != "" {
			var err error
			if azj, err = config.LoadAzureJSON(f.AzureConfig); err != nil {
				return err
			}
		}
		cloudCfg, err := config.Cloud(firstNonEmpty(f.CloudName, azj.Cloud), firstNonEmpty(f.ARMEndpoint, azj.ResourceManagerEndpoint), f.Audience, f.AuthorityHost)
		if err != nil {
			return err
		}
		auth, err := config.ResolveAuth(azj, os.Getenv)
		if err != nil {
			return err
		}
		if cred, err = auth.Credential(policy.ClientOptions{Cloud: cloudCfg}); err != nil {
			return fmt.Errorf("building %s credentials: %w", auth.Method, err)
		}
		if azj.UserAssignedIdentityID != "" {
			immutable = append(immutable, azj.UserAssignedIdentityID) // the cluster's own (kubelet) identity
		}
		scope = config.ResourceManagerScope(cloudCfg)
		arm = azure.NewARM(cred, azure.ARMOptions{Cloud: cloudCfg, PollFrequency: f.PollFrequency,
			Retry: policy.RetryOptions{MaxRetries: 3, RetryDelay: 2 * time.Second, MaxRetryDelay: 30 * time.Second, TryTimeout: 2 * time.Minute}})
		log.Info("ARM configured", "auth", auth.Method, "clientID", auth.ClientID, "scope", scope)
	}

	if f.UpgradeCRDFields {
		// Before any controller reads the objects, in managed and unmanaged mode alike; every replica may do
		// it (before leader election) because the upgrade is idempotent.
		if err := upgradeCRDFields(ctx, f, log, upgrade.Options{}); err != nil {
			return err
		}
	}

	restCfg, err := restConfig(f.Kubeconfig)
	if err != nil {
		return err
	}
	restCfg.QPS, restCfg.Burst = float32(f.KubeAPIQPS), f.KubeAPIBurst
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := aadv1.AddToScheme(scheme); err != nil {
		return err
	}
	mgr, err := ctrl.NewManager(restCfg, manager.Options{
		Scheme:                        scheme,
		Cache:                         cachetrim.Options(), // every Pod and Node of the cluster, reduced to what is read
		Metrics:                       metricsserver.Options{BindAddress: f.MetricsAddr},
		HealthProbeBindAddress:        f.ProbeAddr,
		LeaderElection:                f.LeaderElect,
		LeaderElectionID:              "podidentity-assigner",
		LeaderElectionNamespace:       f.LeaderElectionNamespace,
		LeaderElectionReleaseOnCancel: true,
	})
	if err != nil {
		return fmt.Errorf("creating the manager: %w", err)
	}
	if err := checkNamespaceAccess(ctx, mgr.GetAPIReader()); err != nil {
		return err
	}
	var hold func(context.Context) error
	if f.MICLock != "" {
		mic, err := newMICWatch(mgr.GetAPIReader(), f.MICLock, log.WithName("aad-pod-identity-mic"), ctrlmetrics.Registry)
		if err != nil {
			return err
		}
		hold = mic.Check
		if err := mgr.AddReadyzCheck("aad-pod-identity-mic", func(r *http.Request) error { return mic.Check(r.Context()) }); err != nil {
			return err
		}
	}
	injection := desired.Injection{Label: f.Guard.InjectionLabel, AttachUninjected: f.AttachUninjected}
	if f.AttachUninjected {
		log.Info("WARNING: --attach-uninjected-pods is on: identities are attached for bound pods the podidentity webhook did not inject, "+
			"and such a pod can ask its node's IMDS directly for every identity attached to the node; keep it on only while AAD Pod Identity's NMI "+
			"still runs and protects those pods during a migration", "namespaceInjectionLabel", injection.LabelKey())
	} else {
		log.Info("identities are attached only for pods the podidentity webhook injected", "namespaceInjectionLabel", injection.LabelKey())
	}
	bindingOpts := binding.Options{ForceNamespaced: f.ForceNamespaced}
	if err := controller.Setup(ctx, mgr, arm, controller.Options{
		Namespace: f.Namespace, Immutable: immutable, Binding: bindingOpts,
		Managed: f.Managed, FederatedOnly: f.FederatedOnly, Workers: f.Workers, Resync: f.Resync, Debounce: f.Debounce, IsolationTTL: f.IsolationTTL,
		DetachGrace: detachGrace(f.DetachGrace), Pool: f.Guard.Pool, Injection: injection, Hold: hold,
	}); err != nil {
		return err
	}
	// With or without guard mode: un-injected bound pods and pods admitted with security warnings.
	if _, err := podaudit.Setup(mgr, podaudit.Options{Injection: injection, Binding: bindingOpts, Registerer: ctrlmetrics.Registry}); err != nil {
		return err
	}
	if f.Guard.Pool != nil {
		log.Info("guard mode: identities only on the identity pool", "pool", f.Guard.Pool.String(), "auditInterval", f.Guard.AuditInterval.String(),
			"trustedNamespaces", f.Guard.TrustedNamespaces, "trustedServiceAccounts", f.Guard.TrustedServiceAccounts)
		if err := guard.Setup(mgr, f.Guard.rules(), bindingOpts, f.AttachUninjected, f.Guard.AuditInterval, 0, ctrlmetrics.Registry); err != nil {
			return err
		}
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("caches", func(*http.Request) error {
		c, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if !mgr.GetCache().WaitForCacheSync(c) {
			return errors.New("informer caches not synced yet")
		}
		return nil
	}); err != nil {
		return err
	}
	if cred != nil {
		if err := mgr.AddReadyzCheck("arm-credentials", CredentialCheck(cred, scope, 5*time.Minute)); err != nil {
			return err
		}
	}
	return mgr.Start(ctx)
}

// checkNamespaceAccess fails the start when the assigner may not list namespaces: it needs their opt-in label
// for every attachment, and without access its namespace cache would never sync, leaving only a timeout to
// explain why nothing happens.
func checkNamespaceAccess(ctx context.Context, r client.Reader) error {
	err := r.List(ctx, &corev1.NamespaceList{}, client.Limit(1))
	if apierrors.IsForbidden(err) {
		return fmt.Errorf("the assigner may not list namespaces, which it needs to tell which are opted in to injection: "+
			"grant its service account get, list and watch on namespaces (the chart's assigner ClusterRole does): %w", err)
	}
	return nil // other failures show up, with their own cause, when the caches start
}

// upgradeCRDFields runs the pre-1.6 field name upgrade with a client that reads from the API server.
func upgradeCRDFields(ctx context.Context, f Options, log logr.Logger, opts upgrade.Options) error {
	restCfg, err := restConfig(f.Kubeconfig)
	if err != nil {
		return err
	}
	restCfg.QPS, restCfg.Burst = float32(f.KubeAPIQPS), f.KubeAPIBurst
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	c, err := client.New(restCfg, client.Options{Scheme: scheme})
	if err != nil {
		return fmt.Errorf("creating a client for the CRD field upgrade: %w", err)
	}
	if _, err := upgrade.Run(ctx, c, f.Namespace, log.WithName("crd-upgrade"), opts); err != nil {
		return fmt.Errorf("upgrading pre-1.6 AAD Pod Identity objects (fix the cause, or start with --upgrade-crd-fields=false to skip): %w", err)
	}
	return nil
}

// CredentialCheck is a readiness check that succeeds while a token for scope can be obtained; a success
// is trusted for ttl so that probes do not hammer Azure AD.
func CredentialCheck(cred azcore.TokenCredential, scope string, ttl time.Duration) healthz.Checker {
	var mu sync.Mutex
	var okUntil time.Time
	return func(req *http.Request) error {
		mu.Lock()
		defer mu.Unlock()
		if time.Now().Before(okUntil) {
			return nil
		}
		ctx, cancel := context.WithTimeout(req.Context(), 10*time.Second)
		defer cancel()
		// EnableCAE as the ARM SDK's bearer policy asks: azidentity caches CAE and non-CAE tokens apart, and
		// this check should fetch (and warm) the very token the ARM client will use.
		if _, err := cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{scope}, EnableCAE: true}); err != nil {
			return fmt.Errorf("cannot get an ARM token (check the assigner's Azure identity and its azure.json / AZURE_* settings): %w", err)
		}
		okUntil = time.Now().Add(ttl)
		return nil
	}
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("reading kubeconfig %s: %w", kubeconfig, err)
		}
		return c, nil
	}
	c, err := ctrl.GetConfig()
	if err != nil {
		return nil, fmt.Errorf("no Kubernetes configuration (run in a cluster, set $KUBECONFIG or --kubeconfig): %w", err)
	}
	return c, nil
}

// detachGrace turns --detach-grace-period into Options.DetachGrace, whose zero means the default.
func detachGrace(d time.Duration) time.Duration {
	if d <= 0 {
		return -1 // detach at once
	}
	return d
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
