package redirect

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

func TestValidate(t *testing.T) {
	def := DefaultConfig()
	with := func(edit func(*Config)) Config { c := def; edit(&c); return c }
	cases := []struct {
		name    string
		cfg     Config
		wantErr string // empty: valid
	}{
		{"defaults", def, ""},
		{"other IPv4 endpoint", with(func(c *Config) { c.IMDSAddress = netip.MustParseAddr("169.254.170.2") }), ""},
		{"no address", with(func(c *Config) { c.IMDSAddress = netip.Addr{} }), "pass --imds-address=169.254.169.254"},
		{"IPv6 address", with(func(c *Config) { c.IMDSAddress = netip.MustParseAddr("fd00:ec2::254") }), "IPv4 only"},
		{"IPv4-mapped IPv6 address", with(func(c *Config) { c.IMDSAddress = netip.MustParseAddr("::ffff:169.254.169.254") }), "IPv4 only"},
		{"loopback address", with(func(c *Config) { c.IMDSAddress = netip.MustParseAddr("127.0.0.1") }), "loopback"},
		{"IMDS port 0", with(func(c *Config) { c.IMDSPort = 0 }), "--imds-port=80"},
		{"sidecar port 0", with(func(c *Config) { c.SidecarPort = 0 }), "--sidecar-port=15079"},
		{"uid exemption", with(func(c *Config) { c.Exemption.UID = 15078 }), ""},
		{"cgroup exemption", with(func(c *Config) { c.Exemption.Cgroup = Cgroup{ID: 4242, Level: 4} }), ""},
		{"both exemptions", with(func(c *Config) { c.Exemption = Exemption{UID: 15078, Cgroup: Cgroup{ID: 4242, Level: 4}} }), "one way only"},
		{"root cgroup", with(func(c *Config) { c.Exemption.Cgroup = Cgroup{ID: 1, Level: 0} }), "root cgroup"},
		{"own cgroup namespace's root", with(func(c *Config) { c.Exemption.Cgroup = Cgroup{ID: 4242, Level: 0} }), ""},
		{"cgroup too deep", with(func(c *Config) { c.Exemption.Cgroup = Cgroup{ID: 4242, Level: MaxCgroupLevel + 1} }), "deeper than"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("error %v, want one saying %q", err, tc.wantErr)
			}
		})
	}
}

// TestDesiredFollowsConfig: every setting shows up where it belongs and nowhere else, for each way of exempting
// the sidecar (and for none), and the exemption reads back from the ruleset.
func TestDesiredFollowsConfig(t *testing.T) {
	base := Config{IMDSAddress: netip.MustParseAddr("169.254.170.2"), IMDSPort: 8080, SidecarPort: 8181}
	const (
		dnat  = "meta nfproto ipv4 ip daddr 169.254.170.2 meta l4proto tcp th dport 8080 dnat ip to 127.0.0.1:8181"
		guard = "meta nfproto ipv4 ip daddr 169.254.170.2 ct state new reject with icmpx admin-prohibited"
	)
	cases := []struct {
		name      string
		exemption Exemption
		exempt    string // the exemption's match, "" for none
	}{
		{"nobody exempt", Exemption{}, ""},
		{"cgroup", Exemption{Cgroup: Cgroup{ID: 1 << 40, Level: 4}}, "socket cgroupv2 level 4 1099511627776"},
		{"uid", Exemption{UID: 2000}, "meta skuid 2000"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rs := Desired(base.WithExemption(tc.exemption))
			if rs.Family != TableFamily || rs.Table != TableName {
				t.Fatalf("table %v %q, want inet %q", rs.Family, rs.Table, TableName)
			}
			want := map[string][]string{RedirectChain: {dnat}, GuardChain: {guard}}
			if tc.exempt != "" {
				accept := "meta nfproto ipv4 ip daddr 169.254.170.2 " + tc.exempt + " accept"
				want = map[string][]string{RedirectChain: {accept, dnat}, GuardChain: {accept, guard}}
			}
			checkChains(t, rs, want)
			if got := ExemptionOf(rs); got != tc.exemption {
				t.Errorf("ExemptionOf = %+v, want %+v", got, tc.exemption)
			}
		})
	}
}

