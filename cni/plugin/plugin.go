// Package plugin is the podidentity-cni chained CNI plugin: at pod sandbox creation, before any container of
// the pod starts, it installs in the pod's network namespace the table imdspolicy.Decide asks for (the IMDS
// redirect for an injected pod, the fence for every other pod, nothing for an exempt one). It runs as root on
// the node, started by the runtime once per operation; stdout is the CNI result channel, logs go to stderr.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"

	"github.com/podidentity/podidentity/cni/failures"
	"github.com/podidentity/podidentity/cni/kubeapi"
	"github.com/podidentity/podidentity/cni/pluginconf"
	"github.com/podidentity/podidentity/internal/imdspolicy"
	"github.com/podidentity/podidentity/internal/redirect"
	"github.com/podidentity/podidentity/internal/version"
)

// API budget of one ADD or CHECK. containerd gives the whole CNI chain minutes (the kubelet's runtime request
// timeout, 2m by default); a pod whose plugin cannot decide within seconds should fail loudly and be retried
// by the kubelet rather than hold the runtime.
const (
	// APIBudget bounds all API reads of one operation.
	APIBudget = 10 * time.Second
	// AttemptTimeout bounds one request.
	AttemptTimeout = 3 * time.Second
)

// Each read is tried at most Attempts times, RetryBackoff then twice that apart.
const (
	Attempts     = 3
	RetryBackoff = 250 * time.Millisecond
)

// Causes of failure besides kubeapi's; bounded metric labels (the node agent counts them).
const (
	CauseConfig   = "config"
	CauseArgs     = "cni-args"
	CauseNetns    = "netns"
	CauseNftables = "nftables"
	CauseDrift    = "drift"
)

// Plugin runs one CNI operation.
type Plugin struct {
	Stdout io.Writer
	Log    logr.Logger
	// Now is the clock (time.Now).
	Now func() time.Time
}

// Funcs are the operations for skel.PluginMainFuncs.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Check: p.Check, Del: p.Del, Status: p.Status}
}

// About is printed by skel when the binary runs without CNI_COMMAND.
func About() string {
	return "podidentity-cni " + version.Version + ": chained CNI plugin that installs the IMDS redirect or fence in each pod's network namespace"
}

// K8sArgs are the CNI_ARGS containerd and CRI-O pass for a Kubernetes pod sandbox. types.LoadArgs matches
// keys to field names, hence the names.
type K8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString
	K8S_POD_NAME               types.UnmarshallableString
	K8S_POD_UID                types.UnmarshallableString
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString
}

// ParseArgs reads CNI_ARGS. Keys it does not know are ignored whatever IgnoreUnknown says: they are meant for
// other plugins of the chain. ok is false when the args name no pod.
func ParseArgs(s string) (args K8sArgs, ok bool, err error) {
	args.IgnoreUnknown = true
	if err := types.LoadArgs(s, &args); err != nil {
		return K8sArgs{}, false, fmt.Errorf("CNI_ARGS %q cannot be parsed (%w): the runtime must pass K=V pairs separated by ';'", s, err)
	}
	switch {
	case args.K8S_POD_NAMESPACE == "" && args.K8S_POD_NAME == "":
		return args, false, nil
	case args.K8S_POD_NAMESPACE == "" || args.K8S_POD_NAME == "":
		return K8sArgs{}, false, fmt.Errorf("CNI_ARGS %q name a pod only in part (K8S_POD_NAMESPACE and K8S_POD_NAME go together)", s)
	}
	return args, true, nil
}

// Pod is "namespace/name".
func (a K8sArgs) Pod() string { return string(a.K8S_POD_NAMESPACE) + "/" + string(a.K8S_POD_NAME) }

// failure is an operation's error with its bounded cause.
type failure struct {
	cause string
	code  uint
	err   error
}

func (f *failure) Error() string { return f.err.Error() }
func (f *failure) Unwrap() error { return f.err }

func fail(cause string, code uint, err error) *failure {
	return &failure{cause: cause, code: code, err: err}
}

// Add installs the decision's table and passes the previous result through unchanged.
func (p *Plugin) Add(args *skel.CmdArgs) error {
	started := p.Now()
	conf, k8s, named, err := p.parse(args)
	if err == nil && conf.PrevResult == nil {
		err = fail(CauseConfig, types.ErrInvalidNetworkConfig, errors.New("no prevResult: podidentity-cni is a chained plugin and must "+
			"come after the primary CNI plugin in the conflist's \"plugins\" (the podidentity-node DaemonSet appends it there)"))
	}
	var d imdspolicy.Decision
	var outcome string
	if err == nil {
		d, err = p.decide(conf, k8s, named)
	}
	if err == nil {
		outcome, err = p.install(args.Netns, d, conf)
	}
	pod := k8s.Pod()
	if err != nil {
		return p.failed("ADD", conf, pod, err)
	}
	p.Log.Info("ADD done", "pod", pod, "podUID", string(k8s.K8S_POD_UID), "container", args.ContainerID,
		"decision", d.Action, "reason", d.Reason, "detail", d.Detail, "outcome", outcome,
		"elapsed", p.Now().Sub(started).String(), "version", version.Version)
	result, err := conf.PrevResult.GetAsVersion(conf.CNIVersion)
	if err != nil {
		return types.NewError(types.ErrIncompatibleCNIVersion, fmt.Sprintf("podidentity-cni: passing the previous result on as cniVersion %s: %v", conf.CNIVersion, err), "")
	}
	return result.PrintTo(p.Stdout)
}

