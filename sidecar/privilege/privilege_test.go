package privilege

import (
	"flag"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/internal/redirect"
)

func TestFlagsDefaultToTheSidecarUID(t *testing.T) {
	var o Options
	fs := flag.NewFlagSet("sidecar", flag.ContinueOnError)
	o.BindFlags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if o.InstallExemption || o.RunAsUID != contract.SidecarUID || o.RunAsGID != contract.SidecarUID {
		t.Fatalf("defaults %+v, want no exemption and uid/gid %d", o, contract.SidecarUID)
	}
	if err := fs.Parse([]string{"--install-exemption", "--run-as-uid=2000", "--run-as-gid=3000"}); err != nil {
		t.Fatal(err)
	}
	if !o.InstallExemption || o.RunAsUID != 2000 || o.RunAsGID != 3000 {
		t.Fatalf("parsed %+v", o)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name     string
		uid, gid uint
		wantErr  string
	}{
		{"defaults", contract.SidecarUID, contract.SidecarUID, ""},
		{"uid 0", 0, 1000, "--run-as-uid=0: the sidecar must never serve as root"},
		{"gid 0", 1000, 0, "--run-as-gid=0: the sidecar must never serve as root"},
		{"uid (uid_t)-1 means no change to the kernel", 1<<32 - 1, 1000, "--run-as-uid=4294967295 is not a valid id"},
		{"gid above 32 bits", 1000, 1 << 32, "--run-as-gid=4294967296 is not a valid id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Options{RunAsUID: tt.uid, RunAsGID: tt.gid}.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestRedirectConfig(t *testing.T) {
	imds := netip.MustParseAddr(contract.IMDSAddress)
	tests := []struct {
		name     string
		endpoint string
		listen   string
		want     redirect.Config
		wantErr  string
	}{
		{name: "the webhook's flags", endpoint: "http://169.254.169.254", listen: "127.0.0.1:15079",
			want: redirect.Config{IMDSAddress: imds, IMDSPort: 80, SidecarPort: 15079}},
		{name: "trailing slash, explicit port", endpoint: "http://169.254.169.254:8080/", listen: "127.0.0.1:16000",
			want: redirect.Config{IMDSAddress: imds, IMDSPort: 8080, SidecarPort: 16000}},
		{name: "https defaults to 443", endpoint: "https://169.254.169.254", listen: "localhost:15079",
			want: redirect.Config{IMDSAddress: imds, IMDSPort: 443, SidecarPort: 15079}},
		{name: "a name, not an address", endpoint: "http://metadata.internal", listen: "127.0.0.1:15079",
			wantErr: "needs the IMDS as an IPv4 address"},
		{name: "IPv6", endpoint: "http://[fd00::1]", listen: "127.0.0.1:15079", wantErr: "needs the IMDS as an IPv4 address"},
		{name: "no scheme", endpoint: "169.254.169.254", listen: "127.0.0.1:15079", wantErr: "is not an http URL"},
		{name: "port 0", endpoint: "http://169.254.169.254:0", listen: "127.0.0.1:15079", wantErr: "give a port from 1 to 65535"},
		{name: "loopback IMDS would redirect the sidecar's own port", endpoint: "http://127.0.0.1:8080", listen: "127.0.0.1:15079",
			wantErr: "is a loopback address"},
		{name: "listen address without port", endpoint: "http://169.254.169.254", listen: "127.0.0.1", wantErr: "--listen-address \"127.0.0.1\""},
		{name: "listen on another loopback address", endpoint: "http://169.254.169.254", listen: "127.0.0.2:15079",
			wantErr: "the sidecar must listen on 127.0.0.1"},
		{name: "listen on a random port", endpoint: "http://169.254.169.254", listen: "127.0.0.1:0", wantErr: "the port must be fixed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := RedirectConfig(tt.endpoint, tt.listen)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
	// What the sidecar installs by default is what the init container installs, plus the exemption.
	got, err := RedirectConfig("http://"+contract.IMDSAddress, "127.0.0.1:15079")
	if err != nil || got != redirect.DefaultConfig() {
		t.Fatalf("default flags give %+v (%v), want redirect.DefaultConfig() %+v", got, err, redirect.DefaultConfig())
	}
}

// dropped is /proc/<pid>/status of a sidecar after the drop (Linux 6.18), trimmed.
const dropped = `Name:	podidentity-sid
Umask:	0022
State:	S (sleeping)
Tgid:	26775
Uid:	15078	15078	15078	15078
Gid:	15078	15078	15078	15078
FDSize:	64
Groups:	 
NStgid:	26775
CapInh:	0000000000000000
CapPrm:	0000000000000000
CapEff:	0000000000000000
CapBnd:	000001fffeffffff
CapAmb:	0000000000000000
NoNewPrivs:	1
Seccomp:	0
`

func TestParseStatus(t *testing.T) {
	s, err := ParseStatus([]byte(dropped))
	if err != nil {
		t.Fatal(err)
	}
	want := Status{UID: [4]uint32{15078, 15078, 15078, 15078}, GID: [4]uint32{15078, 15078, 15078, 15078},
		CapBnd: 0x000001fffeffffff, NoNewPrivs: true}
	if s.UID != want.UID || s.GID != want.GID || len(s.Groups) != 0 || s.CapBnd != want.CapBnd || !s.NoNewPrivs ||
		s.CapInh|s.CapPrm|s.CapEff|s.CapAmb != 0 {
		t.Fatalf("parsed %+v, want %+v", s, want)
	}
	if err := s.Dropped(15078, 15078); err != nil {
		t.Fatalf("a fully dropped status: %v", err)
	}

	root := strings.NewReplacer("15078", "0", "Groups:\t ", "Groups:\t0 1 2 ", "CapPrm:\t0000000000000000", "CapPrm:\t000001ffffffffff",
		"NoNewPrivs:\t1", "NoNewPrivs:\t0").Replace(dropped)
	s, err = ParseStatus([]byte(root))
	if err != nil {
		t.Fatal(err)
	}
	if s.UID != [4]uint32{} || len(s.Groups) != 3 || s.Groups[2] != 2 || s.CapPrm != 0x000001ffffffffff || s.NoNewPrivs {
		t.Fatalf("root status parsed as %+v", s)
	}

	// The live kernel's own format parses, whoever runs the test.
	live, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	s, err = ParseStatus(live)
	if err != nil {
		t.Fatalf("/proc/self/status: %v", err)
	}
	if s.UID[1] != uint32(os.Geteuid()) || s.GID[1] != uint32(os.Getegid()) {
		t.Fatalf("/proc/self/status: effective ids %d/%d, want %d/%d", s.UID[1], s.GID[1], os.Geteuid(), os.Getegid())
	}
}

func TestParseStatusRefusesBadOrMissingFields(t *testing.T) {
	tests := []struct {
		name, old, new, wantErr string
	}{
		{"kernel without NoNewPrivs", "NoNewPrivs:\t1\n", "", "lacks NoNewPrivs"},
		{"kernel without CapAmb", "CapAmb:\t0000000000000000\n", "", "lacks CapAmb"},
		{"three uids", "Uid:\t15078\t15078\t15078\t15078", "Uid:\t15078\t15078\t15078", "field Uid"},
		{"capability not hex", "CapEff:\t0000000000000000", "CapEff:\tzz", "field CapEff"},
		{"group not a number", "Groups:\t ", "Groups:\t1 x", "field Groups"},
		{"NoNewPrivs not a flag", "NoNewPrivs:\t1", "NoNewPrivs:\t2", "field NoNewPrivs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := strings.Replace(dropped, tt.old, tt.new, 1)
			if in == dropped {
				t.Fatalf("%q is not in the sample", tt.old)
			}
			if _, err := ParseStatus([]byte(in)); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestDroppedListsEveryLeftover(t *testing.T) {
	ok := Status{UID: [4]uint32{15078, 15078, 15078, 15078}, GID: [4]uint32{15078, 15078, 15078, 15078}, NoNewPrivs: true,
		CapBnd: ^uint64(0)} // the bounding set is not a privilege once nothing is permitted
	tests := []struct {
		name   string
		change func(*Status)
		want   []string
	}{
		{"saved uid still root (setresuid misuse)", func(s *Status) { s.UID[2] = 0 }, []string{"saved uid 0 (want 15078)"}},
		{"filesystem gid", func(s *Status) { s.GID[3] = 0 }, []string{"filesystem gid 0 (want 15078)"}},
		{"supplementary groups", func(s *Status) { s.Groups = []uint32{0} }, []string{"supplementary groups [0]"}},
		{"inheritable capability", func(s *Status) { s.CapInh = 1 << 12 }, []string{"CapInh 0000000000001000"}},
		{"permitted and effective NET_ADMIN", func(s *Status) { s.CapPrm, s.CapEff = 1<<12, 1<<12 },
			[]string{"CapPrm 0000000000001000", "CapEff 0000000000001000"}},
		{"ambient capability", func(s *Status) { s.CapAmb = 1 }, []string{"CapAmb 0000000000000001"}},
		{"no_new_privs unset", func(s *Status) { s.NoNewPrivs = false }, []string{"NoNewPrivs 0"}},
		{"wrong uid everywhere", func(s *Status) { s.UID = [4]uint32{1000, 1000, 1000, 1000} },
			[]string{"real uid 1000", "effective uid 1000", "saved uid 1000", "filesystem uid 1000"}},
	}
	if err := ok.Dropped(15078, 15078); err != nil {
		t.Fatalf("baseline: %v", err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := ok
			tt.change(&s)
			err := s.Dropped(15078, 15078)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestMissingCapabilities(t *testing.T) {
	const netAdmin, setuid, setgid = 1 << 12, 1 << 7, 1 << 6
	tests := []struct {
		name    string
		eff     uint64
		install bool
		want    string
	}{
		{"the webhook's three, installing", netAdmin | setuid | setgid, true, ""},
		{"full root, installing", 0x000001ffffffffff, true, ""},
		{"no NET_ADMIN, installing", setuid | setgid, true, "NET_ADMIN"},
		{"no NET_ADMIN, not installing", setuid | setgid, false, ""},
		{"only NET_ADMIN", netAdmin, true, "SETGID SETUID"},
		{"nothing", 0, true, "NET_ADMIN SETGID SETUID"},
		{"nothing, not installing", 0, false, "SETGID SETUID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := strings.Join(Status{CapEff: tt.eff}.MissingCapabilities(tt.install), " "); got != tt.want {
				t.Fatalf("missing %q, want %q", got, tt.want)
			}
		})
	}
}
