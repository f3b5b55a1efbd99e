package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/podidentity/podidentity/api/identitytype"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/internal/redirect"
	"github.com/podidentity/podidentity/test/emulators/imds"
	"github.com/podidentity/podidentity/test/toolbox/jwttest"
	"github.com/podidentity/podidentity/test/toolbox/nstest"
)

var (
	boundMI = imds.Identity{ClientID: "aaaaaaaa-2222-4222-8222-000000000001", ObjectID: "0b000000-2222-4222-8222-000000000001",
		ResourceID: "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/web"}
	// unboundMI is attached to the node, so IMDS would issue its token to anyone who reached it.
	unboundMI = imds.Identity{ClientID: "aaaaaaaa-2222-4222-8222-000000000002", ObjectID: "0b000000-2222-4222-8222-000000000002",
		ResourceID: "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/other"}
)

const tokenURL = "http://" + contract.IMDSAddress + "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F"

// pod is a pod's network namespace linked to a node namespace that holds the IMDS address, served by the
// emulator, with the init container's redirect installed (no exemption) and the sidecar's files.
type pod struct {
	link    *nstest.Link
	emu     *imds.Server
	kernel  *redirect.Kernel
	files   string
	sidecar *nstest.Cgroup // the sidecar container's cgroup
	app     *nstest.Cgroup // an app container's cgroup
}

func newPod(t *testing.T) *pod {
	t.Helper()
	p := &pod{link: nstest.NewLink(t, contract.IMDSAddress)}
	suffix := nstest.UniqueSuffix(t)
	p.sidecar = nstest.NewCgroup(t, suffix, "sidecar")
	p.app = nstest.NewCgroup(t, suffix, "app")

	p.emu = imds.New(imds.Options{RatePerSecond: -1})
	p.emu.SetAttached([]imds.Identity{boundMI, unboundMI})
	var l net.Listener
	if err := p.link.Node.Do(func() (err error) {
		l, err = net.Listen("tcp", fmt.Sprintf("%s:%d", contract.IMDSAddress, contract.IMDSPort))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: p.emu, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })

	k, err := redirect.NewKernel(p.link.Pod.FD())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k.Close() })
	p.kernel = k
	// What podidentity-init installs: the redirect, exempting nobody.
	if _, err := k.Apply(redirect.Desired(redirect.DefaultConfig())); err != nil {
		t.Fatal(err)
	}

	p.files = readableDir(t)
	ids := []contract.Identity{{Namespace: "apps", Name: "web", Type: identitytype.UserAssignedMSI, ClientID: boundMI.ClientID,
		ResourceID: boundMI.ResourceID, Binding: "apps/web"}}
	if err := os.WriteFile(filepath.Join(p.files, "identities"), []byte(contract.EncodeIdentities(ids)), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// lockedBuffer is the sidecar's stderr, read while it runs.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
	// exited is closed when the sidecar has exited.
	exited chan struct{}
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// environMarker is in the sidecar's environment, which no other process of the pod may read.
const environMarker = "PODIDENTITY_TEST_ENVIRON_MARKER=not-for-other-processes"

// startSidecar starts the built sidecar in the pod's namespace, inside the sidecar cgroup and, as containerd
// does, in a cgroup namespace of its own. wrap (setpriv) runs it when not empty; uid 0 keeps the caller's.
func (p *pod) startSidecar(t *testing.T, wrap []string, uid uint32, args ...string) (*exec.Cmd, *lockedBuffer) {
	t.Helper()
	argv := append(append(append([]string(nil), wrap...), sidecarBinary(t),
		"--identities-file="+filepath.Join(p.files, "identities"), "--secrets-dir="+p.files,
		fmt.Sprintf("--health-address=127.0.0.1:%d", contract.SidecarHealthPort)), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = []string{"POD_NAME=web-0", "POD_NAMESPACE=apps", environMarker}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWCGROUP}
	if uid != 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uid, Gid: uid, Groups: []uint32{}}
	}
	p.sidecar.Into(cmd)
	out := &lockedBuffer{exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = out, out
	if err := p.link.Pod.Start(cmd); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait(); close(out.exited) }()
	// Before the cgroups' and namespaces' removal (registered earlier, so run later).
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-out.exited
		if t.Failed() {
			t.Logf("sidecar output:\n%s", out.String())
		}
	})
	return cmd, out
}

// readyz gets the sidecar's /readyz from inside the pod's namespace.
func (p *pod) readyz(t *testing.T) (int, string) {
	t.Helper()
	var status int
	var body string
	err := p.link.Pod.Do(func() error {
		// The connection is made on this thread, inside the namespace; net/http would dial on another.
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", contract.SidecarHealthPort), time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
		client := &http.Client{Transport: &http.Transport{DialContext: func(context.Context, string, string) (net.Conn, error) { return conn, nil }}}
		resp, err := client.Get("http://sidecar/readyz")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		raw, err := io.ReadAll(resp.Body)
		status, body = resp.StatusCode, string(raw)
		return err
	})
	if err != nil {
		return 0, err.Error()
	}
	return status, body
}

