package fakecloud

import (
	"net"
	"strings"

	"golang.org/x/net/dns/dnsmessage"
)

// serveDNS answers A queries for names with answer, other query types for names with no records, and every
// other name with NXDOMAIN, until pc is closed.
func serveDNS(pc net.PacketConn, names []string, answer net.IP) {
	known := map[string]bool{}
	for _, n := range names {
		known[strings.ToLower(strings.TrimSuffix(n, "."))+"."] = true
	}
	buf := make([]byte, 1500)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		if resp, ok := dnsAnswer(buf[:n], known, answer); ok {
			_, _ = pc.WriteTo(resp, addr)
		}
	}
}

// dnsAnswer builds the response to one query message; ok is false for a message that is not a query.
func dnsAnswer(query []byte, known map[string]bool, answer net.IP) ([]byte, bool) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil || h.Response {
		return nil, false
	}
	q, err := p.Question()
	if err != nil {
		return nil, false
	}
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired}
	name := strings.ToLower(q.Name.String())
	if !known[name] {
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, false
	}
	if err := b.Question(q); err != nil {
		return nil, false
	}
	if known[name] && q.Type == dnsmessage.TypeA && q.Class == dnsmessage.ClassINET {
		var a [4]byte
		copy(a[:], answer.To4())
		if err := b.StartAnswers(); err != nil {
			return nil, false
		}
		if err := b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}, dnsmessage.AResource{A: a}); err != nil {
			return nil, false
		}
	}
	out, err := b.Finish()
	return out, err == nil
}
