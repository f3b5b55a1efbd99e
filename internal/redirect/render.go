package redirect

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Render prints rs in nft's syntax, one rule per line, with explicit family checks (nft hides them). The output
// depends only on rs: it is the --dry-run output, and Verify compares the rendering of the live table with the
// rendering of the desired one. Every field that changes what a rule does is printed; volatile state (handles,
// counter values) is not. An expression this renderer does not know is printed with all its fields, so it can
// never compare equal to something else by accident.
func Render(rs Ruleset) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table %s %s {\n", familyName(rs.Family), rs.Table)
	if rs.TableFlags != 0 {
		fmt.Fprintf(&b, "\tflags %s;\n", tableFlagNames(rs.TableFlags))
	}
	for i, c := range rs.Chains {
		if i > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "\tchain %s {\n", c.Name)
		if h := c.Hook; h != nil {
			fmt.Fprintf(&b, "\t\ttype %s hook %s priority %d; policy %s;\n",
				h.Type, hookName(h.Hooknum), h.Priority, policyName(h.Policy))
		}
		for _, r := range c.Rules {
			fmt.Fprintf(&b, "\t\t%s\n", RenderRule(r))
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// RenderRule prints one rule on one line.
func RenderRule(r Rule) string {
	line := strings.Join(decompile(r.Exprs), " ")
	if r.Comment != "" {
		line += fmt.Sprintf(" comment %q", r.Comment)
	}
	return line
}

// operand is what a register holds while a rule is decompiled: a loaded selector (name and how to print values
// compared with it), possibly masked, or an immediate value.
type operand struct {
	name   string
	format func([]byte) string
	mask   []byte
	imm    []byte
}

func decompile(exprs []expr.Any) []string {
	regs := map[uint32]operand{}
	var out []string
	for _, e := range exprs {
		switch e := e.(type) {
		case *expr.Meta:
			if e.SourceRegister {
				out = append(out, fmt.Sprintf("meta set key %d from reg %d", e.Key, e.Register))
				continue
			}
			regs[e.Register] = metaOperand(e.Key)
		case *expr.Payload:
			if e.OperationType != expr.PayloadLoad {
				out = append(out, unknown(e))
				continue
			}
			regs[e.DestRegister] = payloadOperand(e)
		case *expr.Ct:
			if e.SourceRegister || e.Key != expr.CtKeySTATE || e.Direction != 0 {
				out = append(out, unknown(e))
				continue
			}
			regs[e.Register] = operand{name: "ct state", format: hexBytes}
		case *expr.Bitwise:
			src, ok := regs[e.SourceRegister]
			if !ok || src.mask != nil || !allZero(e.Xor) {
				out = append(out, unknown(e))
				continue
			}
			src.mask = e.Mask
			regs[e.DestRegister] = src
		case *expr.Cmp:
			out = append(out, compare(regs[e.Register], e))
		case *expr.Immediate:
			regs[e.Register] = operand{imm: e.Data}
		case *expr.Verdict:
			out = append(out, verdictName(e))
		case *expr.NAT:
			out = append(out, natStatement(regs, e))
		case *expr.Reject:
			out = append(out, rejectStatement(e))
		case *expr.Socket:
			if e.Key != expr.SocketKeyCgroupv2 {
				out = append(out, unknown(e))
				continue
			}
			regs[e.Register] = operand{name: fmt.Sprintf("socket cgroupv2 level %d", e.Level), format: hostUint64}
		case *expr.Target:
			if name, ok := strings.CutPrefix(e.Name, unparsedPrefix); ok {
				out = append(out, fmt.Sprintf("unparsed-expression(%s)", name))
				continue
			}
			out = append(out, unknown(e))
		case *expr.Counter:
			// Counts change with traffic; the statement's presence is what matters.
			out = append(out, "counter")
		default:
			out = append(out, unknown(e))
		}
	}
	return out
}

func unknown(e expr.Any) string { return fmt.Sprintf("unsupported-expression(%T%+v)", e, e) }

func metaOperand(key expr.MetaKey) operand {
	switch key {
	case expr.MetaKeyNFPROTO:
		return operand{name: "meta nfproto", format: nfprotoName}
	case expr.MetaKeyL4PROTO:
		return operand{name: "meta l4proto", format: l4protoName}
	case expr.MetaKeySKUID:
		return operand{name: "meta skuid", format: hostUint32}
	case expr.MetaKeySKGID:
		return operand{name: "meta skgid", format: hostUint32}
	case expr.MetaKeyMARK:
		return operand{name: "meta mark", format: hexBytes}
	}
	return operand{name: fmt.Sprintf("meta key %d", key), format: hexBytes}
}

func payloadOperand(p *expr.Payload) operand {
	switch {
	case p.Base == expr.PayloadBaseNetworkHeader && p.Offset == 12 && p.Len == 4:
		return operand{name: "ip saddr", format: ipv4}
	case p.Base == expr.PayloadBaseNetworkHeader && p.Offset == 16 && p.Len == 4:
		return operand{name: "ip daddr", format: ipv4}
	case p.Base == expr.PayloadBaseTransportHeader && p.Offset == 0 && p.Len == 2:
		return operand{name: "th sport", format: bigEndianUint}
	case p.Base == expr.PayloadBaseTransportHeader && p.Offset == 2 && p.Len == 2:
		return operand{name: "th dport", format: bigEndianUint}
	}
	bases := map[expr.PayloadBase]string{
		expr.PayloadBaseLLHeader: "ll", expr.PayloadBaseNetworkHeader: "nh", expr.PayloadBaseTransportHeader: "th",
	}
	base, ok := bases[p.Base]
	if !ok {
		base = fmt.Sprintf("base%d", p.Base)
	}
	return operand{name: fmt.Sprintf("@%s,%d,%d", base, p.Offset*8, p.Len*8), format: hexBytes}
}

func compare(op operand, c *expr.Cmp) string {
	ops := map[expr.CmpOp]string{
		expr.CmpOpEq: "", expr.CmpOpNeq: "!= ", expr.CmpOpLt: "< ", expr.CmpOpLte: "<= ",
		expr.CmpOpGt: "> ", expr.CmpOpGte: ">= ",
	}
	sym, ok := ops[c.Op]
	if !ok {
		sym = fmt.Sprintf("op%d ", c.Op)
	}
	switch {
	case op.name == "" && op.imm == nil:
		return fmt.Sprintf("reg %d %s%s", c.Register, sym, hexBytes(c.Data))
	case op.imm != nil:
		return fmt.Sprintf("%s %s%s", hexBytes(op.imm), sym, hexBytes(c.Data))
	case op.mask != nil && op.name == "ct state" && c.Op == expr.CmpOpNeq && allZero(c.Data) && len(op.mask) == 4:
		return "ct state " + ctStateNames(binaryutil.NativeEndian.Uint32(op.mask))
	case op.mask != nil:
		return fmt.Sprintf("%s & %s %s%s", op.name, hexBytes(op.mask), sym, hexBytes(c.Data))
	}
	return fmt.Sprintf("%s %s%s", op.name, sym, op.format(c.Data))
}

func natStatement(regs map[uint32]operand, n *expr.NAT) string {
	kind := map[expr.NATType]string{expr.NATTypeDestNAT: "dnat", expr.NATTypeSourceNAT: "snat"}[n.Type]
	if kind == "" {
		kind = fmt.Sprintf("nat-type-%d", n.Type)
	}
	fam := map[uint32]string{unix.NFPROTO_IPV4: "ip", unix.NFPROTO_IPV6: "ip6"}[n.Family]
	if fam == "" {
		fam = fmt.Sprintf("family-%d", n.Family)
	}
	value := func(reg uint32, format func([]byte) string) string {
		op, ok := regs[reg]
		if !ok || op.imm == nil {
			return fmt.Sprintf("reg%d", reg)
		}
		return format(op.imm)
	}
	// The kernel reports a single value as a range from a register to itself; a range is printed only when its
	// ends differ, so both forms render alike.
	span := func(minReg, maxReg uint32, format func([]byte) string) string {
		low := value(minReg, format)
		if maxReg == 0 {
			return low
		}
		if high := value(maxReg, format); high != low {
			return low + "-" + high
		}
		return low
	}
	s := fmt.Sprintf("%s %s to ", kind, fam)
	if n.RegAddrMin != 0 {
		s += span(n.RegAddrMin, n.RegAddrMax, ipv4)
	}
	if n.RegProtoMin != 0 {
		s += ":" + span(n.RegProtoMin, n.RegProtoMax, bigEndianUint)
	}
	for _, f := range []struct {
		set  bool
		name string
	}{{n.Random, "random"}, {n.FullyRandom, "fully-random"}, {n.Persistent, "persistent"}, {n.Prefix, "prefix"}} {
		if f.set {
			s += " " + f.name
		}
	}
	return s
}

func rejectStatement(r *expr.Reject) string {
	switch r.Type {
	case unix.NFT_REJECT_TCP_RST:
		return "reject with tcp reset"
	case unix.NFT_REJECT_ICMPX_UNREACH:
		codes := map[uint8]string{
			unix.NFT_REJECT_ICMPX_NO_ROUTE: "no-route", unix.NFT_REJECT_ICMPX_PORT_UNREACH: "port-unreachable",
			unix.NFT_REJECT_ICMPX_HOST_UNREACH: "host-unreachable", unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED: "admin-prohibited",
		}
		if name, ok := codes[r.Code]; ok {
			return "reject with icmpx " + name
		}
	}
	return fmt.Sprintf("reject type %d code %d", r.Type, r.Code)
}

func verdictName(v *expr.Verdict) string {
	switch v.Kind {
	case expr.VerdictAccept:
		return "accept"
	case expr.VerdictDrop:
		return "drop"
	case expr.VerdictReturn:
		return "return"
	case expr.VerdictContinue:
		return "continue"
	case expr.VerdictJump:
		return "jump " + v.Chain
	case expr.VerdictGoto:
		return "goto " + v.Chain
	}
	return fmt.Sprintf("verdict %d %s", v.Kind, v.Chain)
}

func ctStateNames(mask uint32) string {
	bits := []struct {
		bit  uint32
		name string
	}{
		{expr.CtStateBitINVALID, "invalid"}, {expr.CtStateBitESTABLISHED, "established"},
		{expr.CtStateBitRELATED, "related"}, {expr.CtStateBitNEW, "new"}, {expr.CtStateBitUNTRACKED, "untracked"},
	}
	var names []string
	for _, b := range bits {
		if mask&b.bit != 0 {
			names = append(names, b.name)
			mask &^= b.bit
		}
	}
	if mask != 0 {
		names = append(names, fmt.Sprintf("0x%x", mask))
	}
	return strings.Join(names, ",")
}

func tableFlagNames(flags uint32) string {
	var names []string
	if flags&unix.NFT_TABLE_F_DORMANT != 0 {
		names = append(names, "dormant")
		flags &^= unix.NFT_TABLE_F_DORMANT
	}
	if flags != 0 {
		names = append(names, fmt.Sprintf("0x%x", flags))
	}
	return strings.Join(names, ",")
}

func familyName(f nftables.TableFamily) string {
	names := map[nftables.TableFamily]string{
		nftables.TableFamilyINet: "inet", nftables.TableFamilyIPv4: "ip", nftables.TableFamilyIPv6: "ip6",
		nftables.TableFamilyARP: "arp", nftables.TableFamilyBridge: "bridge", nftables.TableFamilyNetdev: "netdev",
	}
	if n, ok := names[f]; ok {
		return n
	}
	return fmt.Sprintf("family-%d", f)
}

func hookName(h nftables.ChainHook) string {
	names := map[nftables.ChainHook]string{
		unix.NF_INET_PRE_ROUTING: "prerouting", unix.NF_INET_LOCAL_IN: "input", unix.NF_INET_FORWARD: "forward",
		unix.NF_INET_LOCAL_OUT: "output", unix.NF_INET_POST_ROUTING: "postrouting",
	}
	if n, ok := names[h]; ok {
		return n
	}
	return fmt.Sprintf("hook-%d", h)
}

func policyName(p nftables.ChainPolicy) string {
	switch p {
	case nftables.ChainPolicyAccept:
		return "accept"
	case nftables.ChainPolicyDrop:
		return "drop"
	}
	return fmt.Sprintf("policy-%d", p)
}

func nfprotoName(b []byte) string {
	if len(b) == 1 {
		switch b[0] {
		case unix.NFPROTO_IPV4:
			return "ipv4"
		case unix.NFPROTO_IPV6:
			return "ipv6"
		}
	}
	return hexBytes(b)
}

func l4protoName(b []byte) string {
	if len(b) == 1 {
		switch b[0] {
		case unix.IPPROTO_TCP:
			return "tcp"
		case unix.IPPROTO_UDP:
			return "udp"
		case unix.IPPROTO_ICMP:
			return "icmp"
		}
	}
	return hexBytes(b)
}

func hostUint32(b []byte) string {
	if len(b) != 4 {
		return hexBytes(b)
	}
	return fmt.Sprint(binaryutil.NativeEndian.Uint32(b))
}

func hostUint64(b []byte) string {
	if len(b) != 8 {
		return hexBytes(b)
	}
	return fmt.Sprint(binaryutil.NativeEndian.Uint64(b))
}

func bigEndianUint(b []byte) string {
	if len(b) != 2 {
		return hexBytes(b)
	}
	return fmt.Sprint(binary.BigEndian.Uint16(b))
}

func ipv4(b []byte) string {
	if len(b) != 4 {
		return hexBytes(b)
	}
	return netip.AddrFrom4([4]byte(b)).String()
}

func hexBytes(b []byte) string { return fmt.Sprintf("0x%x", b) }

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}
