package nodeagent

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/events"

	"github.com/podidentity/podidentity/cni/cgroups"
	"github.com/podidentity/podidentity/cni/failures"
	"github.com/podidentity/podidentity/cni/install"
	"github.com/podidentity/podidentity/cni/kubeapi"
	"github.com/podidentity/podidentity/cni/plugin"
	"github.com/podidentity/podidentity/cni/pluginconf"
	"github.com/podidentity/podidentity/cni/repair"
	"github.com/podidentity/podidentity/internal/version"
)

// Exit codes of Main.
const (
	ExitOK     = 0
	ExitFailed = 1
	ExitUsage  = 2
)

// Main runs the agent until ctx ends (the command cancels it on SIGTERM) and returns the exit code.
func Main(ctx context.Context, args []string, stderr io.Writer) int {
	cfg, err := Parse(args, envOS, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "podidentity-node: %v\n", err)
		return ExitUsage
	}
	log := funcr.NewJSON(func(obj string) { fmt.Fprintln(stderr, obj) }, funcr.Options{}).WithName("podidentity-node")
	if err := Run(ctx, cfg, log); err != nil {
		log.Error(err, "failed")
		fmt.Fprintf(stderr, "podidentity-node: %v\n", err)
		return ExitFailed
	}
	return ExitOK
}

// Run runs the agent until ctx ends, then decides between uninstalling and leaving the plugin in place.
func Run(ctx context.Context, cfg Config, log logr.Logger) error {
	// Before anything enters a pod's network namespace.
	hostNetns, err := repair.HostNetns()
	if err != nil {
		return fmt.Errorf("reading the node's network namespace: %w", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	inst := &install.Installer{
		ConfDir:        cfg.CNIConfDir,
		BinDir:         cfg.CNIBinDir,
		PluginBinary:   cfg.PluginBinary,
		KubeconfigName: cfg.KubeconfigName,
		Entry:          pluginconf.NewEntry(cfg.Settings()),
		Log:            log.WithName("install"),
		Metrics:        install.NewMetrics(reg),
	}
	if cfg.Uninstall {
		if err := inst.Uninstall(); err != nil {
			return fmt.Errorf("uninstalling the plugin from this node: %w", err)
		}
		log.Info("uninstalled the plugin from this node")
		return nil
	}

	restCfg, err := restConfig(cfg.Kubeconfig)
	if err != nil {
		return err
	}
	restCfg.UserAgent = "podidentity-node/" + version.Version
	cs, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return err
	}
	lookup, err := kubeapi.New(restCfg, "the agent's service account")
	if err != nil {
		return err
	}
	server := cfg.APIServer
	if server == "" {
		server = restCfg.Host
	}
	inst.Credentials = func() (install.Credentials, error) {
		token, err := os.ReadFile(cfg.TokenFile)
		if err != nil {
			return install.Credentials{}, fmt.Errorf("reading the service account token (--token-file): %w", err)
		}
		ca, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return install.Credentials{}, fmt.Errorf("reading the API server's CA (--ca-file): %w", err)
		}
		return install.Credentials{Server: server, CA: ca, Token: string(token)}, nil
	}

	root := cfg.CgroupRoot
	if root == "" {
		if root, err = cgroups.Root(); err != nil {
			return err
		}
	}
	if err := checkHostCgroupNamespace(log); err != nil {
		return err
	}

	broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: cs.EventsV1()})
	defer broadcaster.Shutdown()
	if err := broadcaster.StartRecordingToSinkWithContext(ctx); err != nil {
		return err
	}
	rec := &repair.Reconciler{
		Policy:     cfg.Policy,
		Redirect:   cfg.Redirect,
		CgroupRoot: root,
		Lookup:     lookup,
		Events:     broadcaster.NewRecorder(scheme.Scheme, "podidentity-node"),
		Metrics:    repair.NewMetrics(reg),
		Log:        log.WithName("repair"),
		HostNetns:  hostNetns,
	}
	ctl := &repair.Controller{Reconciler: rec, Client: cs, Node: cfg.NodeName, Resync: cfg.Resync, Workers: cfg.Workers}
	addFailures := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "podidentity_node_cni_add_failures_total",
		Help: "Failed podidentity-cni ADDs on this node (each one kept a pod sandbox from starting), by cause"}, []string{"cause"})
	reg.MustRegister(addFailures)

	listener, err := net.Listen("tcp", cfg.HealthAddress)
	if err != nil {
		return fmt.Errorf("--health-address %s: %w (the agent uses the host network: pick a free port)", cfg.HealthAddress, err)
	}
	srv := &http.Server{Handler: handler(reg, inst), ReadHeaderTimeout: 5 * time.Second}

	log.Info("starting", "version", version.Version, "node", cfg.NodeName, "cgroupRoot", root, "confDir", cfg.CNIConfDir,
		"binDir", cfg.CNIBinDir, "sidecarImage", cfg.Policy.SidecarImage, "fenceScope", cfg.Policy.Scope,
		"exemptNamespaces", cfg.Policy.ExemptNamespaces, "healthAddress", listener.Addr().String())
	var wg sync.WaitGroup
	wg.Go(func() { inst.Run(ctx, cfg.InstallResync) })
	wg.Go(func() { ctl.Run(ctx, nil) })
	wg.Go(func() { drainFailures(ctx, cfg.FailureDir, addFailures, log.WithName("cni-failures")) })
	wg.Go(func() {
		if err := srv.Serve(listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error(err, "health server")
		}
	})
	<-ctx.Done()
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdown)
	wg.Wait()
	return stop(shutdown, cs, cfg, inst, log)
}