// run starts the test binary as a helper inside the pod's namespace, in cgroup cg, as uid, and returns its
// output line.
func (p *pod) run(t *testing.T, cg *nstest.Cgroup, uid uint32, arg string) string {
	t.Helper()
	cmd := exec.Command(helperBinary)
	cmd.Env = append(os.Environ(), helperEnv+"="+arg)
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	if uid != 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uid, Gid: uid, Groups: []uint32{}}
	}
	cg.Into(cmd)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := p.link.Pod.Start(cmd); err != nil {
		t.Fatalf("starting helper %q: %v", arg, err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper %q: %v: %s", arg, err, out.String())
	}
	return strings.TrimSpace(out.String())
}

// procStatus reads fields of /proc/<pid>/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	return fields
}

// checkEnvironHidden proves that another process of the sidecar's uid cannot read the sidecar's environment:
// it can read that of an ordinary (dumpable) process of the same uid, but not the sidecar's.
func (p *pod) checkEnvironHidden(t *testing.T, sidecarPID int) {
	t.Helper()
	uid := uint32(contract.SidecarUID)
	sleeper := exec.Command(helperBinary)
	sleeper.Env = append(os.Environ(), helperEnv+"=sleep")
	sleeper.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid, Groups: []uint32{}}}
	p.app.Into(sleeper)
	if err := p.link.Pod.Start(sleeper); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sleeper.Process.Kill(); _ = sleeper.Wait() }()
	if got := p.run(t, p.app, uid, fmt.Sprintf("read /proc/%d/environ", sleeper.Process.Pid)); got != "ok" {
		t.Fatalf("control: uid %d cannot read the environment of its own dumpable process: %q", uid, got)
	}
	if got := p.run(t, p.app, uid, fmt.Sprintf("read /proc/%d/environ", sidecarPID)); !strings.HasPrefix(got, "error permission denied") {
		t.Fatalf("uid %d reading the sidecar's /proc/%d/environ: %q, want permission denied (the sidecar must not be dumpable)", uid, sidecarPID, got)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(fmt.Sprintf("/proc/%d/environ", sidecarPID), &st); err != nil || st.Uid != 0 {
		t.Fatalf("/proc/%d/environ owned by uid %d (%v), want root's: a non-dumpable process's /proc files are", sidecarPID, st.Uid, err)
	}
	// And it does hold what it hides.
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", sidecarPID))
	if err != nil || !strings.Contains(string(b), environMarker) {
		t.Fatalf("root reading the sidecar's environment: %v, %q", err, b)
	}
}

