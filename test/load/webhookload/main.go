// Command webhookload posts pod CREATE AdmissionReviews over TLS to a running podidentity webhook and reports
// throughput and latency percentiles as markdown (see webhook/BENCHMARKS.md).
//
// With --start it first starts a real kube-apiserver and etcd (bin/, as the integration tests do) and the
// webhook in this process (the same app.New the binary uses), serving a self-signed certificate; without
// it, point --url at a webhook you run.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/toolbox/pki"
	"github.com/podidentity/podidentity/test/toolbox/testenv"
	"github.com/podidentity/podidentity/webhook/app"
	"github.com/podidentity/podidentity/webhook/config"
)

type options struct {
	url         string
	insecure    bool
	start       bool
	podFile     string
	concurrency int
	duration    time.Duration
	warmup      time.Duration
	out         string
	cpuProfile  string
}

func main() {
	var o options
	flag.StringVar(&o.url, "url", "", "webhook URL (https://host:port/mutate-v1-pod); empty with --start")
	flag.BoolVar(&o.insecure, "insecure", false, "skip TLS verification of --url")
	flag.BoolVar(&o.start, "start", false, "start kube-apiserver, etcd and the webhook in this process, then load it")
	flag.StringVar(&o.podFile, "pod", filepath.Join(testenv.RepoRoot(), "webhook", "testdata", "golden", "deployment-pod.in.yaml"), "golden input whose pod (and, with --start, bindings and identities) to use")
	flag.IntVar(&o.concurrency, "concurrency", 16, "concurrent connections")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "measured duration")
	flag.DurationVar(&o.warmup, "warmup", 2*time.Second, "unmeasured warm-up before the measurement")
	flag.StringVar(&o.out, "out", "", "also append the markdown report to this file")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the measured window (with --start it covers the webhook too)")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "webhookload:", err)
		os.Exit(1)
	}
}

type goldenInput struct {
	Namespace  string                       `json:"namespace"`
	Pod        json.RawMessage              `json:"pod"`
	Bindings   []aadv1.AzureIdentityBinding `json:"bindings"`
	Identities []aadv1.AzureIdentity        `json:"identities"`
}

func run(o options) error {
	b, err := os.ReadFile(o.podFile)
	if err != nil {
		return err
	}
	var in goldenInput
	if err := yaml.Unmarshal(b, &in); err != nil {
		return fmt.Errorf("%s: %w", o.podFile, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	tlsConf := &tls.Config{InsecureSkipVerify: o.insecure} //nolint:gosec // opt-in for self-signed targets
	if o.start {
		url, pool, stop, err := startWebhook(ctx, in)
		if err != nil {
			return err
		}
		defer stop()
		o.url, tlsConf = url, &tls.Config{RootCAs: pool}
	}
	if o.url == "" {
		return fmt.Errorf("give --url of a running webhook, or --start")
	}
	transport := &http.Transport{TLSClientConfig: tlsConf, MaxIdleConnsPerHost: o.concurrency, MaxConnsPerHost: o.concurrency}
	hc := &http.Client{Transport: transport, Timeout: 10 * time.Second}

	// The review is rendered once with a placeholder uid, which each request replaces: the generator's own
	// JSON work stays small next to the webhook's.
	render := func(uid string) []byte {
		r := admissionv1.AdmissionReview{
			TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
			Request: &admissionv1.AdmissionRequest{
				UID: types.UID(uid), Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
				Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
				Namespace: in.Namespace, Operation: admissionv1.Create, Object: k8sruntime.RawExtension{Raw: in.Pod},
			},
		}
		out, _ := json.Marshal(r)
		return out
	}
	const placeholder = "UID-PLACEHOLDER"
	template := render(placeholder)
	body := func(uid int64) []byte {
		return bytes.Replace(template, []byte(placeholder), []byte(strconv.FormatInt(uid, 10)), 1)
	}

	// One request first: the target must answer with an injected pod, or the figures mean nothing.
	if res, err := post(ctx, hc, o.url, body(0)); err != nil {
		return err
	} else if !res.Allowed || len(res.Patch) == 0 {
		return fmt.Errorf("the webhook did not inject the pod (allowed %v, %d patch bytes, %v): load figures would be meaningless", res.Allowed, len(res.Patch), res.Result)
	}

	var uid atomic.Int64
	measure := func(d time.Duration) ([]time.Duration, int64) {
		var (
			mu     sync.Mutex
			all    []time.Duration
			errs   atomic.Int64
			wg     sync.WaitGroup
			stopAt = time.Now().Add(d)
		)
		for w := 0; w < o.concurrency; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				local := make([]time.Duration, 0, 4096)
				for time.Now().Before(stopAt) {
					req := body(uid.Add(1))
					t0 := time.Now()
					res, err := post(ctx, hc, o.url, req)
					lat := time.Since(t0)
					if err != nil || !res.Allowed {
						errs.Add(1)
						continue
					}
					local = append(local, lat)
				}
				mu.Lock()
				all = append(all, local...)
				mu.Unlock()
			}()
		}
		wg.Wait()
		return all, errs.Load()
	}
	measure(o.warmup)
	cpu0 := cpuTime()
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
	}
	lat, errs := measure(o.duration)
	if o.cpuProfile != "" {
		pprof.StopCPUProfile()
	}
	cpuUsed := cpuTime() - cpu0
	slices.Sort(lat)
	pct := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(float64(len(lat))*p))]
	}
	report := fmt.Sprintf(`### webhookload %s

- command: `+"`go run ./test/load/webhookload %s`"+`
- machine: %d CPUs (GOMAXPROCS %d), %s/%s, %s; target %s
- pod: %s, concurrency %d, duration %s after %s warm-up

| admissions | errors | throughput (admissions/s) | p50 | p90 | p99 | max | CPU/admission (this process) |
|---:|---:|---:|---:|---:|---:|---:|---:|
| %d | %d | %.0f | %s | %s | %s | %s | %s |

Load average at the end: %s. CPU/admission is this process's user+system time over the measured window divided
by the admissions; with --start it includes the load generator's own TLS and JSON work.
`, time.Now().UTC().Format(time.RFC3339), argsString(), runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.GOOS, runtime.GOARCH, runtime.Version(),
		map[bool]string{true: "in-process webhook (--start)", false: o.url}[o.start],
		filepath.Base(o.podFile), o.concurrency, o.duration, o.warmup,
		len(lat), errs, float64(len(lat))/o.duration.Seconds(), round(pct(0.50)), round(pct(0.90)), round(pct(0.99)), round(pct(1)),
		perAdmission(cpuUsed, len(lat)), loadAverage())
	fmt.Print(report)
	if o.out != "" {
		f, err := os.OpenFile(o.out, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := io.WriteString(f, "\n"+report); err != nil {
			return err
		}
	}
	return nil
}