// stop decides, live, between an uninstall and a rollout (install.Uninstalling).
func stop(ctx context.Context, cs kubernetes.Interface, cfg Config, inst *install.Installer, log logr.Logger) error {
	ds, err := cs.AppsV1().DaemonSets(cfg.Namespace).Get(ctx, cfg.DaemonSetName, metav1.GetOptions{})
	uninstall, why := install.Uninstalling(ds, err)
	if !uninstall {
		log.Info("stopping; the plugin stays chained on this node", "why", why)
		return nil
	}
	log.Info("uninstalling the plugin from this node", "why", why)
	return inst.Uninstall()
}

func handler(reg *prometheus.Registry, inst *install.Installer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := inst.Ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = fmt.Fprintf(w, "not ready: %v\n", err)
			return
		}
		_, _ = io.WriteString(w, "ok: the plugin is chained and its kubeconfig written\n")
	})
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return mux
}

// knownCauses bound the cause label of podidentity_node_cni_add_failures_total.
func knownCauses() []string {
	return []string{
		string(kubeapi.CauseUnreachable), string(kubeapi.CauseUnauthorized), string(kubeapi.CauseForbidden),
		string(kubeapi.CauseNotFound), string(kubeapi.CauseCRDMissing), string(kubeapi.CauseKubeconfig), string(kubeapi.CauseAPIError),
		plugin.CauseConfig, plugin.CauseArgs, plugin.CauseNetns, plugin.CauseNftables,
	}
}

// drainFailures counts and logs the plugin's failed ADDs every few seconds.
func drainFailures(ctx context.Context, dir string, counter *prometheus.CounterVec, log logr.Logger) {
	if dir == "" {
		return
	}
	known := knownCauses()
	for _, c := range known {
		counter.WithLabelValues(c)
	}
	drain := func() {
		recs, err := failures.Drain(dir)
		if err != nil {
			log.Error(err, "reading the plugin's failure records", "dir", dir)
		}
		for _, r := range recs {
			cause := r.Cause
			if !slices.Contains(known, cause) {
				cause = "other"
			}
			counter.WithLabelValues(cause).Inc()
			log.Info("a pod sandbox failed podidentity-cni's ADD", "pod", r.Pod, "cause", r.Cause, "at", r.Time, "message", r.Message)
		}
	}
	ticker := time.NewTicker(5 * time.Second)
	defer ticker.Stop()
	for {
		drain()
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		return clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("in-cluster configuration (%w): run the agent as a pod with its service account, or pass --kubeconfig", err)
	}
	return cfg, nil
}

// checkHostCgroupNamespace refuses a private cgroup namespace: the exemption's level counts from the real
// cgroup v2 root only when the rule is loaded from the host's cgroup namespace (or on kernels without the
// 2024 cgroupns fix, always), and the pods' cgroups are visible only from there. With hostPID, pid 1 is the
// host's init; when its namespace cannot be read (no hostPID, or a sandbox hiding it), the agent goes on
// with a warning and the repair reports pods it cannot find as unprotected.
func checkHostCgroupNamespace(log logr.Logger) error {
	self, err1 := os.Readlink("/proc/self/ns/cgroup")
	host, err2 := os.Readlink("/proc/1/ns/cgroup")
	switch {
	case err1 != nil || err2 != nil || os.Getpid() == 1:
		log.Info("cannot compare the agent's cgroup namespace with the host's; run the DaemonSet with hostPID: true and privileged: true "+
			"(containerd then uses the host cgroup namespace)", "self", self, "pid1", host)
		return nil
	case self != host:
		return fmt.Errorf("the agent runs in a private cgroup namespace (%s, the host's is %s): it must see the host's cgroup hierarchy "+
			"to find pods and to compute the sidecar's cgroup level; run the DaemonSet privileged with hostPID: true", self, host)
	}
	return nil
}