func waitPodReady(t *testing.T, p *pod, out *lockedBuffer) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, body := p.readyz(t)
		if code == http.StatusOK {
			return
		}
		select {
		case <-out.exited:
			t.Fatal("the sidecar exited before it was ready")
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz not 200 within 20 s: %d %q", code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSidecarInstallsItsExemptionAndDropsPrivileges is the default (cgroup) mode in real namespaces and
// cgroups: the init container's table exempts nobody; the sidecar, started as root with only NET_ADMIN,
// SETUID and SETGID (as the webhook injects it), learns its cgroup, replaces the table with one exempting
// it, drops every privilege and serves. Apps in other cgroups, as root or as the sidecar's own uid, get only
// the bound identity's tokens, from the sidecar.
func TestSidecarInstallsItsExemptionAndDropsPrivileges(t *testing.T) {
	requireRoot(t)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Fatal("setpriv not found: install util-linux (apt-get install -y util-linux); it gives the sidecar exactly the container's capabilities")
	}
	p := newPod(t)
	// A container whose securityContext is runAsUser 0, capabilities drop ALL, add NET_ADMIN, SETUID, SETGID.
	// Without no_new_privs (allowPrivilegeEscalation: false would set it), so that the check below sees the
	// sidecar's own.
	wrap := []string{setpriv, "--bounding-set=-all,+net_admin,+setuid,+setgid", "--inh-caps=-all", "--"}
	cmd, out := p.startSidecar(t, wrap, 0, "--install-exemption")
	waitPodReady(t, p, out)
	pid := cmd.Process.Pid

	// The live table is the redirect exempting exactly the sidecar's cgroup.
	live, found, err := p.kernel.Live()
	if err != nil || !found {
		t.Fatalf("live table: found %v, %v", found, err)
	}
	ex := redirect.ExemptionOf(live)
	if ex.Cgroup.ID != p.sidecar.ID || ex.UID != 0 {
		t.Fatalf("the live table exempts %v, want the sidecar's cgroup (id %d):\n%s", ex, p.sidecar.ID, redirect.Render(live))
	}
	if got, want := redirect.Render(live), redirect.Render(redirect.Desired(redirect.DefaultConfig().WithExemption(ex))); got != want {
		t.Fatalf("live table:\n%s\nwant:\n%s", got, want)
	}
	// The log is written in batches (at most 50 ms late).
	installed := fmt.Sprintf(`"cgroupID":%d,"cgroupLevel":%d`, ex.Cgroup.ID, ex.Cgroup.Level)
	for deadline := time.Now().Add(2 * time.Second); !strings.Contains(out.String(), installed); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no info line naming the installed cgroup (%s)", installed)
		}
	}

	// The serving process has nothing left.
	st := procStatus(t, pid)
	want := map[string]string{
		"Uid": "15078 15078 15078 15078", "Gid": "15078 15078 15078 15078", "Groups": "",
		"CapInh": "0000000000000000", "CapPrm": "0000000000000000", "CapEff": "0000000000000000", "CapAmb": "0000000000000000",
		"NoNewPrivs": "1",
	}
	for k, v := range want {
		if st[k] != v {
			t.Errorf("/proc/%d/status %s: %q, want %q", pid, k, st[k], v)
		}
	}
	p.checkEnvironHidden(t, pid)

	// Apps, as root and as the sidecar's uid, in another cgroup: the bound identity's token, from the sidecar.
	for _, uid := range []uint32{0, contract.SidecarUID} {
		got := p.run(t, p.app, uid, "get "+tokenURL)
		status, body, _ := strings.Cut(got, " ")
		var answer map[string]string
		if status != "200" || json.Unmarshal([]byte(body), &answer) != nil || answer["client_id"] != boundMI.ClientID {
			t.Fatalf("app as uid %d: %q, want 200 with the bound identity's token", uid, got)
		}
		if appid := jwttest.Claims(t, answer["access_token"])["appid"]; appid != boundMI.ClientID {
			t.Fatalf("app as uid %d: token for %v, want %s", uid, appid, boundMI.ClientID)
		}
		// Attached to the node, not bound to the pod: the sidecar refuses, IMDS never hears of it.
		got = p.run(t, p.app, uid, "get "+tokenURL+"&client_id="+unboundMI.ClientID)
		if !strings.HasPrefix(got, "400 ") || !strings.Contains(got, "is not an identity bound to this pod") {
			t.Fatalf("app as uid %d asking for the unbound identity: %q, want the sidecar's 400", uid, got)
		}
	}
	c := p.emu.Counters()
	if c.TokensByClientID[unboundMI.ClientID] != 0 {
		t.Fatalf("IMDS issued %d tokens for the unbound identity", c.TokensByClientID[unboundMI.ClientID])
	}
	// Both apps got the one token the sidecar fetched (its cache); an app reaching IMDS itself would show.
	if c.TokenRequests != 1 || c.TokensByClientID[boundMI.ClientID] != 1 {
		t.Fatalf("IMDS saw %d token requests, issued %v; want exactly the sidecar's one fetch", c.TokenRequests, c.TokensByClientID)
	}
}

