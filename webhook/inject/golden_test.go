package inject

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	jsonpatchapply "github.com/evanphx/json-patch/v5"
	"sigs.k8s.io/yaml"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/contract"
)

var update = flag.Bool("update", false, "rewrite the golden outputs in testdata/golden (and delete stale ones)")

const goldenDir = "../testdata/golden"

// goldenInput is one <case>.in.yaml: a pod as the API server sends it, and the cluster objects the webhook
// would read.
type goldenInput struct {
	// Settings override the defaults for this case.
	Settings struct {
		Classic         bool `json:"classic"`
		ForceNamespaced bool `json:"forceNamespaced"`
		// Exemption is --sidecar-exemption; empty means the default (cgroup).
		Exemption Exemption `json:"exemption"`
		// RedirectMode is --redirect-mode; empty means the default (init).
		RedirectMode RedirectMode `json:"redirectMode"`
		// UIDChangePolicy is --uid-change-policy; empty means the default (deny).
		UIDChangePolicy UIDChangePolicy `json:"uidChangePolicy"`
		// SidecarLogVerbosity is --sidecar-log-verbosity; 0 means the default (no --v flag).
		SidecarLogVerbosity int `json:"sidecarLogVerbosity"`
		// IdentityPool is guard mode's --identity-pool-label and --identity-pool-taint; absent means off.
		IdentityPool *struct {
			Label string `json:"label"`
			Taint string `json:"taint"`
		} `json:"identityPool"`
		// ImagePullSecrets is --image-pull-secrets; absent means none.
		ImagePullSecrets []string `json:"imagePullSecrets"`
		// The sidecar's Azure AD: --sidecar-aad-authority-host, --sidecar-aad-disable-instance-discovery,
		// --sidecar-ca-bundle-configmap; absent means none.
		AADAuthorityHost            string `json:"aadAuthorityHost"`
		AADDisableInstanceDiscovery bool   `json:"aadDisableInstanceDiscovery"`
		CABundleConfigMap           string `json:"caBundleConfigMap"`
	} `json:"settings"`
	Namespace  string                            `json:"namespace"`
	Pod        json.RawMessage                   `json:"pod"`
	Bindings   []aadv1.AzureIdentityBinding      `json:"bindings"`
	Identities []aadv1.AzureIdentity             `json:"identities"`
	Exceptions []aadv1.AzurePodIdentityException `json:"exceptions"`
}

// goldenOutput is <case>.out.yaml: the decision and the pod after the patch.
type goldenOutput struct {
	Action   Action          `json:"action"`
	Reason   Reason          `json:"reason,omitempty"`
	Message  string          `json:"message,omitempty"`
	Warnings []string        `json:"warnings,omitempty"`
	Patch    json.RawMessage `json:"patch,omitempty"`
	Pod      json.RawMessage `json:"pod,omitempty"`
}

func loadInput(t testing.TB, path string) (goldenInput, Settings) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	js, err := yaml.YAMLToJSON(b)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var in goldenInput
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	s := DefaultSettings()
	s.Native = !in.Settings.Classic
	s.ForceNamespaced = in.Settings.ForceNamespaced
	if in.Settings.RedirectMode != "" {
		s.RedirectMode = in.Settings.RedirectMode
	}
	if in.Settings.Exemption != "" {
		s.Exemption = in.Settings.Exemption
	}
	if in.Settings.UIDChangePolicy != "" {
		s.UIDChangePolicy = in.Settings.UIDChangePolicy
	}
	s.SidecarLogVerbosity = in.Settings.SidecarLogVerbosity
	s.ImagePullSecrets = in.Settings.ImagePullSecrets
	s.SidecarAADAuthorityHost = in.Settings.AADAuthorityHost
	s.SidecarAADDisableInstanceDiscovery = in.Settings.AADDisableInstanceDiscovery
	s.SidecarCABundleConfigMap = in.Settings.CABundleConfigMap
	if p := in.Settings.IdentityPool; p != nil {
		var err error
		if s.Placement, err = ParsePlacement(p.Label, p.Taint); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	return in, s
}

func applyPatch(t *testing.T, raw []byte, d Decision) []byte {
	t.Helper()
	if len(d.Patch) == 0 {
		return raw
	}
	pb, err := json.Marshal(d.Patch)
	if err != nil {
		t.Fatal(err)
	}
	p, err := jsonpatchapply.DecodePatch(pb)
	if err != nil {
		t.Fatalf("patch does not decode: %v\n%s", err, pb)
	}
	out, err := p.Apply(raw)
	if err != nil {
		t.Fatalf("patch does not apply: %v\n%s", err, pb)
	}
	return out
}