func TestFence(t *testing.T) {
	rs := Fence(Config{IMDSAddress: netip.MustParseAddr("169.254.170.2"), IMDSPort: 8080, SidecarPort: 8181})
	checkChains(t, rs, map[string][]string{FenceChain: {
		"meta nfproto ipv4 ip daddr 169.254.170.2 meta l4proto tcp reject with tcp reset",
		"meta nfproto ipv4 ip daddr 169.254.170.2 reject with icmpx admin-prohibited",
	}})
	if got := ExemptionOf(rs); !got.IsZero() {
		t.Errorf("a fence exempts %v", got)
	}
}

func checkChains(t *testing.T, rs Ruleset, want map[string][]string) {
	t.Helper()
	if len(rs.Chains) != len(want) {
		t.Fatalf("%d chains, want %d", len(rs.Chains), len(want))
	}
	for _, c := range rs.Chains {
		rules, ok := want[c.Name]
		if !ok {
			t.Fatalf("unexpected chain %s", c.Name)
		}
		if len(c.Rules) != len(rules) {
			t.Fatalf("chain %s has %d rules, want %d", c.Name, len(c.Rules), len(rules))
		}
		for i, r := range c.Rules {
			if got := strings.Join(decompile(r.Exprs), " "); got != rules[i] {
				t.Errorf("chain %s rule %d:\n got %s\nwant %s", c.Name, i, got, rules[i])
			}
			if !strings.HasPrefix(r.Comment, CommentPrefix) {
				t.Errorf("chain %s rule %d comment %q does not start with %q", c.Name, i, r.Comment, CommentPrefix)
			}
		}
	}
}

// TestRenderTellsApartWhatDiffers: the renderer is the comparison Verify makes, so expressions that act
// differently must never print alike, and forms the kernel reports for the same thing must print alike.
func TestRenderTellsApartWhatDiffers(t *testing.T) {
	addr := &expr.Immediate{Register: 1, Data: []byte{127, 0, 0, 1}}
	port := &expr.Immediate{Register: 2, Data: []byte{0x3a, 0xd7}}
	otherAddr := &expr.Immediate{Register: 3, Data: []byte{127, 0, 0, 2}}
	cases := []struct {
		name  string
		exprs []expr.Any
		want  string
	}{
		{"single-value nat", []expr.Any{addr, port, &expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4,
			RegAddrMin: 1, RegProtoMin: 2}}, "dnat ip to 127.0.0.1:15063"},
		{"the kernel's form of the same nat", []expr.Any{addr, port, &expr.NAT{Type: expr.NATTypeDestNAT,
			Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegAddrMax: 1, RegProtoMin: 2, RegProtoMax: 2}},
			"dnat ip to 127.0.0.1:15063"},
		{"a real address range", []expr.Any{addr, port, otherAddr, &expr.NAT{Type: expr.NATTypeDestNAT,
			Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegAddrMax: 3, RegProtoMin: 2}},
			"dnat ip to 127.0.0.1-127.0.0.2:15063"},
		{"nat flags", []expr.Any{addr, &expr.NAT{Type: expr.NATTypeSourceNAT, Family: unix.NFPROTO_IPV4,
			RegAddrMin: 1, Random: true, Persistent: true}}, "snat ip to 127.0.0.1 random persistent"},
		{"compare on an unloaded register", []expr.Any{&expr.Cmp{Op: expr.CmpOpEq, Register: 4, Data: []byte{1}}},
			"reg 4 0x01"},
		{"masked value other than ct state", []expr.Any{&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte{0, 0, 0, 1}, Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)}}, "meta mark & 0x00000001 != 0x00000000"},
		{"ct state with several bits", []expr.Any{&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: nativeUint32(expr.CtStateBitNEW | expr.CtStateBitESTABLISHED),
				Xor: make([]byte, 4)}, &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)}},
			"ct state established,new"},
		{"uid not equal", []expr.Any{&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: nativeUint32(7)}}, "meta skuid != 7"},
		{"other payload", []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 9, Len: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{6}}}, "@nh,72,8 0x06"},
		{"cgroup", []expr.Any{&expr.Socket{Key: expr.SocketKeyCgroupv2, Level: 3, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint64(77)}}, "socket cgroupv2 level 3 77"},
		{"socket mark", []expr.Any{&expr.Socket{Key: expr.SocketKeyMark, Register: 1}},
			"unsupported-expression(*expr.Socket&{Key:1 Level:0 Register:1})"},
		{"jump", []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: "elsewhere"}}, "jump elsewhere"},
		{"tcp reset", []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}}, "reject with tcp reset"},
		{"unknown expression", []expr.Any{&expr.Log{Key: 1 << unix.NFTA_LOG_PREFIX, Data: []byte("x")}},
			"unsupported-expression(*expr.Log&{Level:0 Flags:0 Key:4 Snaplen:0 Group:0 QThreshold:0 Data:[120]})"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := strings.Join(decompile(tc.exprs), " "); got != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}