// Check verifies that the live table is the one the decision asks for (a redirect may carry the node
// agent's cgroup exemption).
func (p *Plugin) Check(args *skel.CmdArgs) error {
	conf, k8s, named, err := p.parse(args)
	var d imdspolicy.Decision
	if err == nil {
		d, err = p.decide(conf, k8s, named)
	}
	if err == nil && d.Action != imdspolicy.None {
		err = p.check(args.Netns, d, conf)
	}
	if err != nil {
		return p.failed("CHECK", conf, k8s.Pod(), err)
	}
	p.Log.Info("CHECK passed", "pod", k8s.Pod(), "decision", d.Action, "reason", d.Reason)
	return nil
}

// Del removes the project's table from the pod's network namespace if that still exists. It succeeds when
// the namespace or the table is already gone, and also when the removal fails: the table dies with the
// namespace, and a failing DEL would only keep the runtime from tearing the sandbox down.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	ns, err := openNetns(args.Netns)
	if ns == nil {
		p.Log.Info("DEL: nothing to remove", "netns", args.Netns, "why", errString(err, "the network namespace is gone"))
		return nil
	}
	defer ns.Close()
	k, err := redirect.NewKernel(int(ns.Fd()))
	if err != nil {
		p.Log.Error(err, "DEL: cannot reach nftables in the pod's network namespace; leaving the table to die with it", "netns", args.Netns)
		return nil
	}
	defer k.Close()
	removed, err := k.Cleanup()
	if err != nil {
		p.Log.Error(err, "DEL: removing the table failed; leaving it to die with the namespace", "netns", args.Netns)
		return nil
	}
	p.Log.Info("DEL done", "netns", args.Netns, "removed", removed)
	return nil
}

// Status fails when the plugin cannot work: its configuration is invalid or its kubeconfig is missing or
// unreadable (the runtime then reports the network as not ready, and the kubelet creates no sandbox).
func (p *Plugin) Status(args *skel.CmdArgs) error {
	conf, err := pluginconf.Parse(args.StdinData)
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "podidentity-cni: "+err.Error(), "")
	}
	if _, err := os.ReadFile(conf.Kubeconfig); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("podidentity-cni: its kubeconfig %s cannot be read (%v): "+
			"the podidentity-node DaemonSet writes it when it starts; is it running on this node?", conf.Kubeconfig, err), "")
	}
	return nil
}

func (p *Plugin) parse(args *skel.CmdArgs) (*pluginconf.Config, K8sArgs, bool, error) {
	conf, err := pluginconf.Parse(args.StdinData)
	if err != nil {
		return nil, K8sArgs{}, false, fail(CauseConfig, types.ErrInvalidNetworkConfig, err)
	}
	k8s, named, err := ParseArgs(args.Args)
	if err != nil {
		return conf, K8sArgs{}, false, fail(CauseArgs, types.ErrInvalidEnvironmentVariables, err)
	}
	return conf, k8s, named, nil
}

// decide reads what the decision needs from the API server, unless the namespace is exempt (so that system
// pods start while the API server is unreachable).
func (p *Plugin) decide(conf *pluginconf.Config, k8s K8sArgs, named bool) (imdspolicy.Decision, error) {
	pol, err := conf.Policy()
	if err != nil {
		return imdspolicy.Decision{}, fail(CauseConfig, types.ErrInvalidNetworkConfig, err)
	}
	if !named {
		return imdspolicy.DecideNotAPod(pol), nil
	}
	namespace := string(k8s.K8S_POD_NAMESPACE)
	if pol.Exempt(namespace) {
		return imdspolicy.Decision{Action: imdspolicy.None, Reason: imdspolicy.ReasonExemptNamespace, Detail: namespace}, nil
	}
	client, err := kubeapi.FromKubeconfig(conf.Kubeconfig, "podidentity-cni/"+version.Version, AttemptTimeout)
	if err != nil {
		return imdspolicy.Decision{}, apiFailure(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), APIBudget)
	defer cancel()
	objs, err := client.Fetch(ctx, namespace, string(k8s.K8S_POD_NAME), string(k8s.K8S_POD_UID), kubeapi.Retry{Attempts: Attempts, Backoff: RetryBackoff})
	if err != nil {
		return imdspolicy.Decision{}, apiFailure(err)
	}
	return imdspolicy.Decide(pol, objs.Pod, objs.Namespace, objs.Exceptions), nil
}

func apiFailure(err error) error {
	var e *kubeapi.Error
	if errors.As(err, &e) {
		code := uint(types.ErrInternal)
		if e.Transient() {
			code = types.ErrTryAgainLater
		}
		return fail(string(e.Cause), code, err)
	}
	return fail(string(kubeapi.CauseAPIError), types.ErrInternal, err)
}