// reviewResponse is the part of the answer the generator checks.
type reviewResponse struct {
	Allowed bool           `json:"allowed"`
	Patch   []byte         `json:"patch"`
	Result  *metav1.Status `json:"status"`
}

func post(ctx context.Context, hc *http.Client, url string, body []byte) (*reviewResponse, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	var r struct {
		Response *reviewResponse `json:"response"`
	}
	if err := json.Unmarshal(b, &r); err != nil || r.Response == nil {
		return nil, fmt.Errorf("HTTP %d, not an AdmissionReview: %.200s", resp.StatusCode, b)
	}
	return r.Response, nil
}

// startWebhook starts kube-apiserver and etcd, creates the golden input's namespace (opted in), bindings and
// identities, and serves the webhook on a loopback port with a fresh self-signed certificate.
func startWebhook(ctx context.Context, in goldenInput) (string, *x509.CertPool, func(), error) {
	env := &envtest.Environment{
		BinaryAssetsDirectory: filepath.Join(testenv.RepoRoot(), "bin"),
		CRDDirectoryPaths:     []string{filepath.Join(testenv.RepoRoot(), "manifests", "crds")},
		ErrorIfCRDPathMissing: true,
		Scheme:                testenv.Scheme(),
	}
	if a := os.Getenv("KUBEBUILDER_ASSETS"); a != "" {
		env.BinaryAssetsDirectory = a
	}
	rc, err := env.Start()
	if err != nil {
		return "", nil, nil, fmt.Errorf("starting kube-apiserver and etcd (run `make envtest-bins` first): %w", err)
	}
	stop := func() { _ = env.Stop() }
	c, err := client.New(rc, client.Options{Scheme: testenv.Scheme()})
	if err != nil {
		stop()
		return "", nil, nil, err
	}
	objs := []client.Object{&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: in.Namespace, Labels: map[string]string{contract.NamespaceInjectionLabel: "enabled"}}}}
	for i := range in.Identities {
		objs = append(objs, &in.Identities[i])
	}
	for i := range in.Bindings {
		objs = append(objs, &in.Bindings[i])
	}
	for _, obj := range objs {
		if err := c.Create(ctx, obj); err != nil {
			stop()
			return "", nil, nil, fmt.Errorf("creating %s: %w", obj.GetName(), err)
		}
	}
	dir, err := os.MkdirTemp("", "webhookload-certs")
	if err != nil {
		stop()
		return "", nil, nil, err
	}
	serving := pki.SelfSigned(pki.Spec{CommonName: "webhookload", IPs: []net.IP{net.ParseIP("127.0.0.1")}, Server: true, CA: true})
	if err := serving.WriteFiles(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")); err != nil {
		stop()
		return "", nil, nil, err
	}
	pool := serving.Pool()
	port, err := freePort()
	if err != nil {
		stop()
		return "", nil, nil, err
	}
	fs := flag.NewFlagSet("webhook", flag.ContinueOnError)
	cfg := config.Bind(fs)
	_ = fs.Parse([]string{"--mode=native", "--metrics-bind-address=0", "--health-probe-bind-address=0", "--cert-dir=" + dir, "--port=" + strconv.Itoa(port)})
	if err := cfg.Complete(); err != nil {
		stop()
		return "", nil, nil, err
	}
	mgr, err := app.New(cfg, rc, "127.0.0.1", logr.Discard())
	if err != nil {
		stop()
		return "", nil, nil, err
	}
	mctx, mcancel := context.WithCancel(ctx)
	go func() { _ = mgr.Start(mctx) }()
	if !mgr.GetCache().WaitForCacheSync(mctx) {
		mcancel()
		stop()
		return "", nil, nil, fmt.Errorf("webhook cache did not sync")
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for i := 0; ; i++ {
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool})
		if err == nil {
			_ = conn.Close()
			break
		}
		if i > 100 {
			mcancel()
			stop()
			return "", nil, nil, fmt.Errorf("webhook did not start serving on %s: %w", addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return "https://" + addr + config.Path, pool, func() { mcancel(); stop(); _ = os.RemoveAll(dir) }, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func argsString() string {
	s := ""
	for i, a := range os.Args[1:] {
		if i > 0 {
			s += " "
		}
		s += a
	}
	return s
}

// cpuTime is this process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func perAdmission(cpu time.Duration, n int) time.Duration {
	if n == 0 {
		return 0
	}
	return (cpu / time.Duration(n)).Round(time.Microsecond)
}

func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func round(d time.Duration) time.Duration {
	if d > time.Millisecond {
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}