// nativeUint32 is how the kernel keeps ct state bits and uids: host byte order.
func nativeUint32(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

func TestRenderChains(t *testing.T) {
	rs := Ruleset{Family: TableFamily, Table: "t", Chains: []Chain{
		{Name: "regular", Rules: []Rule{{Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}, Comment: `say "hi"`}}},
		{Name: "base", Hook: &Hook{Type: "filter", Hooknum: unix.NF_INET_LOCAL_IN, Priority: -5, Policy: 0}},
	}}
	want := "table inet t {\n\tchain regular {\n\t\taccept comment \"say \\\"hi\\\"\"\n\t}\n\n" +
		"\tchain base {\n\t\ttype filter hook input priority -5; policy drop;\n\t}\n}\n"
	if got := Render(rs); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

// TestRenderTableFlags: a dormant table holds its chains but the kernel skips them, so it must not render like
// an active one.
func TestRenderTableFlags(t *testing.T) {
	active := Ruleset{Family: TableFamily, Table: "t"}
	dormant := active
	dormant.TableFlags = unix.NFT_TABLE_F_DORMANT | 0x4
	if got, want := Render(dormant), "table inet t {\n\tflags dormant,0x4;\n}\n"; got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if Render(active) == Render(dormant) {
		t.Error("a dormant table renders like an active one")
	}
}

func TestLineDiff(t *testing.T) {
	cases := []struct {
		name, want, got, diff string
	}{
		{"missing line", "a\nb\nc", "a\nc", "  missing:    b"},
		{"extra line", "a\nc", "a\nb\nc", "  unexpected: b"},
		{"duplicate", "a\nb", "a\nb\nb", "  unexpected: b"},
		{"changed line", "a\nb", "a\nB", "  missing:    b\n  unexpected: B"},
		{"reordered", "a\nb", "b\na", "  the same rules in a different order or layout"},
		{"blank lines are not news", "a\n\nb", "a\nb", "  the same rules in a different order or layout"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := lineDiff(tc.want, tc.got); got != tc.diff {
				t.Errorf("got\n%s\nwant\n%s", got, tc.diff)
			}
		})
	}
}

// TestExplain maps the errnos the kernel answers with to the documented fail-closed reasons.
func TestExplain(t *testing.T) {
	opErr := func(errno unix.Errno) error { return &netlink.OpError{Op: "receive", Err: errno} }
	cases := []struct {
		name   string
		at     stage
		err    error
		reason error // nil: no documented reason, the error is passed on with its stage
	}{
		{"no CAP_NET_ADMIN on read", stageRead, opErr(unix.EPERM), ErrNoNetAdmin},
		{"no CAP_NET_ADMIN on write, wrapped", stageWrite, fmt.Errorf("conn.Receive: %w", opErr(unix.EPERM)), ErrNoNetAdmin},
		{"EACCES (LSM)", stageWrite, opErr(unix.EACCES), ErrNoNetAdmin},
		{"no nfnetlink", stageConnect, opErr(unix.EPROTONOSUPPORT), ErrNoNfnetlink},
		{"no nf_tables subsystem", stageRead, opErr(unix.EINVAL), ErrNoNfTables},
		{"no nat chain type", stageWrite, opErr(unix.ENOENT), ErrNoNfTables},
		{"no nf_tables in a batch", stageWrite, opErr(unix.EOPNOTSUPP), ErrNoNfTables},
		{"ENOENT on read is not a missing module", stageRead, opErr(unix.ENOENT), nil},
		{"other error", stageWrite, opErr(unix.ENOBUFS), nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := explain(tc.at, tc.err)
			if !errors.Is(got, tc.err) {
				t.Errorf("%v does not wrap the original error", got)
			}
			if !strings.HasPrefix(got.Error(), string(tc.at)+": ") {
				t.Errorf("%q does not start with the stage %q", got, tc.at)
			}
			for _, reason := range []error{ErrNoNetAdmin, ErrNoNfnetlink, ErrNoNfTables} {
				want := errors.Is(reason, tc.reason) // the case's own sentinel (nil: none)
				if errors.Is(got, reason) != want {
					t.Errorf("errors.Is(%v, %v) = %v", got, reason, !want)
				}
			}
		})
	}
}
