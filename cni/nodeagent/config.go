// Package nodeagent is podidentity-node, the DaemonSet of CNI mode: it wires the installer (package install),
// the repair and exemption controller (package repair), the spool of failed ADDs (package failures), the
// health endpoints and the metrics, and decides at shutdown between an uninstall and a rollout.
package nodeagent

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/podidentity/podidentity/cni/pluginconf"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/internal/imdspolicy"
	"github.com/podidentity/podidentity/internal/redirect"
)

// Config is the agent's parsed command line.
type Config struct {
	NodeName       string
	Namespace      string
	DaemonSetName  string
	Kubeconfig     string
	CNIBinDir      string
	CNIConfDir     string
	HostCNIConfDir string
	PluginBinary   string
	KubeconfigName string
	TokenFile      string
	CAFile         string
	APIServer      string
	FailureDir     string
	HostFailureDir string
	CgroupRoot     string
	HealthAddress  string
	Resync         time.Duration
	InstallResync  time.Duration
	Workers        int
	Uninstall      bool

	Policy   imdspolicy.Policy
	Redirect redirect.Config
	// imds and ports as given, for the plugin's entry
	imdsAddress string
	imdsPort    uint
	sidecarPort uint
}

// Defaults of the flags the chart is most likely to set.
const (
	DefaultDaemonSetName  = "podidentity-node"
	DefaultKubeconfigName = "ZZZ-podidentity-cni-kubeconfig"
	DefaultHealthAddress  = ":15081"
	serviceAccountDir     = "/var/run/secrets/kubernetes.io/serviceaccount"
)

// Parse reads the command line; env supplies defaults from the downward API (NODE_NAME, POD_NAMESPACE).
func Parse(args []string, env func(string) string, stderr io.Writer) (Config, error) {
	def := redirect.DefaultConfig()
	fs := flag.NewFlagSet("podidentity-node", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c Config
	var exempt, scope string
	fs.StringVar(&c.NodeName, "node-name", env("NODE_NAME"), "this node's name (downward API spec.nodeName; env NODE_NAME)")
	fs.StringVar(&c.Namespace, "namespace", env("POD_NAMESPACE"), "the agent's namespace (downward API metadata.namespace; env POD_NAMESPACE)")
	fs.StringVar(&c.DaemonSetName, "daemonset-name", DefaultDaemonSetName, "the agent's own DaemonSet: at shutdown, the plugin is removed from the node only if it is gone or being deleted")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubeconfig of the agent's own client (default: in-cluster)")
	fs.StringVar(&c.CNIBinDir, "cni-bin-dir", "/host/opt/cni/bin", "the host's CNI bin dir as mounted in the agent (AKS: /opt/cni/bin)")
	fs.StringVar(&c.CNIConfDir, "cni-conf-dir", "/host/etc/cni/net.d", "the host's CNI conf dir as mounted in the agent (AKS: /etc/cni/net.d)")
	fs.StringVar(&c.HostCNIConfDir, "host-cni-conf-dir", "/etc/cni/net.d", "the same directory as the host sees it: the plugin runs on the host and reads its kubeconfig there")
	fs.StringVar(&c.PluginBinary, "plugin-binary", "/podidentity-cni", "the podidentity-cni binary shipped in the agent's image")
	fs.StringVar(&c.KubeconfigName, "kubeconfig-name", DefaultKubeconfigName, "file name of the plugin's kubeconfig in the CNI conf dir (no .conf/.conflist/.json ending: the runtime must not read it)")
	fs.StringVar(&c.TokenFile, "token-file", filepath.Join(serviceAccountDir, "token"), "the service account token written into the plugin's kubeconfig (re-read every --install-resync-interval: the kubelet rotates it)")
	fs.StringVar(&c.CAFile, "ca-file", filepath.Join(serviceAccountDir, "ca.crt"), "the API server's CA written into the plugin's kubeconfig")
	fs.StringVar(&c.APIServer, "api-server", "", "the API server URL written into the plugin's kubeconfig (default: the agent's own, in-cluster https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT)")
	fs.StringVar(&c.FailureDir, "failure-dir", "/host/var/run/podidentity-cni", "where the plugin records failed ADDs, as mounted in the agent")
	fs.StringVar(&c.HostFailureDir, "host-failure-dir", "/var/run/podidentity-cni", "the same directory as the host sees it (written into the plugin's entry)")
	fs.StringVar(&c.CgroupRoot, "cgroup-root", "", "the host's cgroup v2 mount as the agent sees it (default: the first cgroup2 mount of /host/sys/fs/cgroup, /host/sys/fs/cgroup/unified, /sys/fs/cgroup, /sys/fs/cgroup/unified)")
	fs.StringVar(&c.HealthAddress, "health-address", DefaultHealthAddress, "address of /healthz, /readyz and /metrics (the agent uses the host network: pick a free node port)")
	fs.DurationVar(&c.Resync, "resync-interval", 30*time.Second, "how often every pod of the node is checked and repaired")
	fs.DurationVar(&c.InstallResync, "install-resync-interval", 10*time.Second, "how often the installation is checked besides file events (token rotation, lost events)")
	fs.IntVar(&c.Workers, "workers", 2, "pods reconciled in parallel")
	fs.BoolVar(&c.Uninstall, "uninstall", false, "remove the plugin from this node (conflist entry, kubeconfig, binary) and exit; for a node whose agent will not come back")
	fs.StringVar(&c.Policy.SidecarImage, "sidecar-image", "", "the image the webhook injects as podidentity-sidecar (the webhook's --sidecar-image): only pods with exactly this image get the redirect")
	fs.StringVar(&c.Policy.InjectionLabel, "injection-label", contract.NamespaceInjectionLabel, "the namespace label that opts a namespace in with the value \"enabled\" (the webhook's --namespace-injection-label)")
	fs.StringVar(&exempt, "exempt-namespaces", "kube-system", "comma-separated namespaces whose pods are never fenced (add the agent's own namespace)")
	fs.StringVar(&scope, "fence-scope", string(imdspolicy.ScopeAll), "which pods without a sidecar are fenced: all, or opted-in (only pods of opted-in namespaces)")
	fs.StringVar(&c.imdsAddress, "imds-address", def.IMDSAddress.String(), "the IMDS address")
	fs.UintVar(&c.imdsPort, "imds-port", uint(def.IMDSPort), "the IMDS port")
	fs.UintVar(&c.sidecarPort, "sidecar-port", uint(def.SidecarPort), "the token sidecar's port on 127.0.0.1 in injected pods")
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected arguments %q: all settings are flags (see --help)", fs.Args())
	}
	for _, ns := range strings.Split(exempt, ",") {
		if ns = strings.TrimSpace(ns); ns != "" {
			c.Policy.ExemptNamespaces = append(c.Policy.ExemptNamespaces, ns)
		}
	}
	var err error
	if c.Policy.Scope, err = imdspolicy.ParseScope(scope); err != nil {
		return Config{}, fmt.Errorf("--fence-scope: %w", err)
	}
	if c.imdsPort > 65535 || c.sidecarPort > 65535 {
		return Config{}, errors.New("--imds-port and --sidecar-port take 1-65535")
	}
	if c.Redirect, err = c.Settings().Redirect(); err != nil {
		return Config{}, fmt.Errorf("--imds-address, --imds-port, --sidecar-port: %w", err)
	}
	return c, c.validate()
}

