package inject

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/podidentity/podidentity/internal/contract"
)

// TestClassicRestartPolicy: in classic mode the sidecar is an ordinary container that never exits, so a pod
// meant to finish (restartPolicy Never or OnFailure) is refused with what to do; native mode injects it, pods
// that restart always are injected in both, and a pod that gets no sidecar (opted out; CNI mode without a
// binding) is admitted as before.
func TestClassicRestartPolicy(t *testing.T) {
	cni := func(s Settings) Settings { s.RedirectMode = RedirectCNI; return s }
	classic := DefaultSettings()
	classic.Native = false
	for _, tc := range []struct {
		name    string
		s       Settings
		policy  string
		bound   bool
		optOut  bool
		want    Action
		wantMsg []string
	}{
		{"classic, Never", classic, "Never", true, false, ActionDeny, []string{"restartPolicy: Never", "--mode=native", "can reach the node's IMDS directly"}},
		{"classic, OnFailure", classic, "OnFailure", true, false, ActionDeny, []string{"restartPolicy: OnFailure"}},
		{"classic, Always", classic, "Always", true, false, ActionInject, nil},
		{"classic, unset (Always)", classic, "", true, false, ActionInject, nil},
		{"native, Never", DefaultSettings(), "Never", true, false, ActionInject, nil},
		{"native, OnFailure", DefaultSettings(), "OnFailure", true, false, ActionInject, nil},
		{"classic, Never, no binding, init mode: CNI mode offered", classic, "Never", false, false, ActionDeny, []string{"redirect.mode=cni"}},
		{"classic, Never, bound, CNI mode: still refused", cni(classic), "Never", true, false, ActionDeny, []string{"fences it off the IMDS address"}},
		{"classic, Never, no binding, CNI mode: no sidecar, admitted", cni(classic), "Never", false, false, ActionSkip, nil},
		{"classic, Never, opted out: admitted uninjected", classic, "Never", true, true, ActionSkip, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			meta := map[string]any{"name": "p", "namespace": "shop", "labels": map[string]string{"app": "x"}}
			if tc.bound {
				meta["labels"] = map[string]string{"aadpodidbinding": "x"}
			}
			if tc.optOut {
				meta["annotations"] = map[string]string{contract.InjectAnnotation: "false"}
			}
			spec := map[string]any{"containers": []any{map[string]any{"name": "app", "image": "app:1"}}}
			if tc.policy != "" {
				spec["restartPolicy"] = tc.policy
			}
			raw, _ := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
			d := Decide(raw, "shop", Cluster{}, tc.s)
			if d.Action != tc.want {
				t.Fatalf("action %s (%s), want %s", d.Action, d.Message, tc.want)
			}
			if tc.want == ActionDeny && d.Reason != ReasonClassicRestartPolicy {
				t.Errorf("reason %s, want %s", d.Reason, ReasonClassicRestartPolicy)
			}
			for _, w := range tc.wantMsg {
				if !strings.Contains(d.Message, w) {
					t.Errorf("message lacks %q:\n%s", w, d.Message)
				}
			}
		})
	}
}