// install applies the decision's table. A redirect that already carries a valid cgroup exemption (a repeated
// ADD after the node agent exempted the sidecar) is left as it is, so that ADD is idempotent.
func (p *Plugin) install(netnsPath string, d imdspolicy.Decision, conf *pluginconf.Config) (string, error) {
	cfg, err := conf.Redirect()
	if err != nil {
		return "", fail(CauseConfig, types.ErrInvalidNetworkConfig, err)
	}
	want, ok := imdspolicy.Want(d.Action, cfg)
	if !ok {
		return "nothing installed", nil
	}
	ns, err := openNetns(netnsPath)
	if ns == nil {
		return "", fail(CauseNetns, types.ErrInvalidNetNS, fmt.Errorf("the pod's network namespace %q cannot be opened (%v): "+
			"the runtime passed a CNI_NETNS that does not exist", netnsPath, err))
	}
	defer ns.Close()
	k, err := redirect.NewKernel(int(ns.Fd()))
	if err != nil {
		return "", fail(CauseNftables, types.ErrInternal, err)
	}
	defer k.Close()
	live, found, err := k.Live()
	if err != nil {
		return "", fail(CauseNftables, types.ErrInternal, err)
	}
	if state, _ := imdspolicy.Assess(d.Action, cfg, live, found); state == imdspolicy.TableOK {
		return string(redirect.Unchanged), nil
	}
	outcome, err := k.Apply(want)
	if err != nil {
		return "", fail(CauseNftables, types.ErrInternal, err)
	}
	return string(outcome), nil
}

func (p *Plugin) check(netnsPath string, d imdspolicy.Decision, conf *pluginconf.Config) error {
	cfg, err := conf.Redirect()
	if err != nil {
		return fail(CauseConfig, types.ErrInvalidNetworkConfig, err)
	}
	ns, err := openNetns(netnsPath)
	if ns == nil {
		return fail(CauseNetns, types.ErrInvalidNetNS, fmt.Errorf("the pod's network namespace %q cannot be opened (%w)", netnsPath, err))
	}
	defer ns.Close()
	k, err := redirect.NewKernel(int(ns.Fd()))
	if err != nil {
		return fail(CauseNftables, types.ErrInternal, err)
	}
	defer k.Close()
	live, found, err := k.Live()
	if err != nil {
		return fail(CauseNftables, types.ErrInternal, err)
	}
	state, ex := imdspolicy.Assess(d.Action, cfg, live, found)
	if state == imdspolicy.TableOK {
		return nil
	}
	want, _ := imdspolicy.Want(d.Action, cfg)
	if d.Action == imdspolicy.Redirect && ex.Cgroup.ID != 0 {
		want = redirect.Desired(cfg.WithExemption(redirect.Exemption{Cgroup: ex.Cgroup}))
	}
	drift := &redirect.DriftError{Missing: !found}
	if found {
		drift.Want, drift.Got = redirect.Render(want), redirect.Render(live)
	}
	return fail(CauseDrift, types.ErrInternal, fmt.Errorf("the pod's table is %s for decision %s: %w; "+
		"the podidentity-node DaemonSet repairs it within its resync interval", state, d, drift))
}

// failed logs the failure, records it for the node agent, and returns the CNI error the runtime reports.
func (p *Plugin) failed(op string, conf *pluginconf.Config, pod string, err error) error {
	f := &failure{cause: string(kubeapi.CauseAPIError), code: types.ErrInternal, err: err}
	errors.As(err, &f)
	if pod == "/" {
		pod = ""
	}
	what := "the sandbox"
	if pod != "" {
		what = "pod " + pod
	}
	msg := fmt.Sprintf("podidentity-cni: %s of %s failed, so it does not start without its IMDS protection: %v", op, what, f.err)
	if op == "CHECK" {
		msg = fmt.Sprintf("podidentity-cni: CHECK of %s failed: %v", what, f.err)
	}
	p.Log.Error(f.err, op+" failed", "pod", pod, "cause", f.cause)
	if op == "ADD" && conf != nil && conf.FailureDir != "" {
		rec := failures.Record{Time: p.Now(), Cause: f.cause, Pod: pod, Message: msg}
		if werr := failures.Write(conf.FailureDir, rec); werr != nil {
			p.Log.Error(werr, "recording the failure for the node agent")
		}
	}
	return types.NewError(f.code, msg, "")
}

// openNetns opens a network namespace file. It returns nil (and why) when the path is empty, missing, or no
// longer a namespace (a bind mount the runtime removed leaves an empty file behind).
func openNetns(path string) (*os.File, error) {
	if path == "" {
		return nil, errors.New("CNI_NETNS is empty")
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil || st.Type != unix.NSFS_MAGIC {
		_ = f.Close()
		return nil, fmt.Errorf("%s is not a namespace file", path)
	}
	return f, nil
}

func errString(err error, fallback string) string {
	if err != nil {
		return err.Error()
	}
	return fallback
}