func (c Config) validate() error {
	var errs []error
	if c.Uninstall {
		return nil // needs only the directories
	}
	if c.NodeName == "" {
		errs = append(errs, errors.New("--node-name is empty: set env NODE_NAME from the downward API (fieldRef spec.nodeName)"))
	}
	if c.Namespace == "" {
		errs = append(errs, errors.New("--namespace is empty: set env POD_NAMESPACE from the downward API (fieldRef metadata.namespace)"))
	}
	if err := c.Policy.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("--sidecar-image / --injection-label: %w", err))
	}
	if ext := filepath.Ext(c.KubeconfigName); c.KubeconfigName == "" || strings.ContainsRune(c.KubeconfigName, '/') || ext == ".conf" || ext == ".conflist" || ext == ".json" {
		errs = append(errs, fmt.Errorf("--kubeconfig-name=%q: a plain file name without a .conf, .conflist or .json ending (the runtime would load it as a network)", c.KubeconfigName))
	}
	if c.Resync <= 0 || c.InstallResync <= 0 {
		errs = append(errs, errors.New("--resync-interval and --install-resync-interval must be positive"))
	}
	return errors.Join(errs...)
}

// Settings is the plugin's entry the agent writes: the same policy and addresses as the agent's, with the
// host's paths.
func (c Config) Settings() pluginconf.Settings {
	return pluginconf.Settings{
		Kubeconfig:       filepath.Join(c.HostCNIConfDir, c.KubeconfigName),
		IMDSAddress:      c.imdsAddress,
		IMDSPort:         uint16(c.imdsPort),
		SidecarPort:      uint16(c.sidecarPort),
		SidecarImage:     c.Policy.SidecarImage,
		InjectionLabel:   c.Policy.InjectionLabel,
		ExemptNamespaces: c.Policy.ExemptNamespaces,
		FenceScope:       string(c.Policy.Scope),
		FailureDir:       c.HostFailureDir,
	}
}

// envOS is os.Getenv, for Parse.
func envOS(k string) string { return os.Getenv(k) }
