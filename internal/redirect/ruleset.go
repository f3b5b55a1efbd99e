package redirect

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The names below identify everything the project owns in a pod's network namespace. Only the table is ever
// looked up, replaced or deleted; nothing outside it is touched.
const (
	// TableName is the one table the project owns (family inet).
	TableName = "podidentity"
	// RedirectChain is the nat chain on the output hook that sends IMDS traffic to the sidecar.
	RedirectChain = "imds-redirect"
	// GuardChain is the filter chain on the output hook that refuses every other new flow to the IMDS address.
	GuardChain = "imds-guard"
	// CommentPrefix starts every rule's comment, so a rule is recognisable wherever it is listed.
	CommentPrefix = "podidentity: "
)

// TableFamily is the family of the project's table: inet sees IPv4 and IPv6, so one table holds the whole policy.
const TableFamily = nftables.TableFamilyINet

// Ruleset is a table as plain data: what Desired builds, what Render prints, and what Live reads back.
type Ruleset struct {
	Family nftables.TableFamily
	Table  string
	// TableFlags are the table's flags as the kernel reports them; the desired table has none. A dormant table
	// (flag 0x1) keeps its chains but the kernel does not run them, so the flags are part of what is compared.
	TableFlags uint32
	Chains     []Chain
}

// Chain is a chain and its rules in order. Hook is nil for a regular (non-base) chain.
type Chain struct {
	Name  string
	Hook  *Hook
	Rules []Rule
}

// Hook makes a chain a base chain: the kernel calls it for every packet at that hook.
type Hook struct {
	Type     nftables.ChainType
	Hooknum  nftables.ChainHook
	Priority nftables.ChainPriority
	Policy   nftables.ChainPolicy
}

// Rule is one rule: its expressions, exactly as they go to (and come back from) the kernel, and its comment.
type Rule struct {
	Exprs   []expr.Any
	Comment string
}

// Register 1 is the only one used for matching; the DNAT target takes its address in 1 and port in 2.
const (
	regMatch = 1
	regAddr  = 1
	regPort  = 2
)

// FenceChain is the filter chain of a pod without a token sidecar: it refuses every flow to the IMDS address.
const FenceChain = "imds-fence"

// Desired is the redirect ruleset for cfg. It is a pure function of cfg: same config, same ruleset, in the same
// order.
//
// Policy (see init/README.md):
//   - TCP to IMDS address:port from every socket but the sidecar's is DNAT'ed to 127.0.0.1:<sidecar port>.
//   - The sidecar's sockets (cfg.Exemption: its cgroup, or in the legacy mode its uid) pass untouched, to
//     every port of the IMDS address. With no exemption nothing reaches the real IMDS.
//   - Any other new flow to the IMDS address (other ports, UDP, ICMP) is rejected, so that nothing but the
//     sidecar can reach the node's metadata service. Replies to the sidecar's flows are established flows and
//     are not touched.
//   - IPv6 is left alone: Azure's IMDS has no IPv6 address, and an IPv6 socket reaching it through an
//     IPv4-mapped address (::ffff:169.254.169.254) sends IPv4 packets, which these rules see.
func Desired(cfg Config) Ruleset {
	imds := cfg.IMDSAddress
	var exemptRedirect, exemptGuard []Rule
	if match, who := exemptionMatch(cfg.Exemption); match != nil {
		exemptRedirect = []Rule{{
			Exprs:   concat(matchIPv4Daddr(imds), match, verdict(expr.VerdictAccept)),
			Comment: CommentPrefix + who + " reaches the real IMDS untranslated",
		}}
		exemptGuard = []Rule{{
			Exprs:   concat(matchIPv4Daddr(imds), match, verdict(expr.VerdictAccept)),
			Comment: CommentPrefix + who + " may use any port of the IMDS address",
		}}
	}
	return Ruleset{
		Family: TableFamily,
		Table:  TableName,
		Chains: []Chain{
			{
				Name: RedirectChain,
				Hook: &Hook{
					Type:     nftables.ChainTypeNAT,
					Hooknum:  *nftables.ChainHookOutput,
					Priority: *nftables.ChainPriorityNATDest,
					Policy:   nftables.ChainPolicyAccept,
				},
				Rules: append(exemptRedirect, Rule{
					Exprs: concat(matchIPv4Daddr(imds), matchTCPDport(cfg.IMDSPort),
						dnatIPv4(netip.AddrFrom4([4]byte{127, 0, 0, 1}), cfg.SidecarPort)),
					Comment: CommentPrefix + fmt.Sprintf("every other IMDS call goes to the sidecar on 127.0.0.1:%d",
						cfg.SidecarPort),
				}),
			},
			{
				Name: GuardChain,
				Hook: &Hook{
					Type:     nftables.ChainTypeFilter,
					Hooknum:  *nftables.ChainHookOutput,
					Priority: *nftables.ChainPriorityFilter,
					Policy:   nftables.ChainPolicyAccept,
				},
				Rules: append(exemptGuard, Rule{
					// Redirected flows arrive here with 127.0.0.1 as destination (nat runs first), so this
					// only sees what the redirect did not take.
					Exprs:   concat(matchIPv4Daddr(imds), matchCtStateNew(), rejectAdminProhibited()),
					Comment: CommentPrefix + "no other new flow may reach the IMDS address",
				}),
			},
		},
	}
}