// TestSidecarNotReadyUntilExempted: a sidecar that does not install the exemption (started as its uid, as in
// CNI mode before the node agent acts) finds its own requests coming back to it: it stays not ready, says why,
// and the node's IMDS never hears from it, for the app's token requests neither. Once the exemption is
// installed from outside (as the node agent would), it becomes ready and serves, although conntrack keeps
// its earlier connections on the redirect.
func TestSidecarNotReadyUntilExempted(t *testing.T) {
	requireRoot(t)
	p := newPod(t)
	cmd, out := p.startSidecar(t, nil, contract.SidecarUID)

	var code int
	var body string
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if code, body = p.readyz(t); code == http.StatusOK {
			t.Fatal("/readyz 200 without the exemption")
		}
	}
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "the redirect's exemption for the sidecar is not installed") {
		t.Fatalf("/readyz %d %q, want 503 naming the missing exemption", code, body)
	}
	got := p.run(t, p.app, 0, "get "+tokenURL)
	if !strings.HasPrefix(got, "503 ") || !strings.Contains(got, "exemption for the sidecar is not installed") {
		t.Fatalf("app's token request: %q, want a 503 naming the missing exemption", got)
	}
	if c := p.emu.Counters(); c.TokenRequests != 0 || c.Other != 0 {
		t.Fatalf("the node's IMDS saw %d token and %d other requests from a sidecar without its exemption", c.TokenRequests, c.Other)
	}
	// Several probes in 3 s, one log line (rate-limited).
	time.Sleep(100 * time.Millisecond) // the log is written in batches every 50 ms
	if n := strings.Count(out.String(), `"msg":"not ready: node IMDS not confirmed"`); n != 1 {
		t.Fatalf("%d \"not ready\" log lines, want 1", n)
	}
	// Not root, and still not dumpable.
	if st := procStatus(t, cmd.Process.Pid); st["Uid"] != "15078 15078 15078 15078" || st["CapEff"] != "0000000000000000" {
		t.Fatalf("sidecar status: Uid %q CapEff %q", st["Uid"], st["CapEff"])
	}
	p.checkEnvironHidden(t, cmd.Process.Pid)

	// The node agent's part, from the node's cgroup namespace: levels count from the real root there.
	exempt := redirect.Exemption{Cgroup: redirect.Cgroup{ID: p.sidecar.ID, Level: p.sidecar.Level}}
	if _, err := p.kernel.Apply(redirect.Desired(redirect.DefaultConfig().WithExemption(exempt))); err != nil {
		t.Fatal(err)
	}
	waitPodReady(t, p, out)
	got = p.run(t, p.app, contract.SidecarUID, "get "+tokenURL)
	if !strings.HasPrefix(got, "200 ") || !strings.Contains(got, boundMI.ClientID) {
		t.Fatalf("app's token request once exempted: %q, want the bound identity's token", got)
	}
	if c := p.emu.Counters(); c.TokenRequests != 1 || c.TokensByClientID[unboundMI.ClientID] != 0 {
		t.Fatalf("IMDS saw %d token requests, issued %v; want the sidecar's one fetch", c.TokenRequests, c.TokensByClientID)
	}
}

// requireRoot skips the namespace tests, saying why, unless they can run.
func requireRoot(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping in -short mode: starts the sidecar binary in network namespaces and cgroups of its own, with nftables rules")
	}
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to create network namespaces, cgroups and nftables rules and to start the sidecar as root; " +
			"run `sudo go test ./sidecar/cmd/...`")
	}
	nstest.Require(t) // the tools (ip, nft)
}

// TestSidecarStartFailuresSayWhatToDo: a sidecar that cannot do its privileged start-up exits non-zero before
// serving, says what is wrong and what to do, and leaves the init container's table as it was.
func TestSidecarStartFailuresSayWhatToDo(t *testing.T) {
	requireRoot(t)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Fatal("setpriv not found: install util-linux (apt-get install -y util-linux)")
	}
	p := newPod(t)
	before, _, err := p.kernel.Live()
	if err != nil {
		t.Fatal(err)
	}
	withCaps := func(caps string) []string {
		return []string{setpriv, "--bounding-set=-all," + caps, "--inh-caps=-all", "--"}
	}
	tests := []struct {
		name string
		wrap []string
		uid  uint32
		args []string
		want []string
	}{
		{"root without NET_ADMIN", withCaps("+setuid,+setgid"), 0, []string{"--install-exemption"},
			[]string{"without the capabilities NET_ADMIN", "changed the injected podidentity-sidecar container"}},
		{"root without SETUID", withCaps("+net_admin,+setgid"), 0, []string{"--install-exemption"},
			[]string{"without the capabilities SETUID", "runAsUser: 0"}},
		{"root without SETUID or SETGID, no exemption to install", withCaps("+net_admin"), 0, nil,
			[]string{"without the capabilities SETGID, SETUID"}},
		{"not root", nil, contract.SidecarUID, []string{"--install-exemption"},
			[]string{"--install-exemption: the sidecar must start as root but runs as uid 15078", "runAsUser: 0"}},
		{"asked to serve as root", withCaps("+net_admin,+setuid,+setgid"), 0, []string{"--install-exemption", "--run-as-uid=0"},
			[]string{"--run-as-uid=0: the sidecar must never serve as root"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd, out := p.startSidecar(t, tt.wrap, tt.uid, tt.args...)
			select {
			case <-out.exited:
			case <-time.After(10 * time.Second):
				t.Fatal("the sidecar did not exit")
			}
			if code := cmd.ProcessState.ExitCode(); code != 1 {
				t.Errorf("exit code %d, want 1", code)
			}
			for _, w := range tt.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q", w)
				}
			}
			if strings.Contains(out.String(), `"msg":"serving"`) {
				t.Error("the sidecar served")
			}
			live, _, err := p.kernel.Live()
			if err != nil || redirect.Render(live) != redirect.Render(before) {
				t.Fatalf("the table changed (%v):\n%s", err, redirect.Render(live))
			}
			if t.Failed() {
				t.Logf("output:\n%s", out.String())
			}
		})
	}
}