func TestGolden(t *testing.T) {
	inputs, err := filepath.Glob(filepath.Join(goldenDir, "*.in.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(inputs) < 15 {
		t.Fatalf("only %d golden inputs in %s; the suite needs at least 15", len(inputs), goldenDir)
	}
	want := map[string]bool{}
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".in.yaml")
		outPath := filepath.Join(goldenDir, name+".out.yaml")
		want[filepath.Base(outPath)] = true
		t.Run(name, func(t *testing.T) {
			input, s := loadInput(t, in)
			cluster := Cluster{Bindings: input.Bindings, Identities: input.Identities, Exceptions: input.Exceptions}
			d := Decide(input.Pod, input.Namespace, cluster, s)
			patched := applyPatch(t, input.Pod, d)
			out := goldenOutput{Action: d.Action, Reason: d.Reason, Message: d.Message, Warnings: d.Warnings}
			if len(d.Patch) > 0 {
				out.Patch, _ = json.Marshal(d.Patch)
			}
			if d.Action != ActionDeny {
				out.Pod = patched
			}
			js, err := json.Marshal(out)
			if err != nil {
				t.Fatal(err)
			}
			got, err := yaml.JSONToYAML(js)
			if err != nil {
				t.Fatal(err)
			}
			got = append([]byte("# generated by `go test ./webhook/inject -update` from "+filepath.Base(in)+"; do not edit\n"), got...)
			if *update {
				if err := os.WriteFile(outPath, got, 0o644); err != nil {
					t.Fatal(err)
				}
			} else {
				exp, err := os.ReadFile(outPath)
				if err != nil {
					t.Fatalf("%v: run `go test ./webhook/... -update` to create it", err)
				}
				if !bytes.Equal(exp, got) {
					t.Errorf("%s is stale or the injection changed; review the difference and run `go test ./webhook/... -update`\n--- got\n%s", outPath, got)
				}
			}

			if d.Action == ActionInject || d.Action == ActionUnchanged {
				// A second pass over the result (reinvocation) changes nothing.
				again := Decide(patched, input.Namespace, cluster, s)
				if again.Action != ActionUnchanged || len(again.Patch) != 0 {
					t.Errorf("second pass is not stable: action %s, patch %v", again.Action, again.Patch)
				}
				// Every field of the input survives: removing what the webhook owns gives the input back.
				assertOnlyAdded(t, input.Pod, patched, s.Placement, s.ImagePullSecrets)
			}
		})
	}
	outs, _ := filepath.Glob(filepath.Join(goldenDir, "*.out.yaml"))
	for _, o := range outs {
		if want[filepath.Base(o)] {
			continue
		}
		if *update {
			_ = os.Remove(o)
			continue
		}
		t.Errorf("stale golden output %s has no input; delete it or run `go test ./webhook/... -update`", o)
	}
}

// assertOnlyAdded strips the webhook's containers, volumes and annotations, the NET_RAW drop it adds to user
// containers (and, in guard mode, the pool's nodeSelector entry and toleration; with --image-pull-secrets, those
// pull secrets) from the output pod and compares the rest with the input, as generic JSON: fields unknown to
// k8s.io/api must survive. Pull secrets of those names are stripped from both sides: the user's other entries
// must come out as they went in, in their order.
func assertOnlyAdded(t *testing.T, in, out []byte, placement *Placement, pullSecrets []string) {
	t.Helper()
	var a, b map[string]any
	if err := json.Unmarshal(in, &a); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(out, &b); err != nil {
		t.Fatal(err)
	}
	undoNetRaw(a, b)
	strip := func(m map[string]any) {
		if md, ok := m["metadata"].(map[string]any); ok {
			if ann, ok := md["annotations"].(map[string]any); ok {
				delete(ann, contract.IdentitiesAnnotation)
				delete(ann, contract.SecurityWarningsAnnotation)
				if len(ann) == 0 {
					delete(md, "annotations")
				}
			}
			if len(md) == 0 {
				delete(m, "metadata")
			}
		}
		spec, _ := m["spec"].(map[string]any)
		if v, ok := spec["imagePullSecrets"]; ok && len(pullSecrets) > 0 {
			refs, _ := v.([]any) // null, like [], may be replaced by ours
			kept := []any{}
			for _, e := range refs {
				if name, _ := e.(map[string]any)["name"].(string); slices.Contains(pullSecrets, name) {
					continue
				}
				kept = append(kept, e)
			}
			if len(kept) == 0 {
				delete(spec, "imagePullSecrets")
			} else {
				spec["imagePullSecrets"] = kept
			}
		}
		if placement != nil {
			if sel, ok := spec["nodeSelector"].(map[string]any); ok {
				delete(sel, placement.LabelKey)
				if len(sel) == 0 {
					delete(spec, "nodeSelector")
				}
			}
			if tols, ok := spec["tolerations"].([]any); ok {
				want := placement.Toleration()
				kept := []any{}
				for _, e := range tols {
					tm, _ := e.(map[string]any)
					if tm["key"] == want.Key && tm["operator"] == string(want.Operator) && tm["value"] == want.Value && tm["effect"] == string(want.Effect) {
						continue
					}
					kept = append(kept, e)
				}
				if len(kept) == 0 {
					delete(spec, "tolerations")
				} else {
					spec["tolerations"] = kept
				}
			}
		}
		for _, key := range []string{"initContainers", "containers", "volumes"} {
			list, ok := spec[key].([]any)
			if !ok {
				continue
			}
			kept := []any{}
			for _, e := range list {
				name, _ := e.(map[string]any)["name"].(string)
				if name == contract.InitContainerName || name == contract.SidecarContainerName || name == contract.IdentitiesVolumeName || name == contract.FederatedTokenVolumeName || name == contract.CABundleVolumeName || strings.HasPrefix(name, SecretVolumePrefix) {
					continue
				}
				kept = append(kept, e)
			}
			if len(kept) == 0 {
				delete(spec, key)
			} else {
				spec[key] = kept
			}
		}
	}
	strip(a)
	strip(b)
	if !reflect.DeepEqual(a, b) {
		ja, _ := json.MarshalIndent(a, "", " ")
		jb, _ := json.MarshalIndent(b, "", " ")
		t.Errorf("the patch changed fields the webhook does not own\n--- input\n%s\n--- output\n%s", ja, jb)
	}
}

