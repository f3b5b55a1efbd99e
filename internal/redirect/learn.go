package redirect

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// learnTable is the temporary table LearnCgroup asks the kernel through; nothing else uses the name.
const learnTable = "podidentity-learn"

// learnPort is the loopback UDP port of the probe datagram (the discard port; the probe is dropped anyway).
const learnPort = 9

// LearnCgroup returns the cgroup v2 of the calling process as `socket cgroupv2` sees the sockets it creates:
// the id and level to exempt. The kernel is the only authority that is the same for every layout (cgroup v2
// with a private cgroup namespace, where the process sees its own cgroup as "/"; the hybrid v1/v2 layout,
// where the container has no cgroup2 mount at all; kernels that count levels from the real root or from the
// loader's cgroup namespace): a temporary table stores, for every level, the id of the ancestor of the probe
// socket's cgroup at that level; the deepest level the kernel filled is the process's own cgroup. It needs
// CAP_NET_ADMIN in the network namespace and kernel 5.13 or newer (nft_socket's cgroupv2 key).
//
// It refuses the root cgroup (the node does not put containers in cgroups of their own on cgroup v2, and every
// process would match) and a level that contradicts /proc/self/cgroup. Level 0 with another id is the process's
// own cgroup namespace's root, on kernels that count levels from it.
func (k *Kernel) LearnCgroup() (Cgroup, error) {
	table := &nftables.Table{Family: TableFamily, Name: learnTable}
	levels := &nftables.Set{
		Table: table, Name: "levels", IsMap: true, Dynamic: true, Size: MaxCgroupLevel + 1,
		KeyType: nftables.TypeInteger, DataType: nftables.TypeCGroupV2,
	}
	// Start from nothing, whatever an earlier, interrupted run left.
	k.conn.AddTable(table)
	k.conn.DelTable(table)
	k.conn.AddTable(table)
	if err := k.conn.AddSet(levels, nil); err != nil {
		return Cgroup{}, fmt.Errorf("learning the sidecar's cgroup: %w", err)
	}
	hook, prio, policy := *nftables.ChainHookOutput, *nftables.ChainPriorityFilter, nftables.ChainPolicyAccept
	chain := k.conn.AddChain(&nftables.Chain{Name: "probe", Table: table, Type: nftables.ChainTypeFilter,
		Hooknum: &hook, Priority: &prio, Policy: &policy})
	probe := concat(matchIPv4Daddr(loopback), matchL4Proto(unix.IPPROTO_UDP), []expr.Any{
		&expr.Payload{DestRegister: regMatch, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: regMatch, Data: binaryutil.BigEndian.PutUint16(learnPort)},
	})
	for level := uint32(0); level <= MaxCgroupLevel; level++ {
		k.conn.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: concat(probe, []expr.Any{
			&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(level)},
			// No ancestor at this level (deeper than the socket's cgroup): the rule stops here.
			&expr.Socket{Key: expr.SocketKeyCgroupv2, Level: level, Register: 2},
			&expr.Dynset{SrcRegKey: 1, SrcRegData: 2, SetName: levels.Name, Operation: unix.NFT_DYNSET_OP_ADD},
		})})
	}
	k.conn.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: concat(probe, verdict(expr.VerdictDrop))})
	defer func() {
		k.conn.DelTable(table)
		_ = k.conn.Flush()
	}()
	if err := k.conn.Flush(); err != nil {
		return Cgroup{}, fmt.Errorf("learning the sidecar's cgroup: %w", explainCgroup(explain(stageWrite, err)))
	}

	if err := sendProbe(); err != nil {
		return Cgroup{}, fmt.Errorf("learning the sidecar's cgroup: sending the probe datagram: %w", err)
	}
	elems, err := k.conn.GetSetElements(levels)
	if err != nil {
		return Cgroup{}, fmt.Errorf("learning the sidecar's cgroup: %w", explain(stageRead, err))
	}
	found := false
	var cg Cgroup
	for _, e := range elems {
		if len(e.Key) != 4 || len(e.Val) != 8 {
			continue
		}
		if level := binaryutil.NativeEndian.Uint32(e.Key); !found || level > cg.Level {
			cg, found = Cgroup{ID: binaryutil.NativeEndian.Uint64(e.Val), Level: level}, true
		}
	}
	if !found {
		return Cgroup{}, errors.New("learning the sidecar's cgroup: the kernel matched no cgroup for the probe socket; " +
			"the node's kernel must support nftables' socket cgroupv2 match (Linux 5.13+) on cgroup v2 (" + uidFallback + ")")
	}
	if cg.ID == RootCgroupID {
		return Cgroup{}, errors.New("the sidecar's sockets belong to the root cgroup v2: this node does not put containers " +
			"in cgroups of their own on cgroup v2, so a cgroup cannot tell the sidecar from the app (" + uidFallback + ")")
	}
	if depth, ok := ownCgroupDepth(); ok && depth != 0 && depth != int(cg.Level) {
		// Outside a cgroup namespace /proc/self/cgroup shows the whole path; its depth must be the level the
		// kernel reports for the same cgroup.
		return Cgroup{}, fmt.Errorf("the kernel places the sidecar's sockets at cgroup level %d but /proc/self/cgroup says depth %d; "+
			"refusing to exempt a cgroup that may not be the sidecar's own", cg.Level, depth)
	}
	return cg, nil
}

// uidFallback is what to do on a node where the cgroup exemption cannot work.
const uidFallback = "use nodes with cgroup v2 and Linux 5.13 or newer, or set the webhook's --sidecar-exemption=uid, " +
	"which is weaker: see docs/threat-model.md"

var loopback = netip.AddrFrom4([4]byte{127, 0, 0, 1})

// sendProbe sends one UDP datagram to 127.0.0.1:learnPort from a socket this process creates now.
func sendProbe() error {
	conn, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: learnPort})
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write([]byte("podidentity: cgroup probe"))
	if errors.Is(err, unix.EPERM) {
		return nil // the probe chain dropped it after recording: expected
	}
	return err
}

// explainCgroup adds the cgroup-specific meaning of "the kernel lacks a feature".
func explainCgroup(err error) error {
	if errors.Is(err, ErrNoNfTables) {
		return fmt.Errorf("%w; the cgroup exemption needs nftables' socket cgroupv2 match (nft_socket, Linux 5.13+) (%s)", err, uidFallback)
	}
	return err
}

// ownCgroupDepth is the depth of the process's cgroup v2 path in /proc/self/cgroup ("0::/a/b" is 2); ok is
// false when there is no cgroup v2 line.
func ownCgroupDepth() (int, bool) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if path, ok := strings.CutPrefix(line, "0::"); ok {
			path = strings.Trim(strings.TrimSuffix(path, " (deleted)"), "/")
			if path == "" {
				return 0, true
			}
			return strings.Count(path, "/") + 1, true
		}
	}
	return 0, false
}
