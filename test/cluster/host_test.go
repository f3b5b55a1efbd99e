package cluster

import (
	"reflect"
	"testing"
)

func TestSplitRule(t *testing.T) {
	for _, tc := range []struct {
		line string
		want []string
	}{
		{`-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`,
			[]string{"-A", "PREROUTING", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"}},
		{`-A OUTPUT -j KUBE-FIREWALL`, []string{"-A", "OUTPUT", "-j", "KUBE-FIREWALL"}},
		{`-A X -m comment --comment "say \"hi\"" -j ACCEPT`, []string{"-A", "X", "-m", "comment", "--comment", `say "hi"`, "-j", "ACCEPT"}},
		{`-A X --comment "" -j ACCEPT`, []string{"-A", "X", "--comment", "", "-j", "ACCEPT"}},
		{`-N KUBE-SERVICES`, []string{"-N", "KUBE-SERVICES"}},
		{``, nil},
	} {
		if got := splitRule(tc.line); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("splitRule(%q) = %q, want %q", tc.line, got, tc.want)
		}
	}
}

func TestUnescapeMount(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`/var/lib/kubelet/pods/x/volumes`, `/var/lib/kubelet/pods/x/volumes`},
		{`/a\040b`, `/a b`},
		{`/tab\011here\134`, "/tab\there\\"},
		{`/trailing\`, `/trailing\`},
	} {
		if got := unescapeMount(tc.in); got != tc.want {
			t.Errorf("unescapeMount(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