// undoNetRaw removes from every user container of out (a decoded pod) the NET_RAW the webhook added to its
// capabilities.drop, and the securityContext, capabilities and drop members it had to create for that, where
// the same container of in (by name) did not have them.
func undoNetRaw(in, out map[string]any) {
	members := func(pod map[string]any) map[string]map[string]any {
		byName := map[string]map[string]any{}
		spec, _ := pod["spec"].(map[string]any)
		for _, key := range []string{"initContainers", "containers"} {
			list, _ := spec[key].([]any)
			for _, e := range list {
				c, _ := e.(map[string]any)
				name, _ := c["name"].(string)
				byName[name] = c
			}
		}
		return byName
	}
	before := members(in)
	// restore puts member key of m back as it was in was: absent, null, or (when out's is empty) what it was.
	restore := func(m, was map[string]any, key string, empty bool) {
		prev, had := was[key]
		switch {
		case !had && empty:
			delete(m, key)
		case had && prev == nil:
			m[key] = nil
		}
	}
	for name, c := range members(out) {
		was, ok := before[name]
		if !ok {
			continue // ours
		}
		wasSC, _ := was["securityContext"].(map[string]any)
		wasCaps, _ := wasSC["capabilities"].(map[string]any)
		wasDrop, _ := wasCaps["drop"].([]any)
		sc, _ := c["securityContext"].(map[string]any)
		caps, _ := sc["capabilities"].(map[string]any)
		drop, _ := caps["drop"].([]any)
		if len(drop) != len(wasDrop)+1 || drop[len(drop)-1] != "NET_RAW" {
			continue // nothing added: left to the comparison
		}
		caps["drop"] = drop[:len(drop)-1]
		restore(caps, wasCaps, "drop", len(drop) == 1)
		restore(sc, wasSC, "capabilities", len(caps) == 0)
		restore(c, was, "securityContext", len(sc) == 0)
	}
}

// TestGoldenCoverage keeps the suite honest: every action and every skip and deny reason has a case.
func TestGoldenCoverage(t *testing.T) {
	if *update {
		t.Skip("outputs are being rewritten")
	}
	outs, _ := filepath.Glob(filepath.Join(goldenDir, "*.out.yaml"))
	seen := map[string]bool{}
	for _, o := range outs {
		b, err := os.ReadFile(o)
		if err != nil {
			t.Fatal(err)
		}
		var g goldenOutput
		if err := yaml.Unmarshal(b, &g); err != nil {
			t.Fatalf("%s: %v", o, err)
		}
		seen[string(g.Action)] = true
		seen[string(g.Reason)] = true
	}
	var missing []string
	for _, r := range []string{string(ActionInject), string(ActionUnchanged), string(ActionSkip), string(ActionDeny),
		string(ReasonOptOut), string(ReasonException), string(ReasonHostNetwork), string(ReasonWindows),
		string(ReasonPrivileged), string(ReasonNetCapability), string(ReasonSidecarUID), string(ReasonHostNetworkBinding),
		string(ReasonNameCollision), string(ReasonTampered), string(ReasonUIDChange), string(ReasonPoolConflict),
		string(ReasonCapability), string(ReasonFencedByCNI), string(ReasonClassicRestartPolicy)} {
		if !seen[r] {
			missing = append(missing, r)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("no golden case produces %v; add one to %s", missing, goldenDir)
	}
}
