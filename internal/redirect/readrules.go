package redirect

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// readRules dumps the rules of one chain with a netlink socket of its own in the namespace behind netnsFD (0:
// the caller's). google/nftables v0.3.0 reads rules back too, but it silently leaves out every expression it
// has no decoder for (among them "socket", which the cgroup exemption uses), so a rule holding one would read
// back as a different, shorter rule. Here every expression is kept: one without a decoder becomes a
// placeholder that renders as unparsed, so it can only ever cause a mismatch, never hide one.
func readRules(netnsFD int, family nftables.TableFamily, table, chain string) ([]Rule, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netnsFD})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: []byte(table + "\x00")},
		{Type: unix.NFTA_RULE_CHAIN, Data: []byte(chain + "\x00")},
	})
	if err != nil {
		return nil, err
	}
	// nfgenmsg: family, version, resource id (big endian).
	header := []byte{byte(family), unix.NFNETLINK_V0, 0, 0}
	msgs, err := conn.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: append(header, attrs...),
	})
	if err != nil {
		return nil, err
	}
	rules := make([]Rule, 0, len(msgs))
	for _, m := range msgs {
		if len(m.Data) < 4 {
			return nil, fmt.Errorf("short rule message (%d bytes)", len(m.Data))
		}
		r, err := decodeRule(byte(family), m.Data[4:])
		if err != nil {
			return nil, fmt.Errorf("decoding a rule of chain %s: %w", chain, err)
		}
		rules = append(rules, r)
	}
	return rules, nil
}

func decodeRule(fam byte, b []byte) (Rule, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return Rule{}, err
	}
	ad.ByteOrder = binary.BigEndian
	var r Rule
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_RULE_EXPRESSIONS:
			ad.Nested(func(list *netlink.AttributeDecoder) error {
				for list.Next() {
					list.Nested(func(one *netlink.AttributeDecoder) error {
						e, err := decodeExpr(fam, one)
						if err == nil {
							r.Exprs = append(r.Exprs, e)
						}
						return err
					})
				}
				return list.Err()
			})
		case unix.NFTA_RULE_USERDATA:
			r.Comment, _ = userdata.GetString(ad.Bytes(), userdata.TypeComment)
		}
	}
	return r, ad.Err()
}

// decodeExpr reads one NFTA_LIST_ELEM: its name, then its data with the library's decoder for that name.
func decodeExpr(fam byte, ad *netlink.AttributeDecoder) (expr.Any, error) {
	var (
		name string
		data []byte
	)
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_EXPR_NAME:
			name = ad.String()
		case unix.NFTA_EXPR_DATA:
			data = ad.Bytes()
		}
	}
	if err := ad.Err(); err != nil {
		return nil, err
	}
	e := newExpr(name)
	if e == nil {
		return unparsed(name), nil
	}
	if err := expr.Unmarshal(fam, data, e); err != nil {
		return nil, fmt.Errorf("expression %s: %w", name, err)
	}
	// A verdict is an immediate into the verdict register: read it as one.
	if imm, ok := e.(*expr.Immediate); ok && imm.Register == unix.NFT_REG_VERDICT && len(imm.Data) == 0 {
		v := &expr.Verdict{}
		if err := expr.Unmarshal(fam, data, v); err != nil {
			return nil, fmt.Errorf("verdict: %w", err)
		}
		return v, nil
	}
	return e, nil
}

// newExpr returns an empty expression for a kernel expression name; nil for names read back as unparsed. The
// list holds what the project writes and what a hand edit or another tool is likely to add.
func newExpr(name string) expr.Any {
	switch name {
	case "meta":
		return &expr.Meta{}
	case "cmp":
		return &expr.Cmp{}
	case "payload":
		return &expr.Payload{}
	case "immediate":
		return &expr.Immediate{}
	case "bitwise":
		return &expr.Bitwise{}
	case "ct":
		return &expr.Ct{}
	case "nat":
		return &expr.NAT{}
	case "reject":
		return &expr.Reject{}
	case "counter":
		return &expr.Counter{}
	case "socket":
		return &expr.Socket{}
	case "lookup":
		return &expr.Lookup{}
	case "dynset":
		return &expr.Dynset{}
	case "log":
		return &expr.Log{}
	case "range":
		return &expr.Range{}
	case "redir":
		return &expr.Redir{}
	case "masq":
		return &expr.Masq{}
	case "fib":
		return &expr.Fib{}
	case "limit":
		return &expr.Limit{}
	}
	return nil
}

// unparsedPrefix marks the placeholder of an expression without a decoder: an xtables target can never be part
// of what the project writes, so the placeholder cannot be mistaken for a real expression of ours.
const unparsedPrefix = "podidentity-unparsed:"

func unparsed(name string) expr.Any { return &expr.Target{Name: unparsedPrefix + name} }