// Fence is the ruleset of a pod that has no token sidecar (CNI mode): nothing in it may reach the IMDS
// address. Unlike the redirect's guard it refuses established flows too, so that a pod fenced after it started
// (repaired by the node agent) loses the connections it already had; TCP gets a reset, so that a client fails
// at once instead of retransmitting.
func Fence(cfg Config) Ruleset {
	imds := cfg.IMDSAddress
	return Ruleset{
		Family: TableFamily,
		Table:  TableName,
		Chains: []Chain{{
			Name: FenceChain,
			Hook: &Hook{
				Type:     nftables.ChainTypeFilter,
				Hooknum:  *nftables.ChainHookOutput,
				Priority: *nftables.ChainPriorityFilter,
				Policy:   nftables.ChainPolicyAccept,
			},
			Rules: []Rule{
				{
					Exprs:   concat(matchIPv4Daddr(imds), matchL4Proto(unix.IPPROTO_TCP), rejectTCPReset()),
					Comment: CommentPrefix + "this pod has no token sidecar: TCP to the IMDS address is reset",
				},
				{
					Exprs:   concat(matchIPv4Daddr(imds), rejectAdminProhibited()),
					Comment: CommentPrefix + "this pod has no token sidecar: nothing else may reach the IMDS address",
				},
			},
		}},
	}
}

// exemptionMatch is the match of the sidecar's sockets and the words for it in comments; nil when nobody is
// exempt.
func exemptionMatch(e Exemption) ([]expr.Any, string) {
	switch {
	case e.Cgroup.ID != 0:
		return matchCgroup(e.Cgroup), fmt.Sprintf("the sidecar's cgroup (id %d)", e.Cgroup.ID)
	case e.UID != 0:
		return matchSkUID(e.UID), fmt.Sprintf("uid %d (the sidecar)", e.UID)
	}
	return nil, ""
}

// ExemptionOf returns the exemption a live redirect table carries in the first rule of its redirect chain
// (zero when it has none, or when rs is not a redirect table).
func ExemptionOf(rs Ruleset) Exemption {
	for _, c := range rs.Chains {
		if c.Name != RedirectChain || len(c.Rules) == 0 {
			continue
		}
		var (
			e      Exemption
			loaded expr.Any // what the last load put in the register a comparison reads
		)
		for _, x := range c.Rules[0].Exprs {
			switch x := x.(type) {
			case *expr.Socket, *expr.Meta, *expr.Payload:
				loaded = x
			case *expr.Cmp:
				switch l := loaded.(type) {
				case *expr.Socket:
					if l.Key == expr.SocketKeyCgroupv2 && len(x.Data) == 8 {
						e.Cgroup = Cgroup{ID: binaryutil.NativeEndian.Uint64(x.Data), Level: l.Level}
					}
				case *expr.Meta:
					if l.Key == expr.MetaKeySKUID && len(x.Data) == 4 {
						e.UID = binaryutil.NativeEndian.Uint32(x.Data)
					}
				}
				loaded = nil
			}
		}
		return e
	}
	return Exemption{}
}

func concat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// matchIPv4Daddr checks the family first: in an inet table the network header may be IPv6.
func matchIPv4Daddr(addr netip.Addr) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: regMatch},
		&expr.Cmp{Op: expr.CmpOpEq, Register: regMatch, Data: []byte{unix.NFPROTO_IPV4}},
		&expr.Payload{DestRegister: regMatch, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: regMatch, Data: addr.AsSlice()},
	}
}

// matchSkUID matches packets of sockets owned by uid. The kernel compares in host byte order.
func matchSkUID(uid uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeySKUID, Register: regMatch},
		&expr.Cmp{Op: expr.CmpOpEq, Register: regMatch, Data: binaryutil.NativeEndian.PutUint32(uid)},
	}
}

// matchCgroup matches packets of sockets created in the cgroup: the kernel loads the id of the socket's
// cgroup's ancestor at the level, in host byte order.
func matchCgroup(cg Cgroup) []expr.Any {
	return []expr.Any{
		&expr.Socket{Key: expr.SocketKeyCgroupv2, Level: cg.Level, Register: regMatch},
		&expr.Cmp{Op: expr.CmpOpEq, Register: regMatch, Data: binaryutil.NativeEndian.PutUint64(cg.ID)},
	}
}

func matchL4Proto(proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: regMatch},
		&expr.Cmp{Op: expr.CmpOpEq, Register: regMatch, Data: []byte{proto}},
	}
}

func matchTCPDport(port uint16) []expr.Any {
	return concat(matchL4Proto(unix.IPPROTO_TCP), []expr.Any{
		&expr.Payload{DestRegister: regMatch, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: regMatch, Data: binaryutil.BigEndian.PutUint16(port)},
	})
}

func matchCtStateNew() []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: regMatch},
		&expr.Bitwise{SourceRegister: regMatch, DestRegister: regMatch, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: regMatch, Data: make([]byte, 4)},
	}
}

func dnatIPv4(to netip.Addr, port uint16) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: regAddr, Data: to.AsSlice()},
		&expr.Immediate{Register: regPort, Data: binaryutil.BigEndian.PutUint16(port)},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: regAddr, RegProtoMin: regPort},
	}
}

func rejectTCPReset() []expr.Any {
	return []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}}
}

func rejectAdminProhibited() []expr.Any {
	return []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED}}
}

func verdict(kind expr.VerdictKind) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: kind}}
}
