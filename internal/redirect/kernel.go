package redirect

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/userdata"
)

// Kernel programs nftables in one network namespace over netlink. It holds no state beyond the connection.
type Kernel struct {
	conn *nftables.Conn
	// netnsFD is the namespace rules are read back from (0: the caller's).
	netnsFD int
}

// Outcome says what Apply did.
type Outcome string

const (
	// Unchanged: the live table already equalled the desired one; nothing was sent.
	Unchanged Outcome = "unchanged"
	// Installed: the table was (re)written in one atomic batch.
	Installed Outcome = "installed"
)

// NewKernel returns a Kernel for the network namespace behind netnsFD, or for the caller's own network namespace
// when netnsFD is 0 (how the init container runs: it is already inside the pod's namespace).
func NewKernel(netnsFD int) (*Kernel, error) {
	opts := []nftables.ConnOption{nftables.AsLasting()}
	if netnsFD != 0 {
		opts = append(opts, nftables.WithNetNSFd(netnsFD))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return nil, explain(stageConnect, err)
	}
	return &Kernel{conn: conn, netnsFD: netnsFD}, nil
}

// Close releases the netlink socket.
func (k *Kernel) Close() error { return k.conn.CloseLasting() }

// Live reads the project's table back from the kernel. found is false when the table does not exist.
func (k *Kernel) Live() (rs Ruleset, found bool, err error) {
	tables, err := k.conn.ListTablesOfFamily(TableFamily)
	if err != nil {
		return Ruleset{}, false, explain(stageRead, err)
	}
	var table *nftables.Table
	for _, t := range tables {
		if t.Name == TableName {
			table = t
		}
	}
	if table == nil {
		return Ruleset{}, false, nil
	}
	chains, err := k.conn.ListChainsOfTableFamily(TableFamily)
	if err != nil {
		return Ruleset{}, false, explain(stageRead, err)
	}
	// nftables v0.3.0 decodes NFTA_TABLE_FLAGS in host order; the kernel sends it big-endian.
	flags := binary.BigEndian.Uint32(binaryutil.NativeEndian.PutUint32(table.Flags))
	rs = Ruleset{Family: TableFamily, Table: TableName, TableFlags: flags}
	for _, c := range chains {
		if c.Table == nil || c.Table.Name != TableName {
			continue
		}
		chain := Chain{Name: c.Name}
		if c.Hooknum != nil {
			h := &Hook{Type: c.Type, Hooknum: *c.Hooknum}
			if c.Priority != nil {
				h.Priority = *c.Priority
			}
			if c.Policy != nil {
				h.Policy = *c.Policy
			}
			chain.Hook = h
		}
		rules, err := readRules(k.netnsFD, TableFamily, TableName, c.Name)
		if err != nil {
			return Ruleset{}, false, explain(stageRead, err)
		}
		chain.Rules = rules
		rs.Chains = append(rs.Chains, chain)
	}
	return rs, true, nil
}

// Apply makes the live table equal want. When it already is, nothing is sent, so a re-run leaves even the rule
// handles as they were. Otherwise one netlink batch creates the table if missing, deletes it with whatever it
// holds (a partial or stale state from an earlier run, or a hand edit), and writes it afresh: the kernel applies
// the batch atomically, so no packet ever sees a half-built table. The result is read back and verified.
func (k *Kernel) Apply(want Ruleset) (Outcome, error) {
	live, found, err := k.Live()
	if err != nil {
		return "", err
	}
	if found && Render(live) == Render(want) {
		return Unchanged, nil
	}
	table := &nftables.Table{Family: want.Family, Name: want.Table}
	k.conn.AddTable(table)
	k.conn.DelTable(table)
	k.conn.AddTable(table)
	for _, c := range want.Chains {
		chain := &nftables.Chain{Name: c.Name, Table: table}
		if h := c.Hook; h != nil {
			hooknum, prio, policy := h.Hooknum, h.Priority, h.Policy
			chain.Type, chain.Hooknum, chain.Priority, chain.Policy = h.Type, &hooknum, &prio, &policy
		}
		k.conn.AddChain(chain)
		for _, r := range c.Rules {
			k.conn.AddRule(&nftables.Rule{
				Table:    table,
				Chain:    chain,
				Exprs:    r.Exprs,
				UserData: userdata.AppendString(nil, userdata.TypeComment, r.Comment),
			})
		}
	}
	if err := k.conn.Flush(); err != nil {
		return "", explain(stageWrite, err)
	}
	if err := k.Verify(want); err != nil {
		return "", fmt.Errorf("the ruleset was written but does not read back as written: %w", err)
	}
	return Installed, nil
}

// Verify reports a *DriftError when the live table differs from want (or is missing).
func (k *Kernel) Verify(want Ruleset) error {
	live, found, err := k.Live()
	if err != nil {
		return err
	}
	if !found {
		return &DriftError{Missing: true}
	}
	if got, wanted := Render(live), Render(want); got != wanted {
		return &DriftError{Want: wanted, Got: got}
	}
	return nil
}

// Cleanup deletes the project's table and everything in it, and nothing else. removed is false when there was
// nothing to remove.
func (k *Kernel) Cleanup() (removed bool, err error) {
	_, found, err := k.Live()
	if err != nil || !found {
		return false, err
	}
	k.conn.DelTable(&nftables.Table{Family: TableFamily, Name: TableName})
	if err := k.conn.Flush(); err != nil {
		return false, explain(stageWrite, err)
	}
	return true, nil
}

// DriftError says how the live table differs from the desired one.
type DriftError struct {
	Missing bool
	Want    string
	Got     string
}

func (e *DriftError) Error() string {
	if e.Missing {
		return fmt.Sprintf("table %s %s is missing: the IMDS redirect is not installed in this network namespace "+
			"(run podidentity-init without --verify to install it)", familyName(TableFamily), TableName)
	}
	return "the live ruleset differs from the desired one (run podidentity-init without --verify to restore it):\n" +
		lineDiff(e.Want, e.Got)
}

// lineDiff lists lines of want missing from got and lines of got not in want (as multisets); when neither has
// any, the order is what differs.
func lineDiff(want, got string) string {
	var b strings.Builder
	only := func(label, a, b2 string) {
		remaining := map[string]int{}
		for _, l := range strings.Split(b2, "\n") {
			remaining[l]++
		}
		for _, l := range strings.Split(a, "\n") {
			if strings.TrimSpace(l) == "" {
				continue
			}
			if remaining[l] > 0 {
				remaining[l]--
				continue
			}
			fmt.Fprintf(&b, "  %s %s\n", label, strings.TrimSpace(l))
		}
	}
	only("missing:   ", want, got)
	only("unexpected:", got, want)
	if b.Len() == 0 {
		b.WriteString("  the same rules in a different order or layout\n")
	}
	return strings.TrimRight(b.String(), "\n")
}
