package sbom

import (
	"encoding/json"
	"runtime/debug"
	"strings"
	"testing"
)

var subject = Subject{Repository: "registry.example/podidentity/podidentity-node", Tag: "0.1.0", Digest: "sha256:" + strings.Repeat("a", 64), Arch: "arm64"}

func info(main string, deps ...*debug.Module) *debug.BuildInfo {
	return &debug.BuildInfo{
		GoVersion: "go1.26.8", Path: main + "/cmd/x",
		Main:     debug.Module{Path: main, Version: "(devel)"},
		Deps:     deps,
		Settings: []debug.BuildSetting{{Key: "GOARCH", Value: "arm64"}, {Key: "CGO_ENABLED", Value: "0"}, {Key: "GOAMD64", Value: "v1"}},
	}
}

func TestGenerate(t *testing.T) {
	shared := &debug.Module{Path: "example.com/shared", Version: "v1.2.3", Sum: "h1:abc="}
	replaced := &debug.Module{Path: "example.com/old", Version: "v1.0.0", Replace: &debug.Module{Path: "example.com/new", Version: "v2.0.0"}}
	out, err := Generate(subject,
		[]Binary{{Name: "podidentity-node", Info: info("github.com/podidentity/podidentity", shared, replaced)}, {Name: "podidentity-cni", Info: info("github.com/podidentity/podidentity", shared)}},
		&CABundle{Path: "/etc/ssl/certs/ca-certificates.crt", SHA256: strings.Repeat("b", 64), Module: "golang.org/x/crypto/x509roots/fallback", Version: "v0.0.0-1"})
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		BOMFormat, SpecVersion string
		Metadata               struct {
			Component struct {
				BOMRef string `json:"bom-ref"`
			}
		}
		Components []struct {
			Type, Name, Version, Purl string
			BOMRef                    string `json:"bom-ref"`
			Components                []struct{ Name, Version string }
		}
		Dependencies []struct {
			Ref       string
			DependsOn []string
		}
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.BOMFormat != "CycloneDX" || doc.SpecVersion != "1.6" {
		t.Errorf("format %s %s", doc.BOMFormat, doc.SpecVersion)
	}
	if doc.Metadata.Component.BOMRef != SubjectRef(subject) {
		t.Errorf("subject %s", doc.Metadata.Component.BOMRef)
	}
	got := map[string]string{}
	refs := map[string]int{}
	for _, c := range doc.Components {
		got[c.Type+" "+c.Name] = c.Version
		refs[c.BOMRef]++
		if c.Type == "file" && (len(c.Components) != 1 || c.Components[0].Version != "v0.0.0-1") {
			t.Errorf("the CA bundle does not name its module: %+v", c)
		}
	}
	want := map[string]string{
		"application podidentity-node": "(devel)", "application podidentity-cni": "(devel)",
		"library stdlib": "go1.26.8", "library example.com/shared": "v1.2.3", "library example.com/new": "v2.0.0",
		"file /etc/ssl/certs/ca-certificates.crt": "",
	}
	for k, v := range want {
		if gv, ok := got[k]; !ok || gv != v {
			t.Errorf("component %s: version %q (present %v), want %q", k, gv, ok, v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("components %v, want %v", got, want)
	}
	for ref, n := range refs {
		if n != 1 {
			t.Errorf("bom-ref %s appears %d times", ref, n)
		}
	}
	if len(doc.Dependencies) != 3 || doc.Dependencies[0].Ref != SubjectRef(subject) || len(doc.Dependencies[0].DependsOn) != 3 {
		t.Errorf("dependencies %+v", doc.Dependencies)
	}

	again, _ := Generate(subject,
		[]Binary{{Name: "podidentity-node", Info: info("github.com/podidentity/podidentity", shared, replaced)}, {Name: "podidentity-cni", Info: info("github.com/podidentity/podidentity", shared)}},
		&CABundle{Path: "/etc/ssl/certs/ca-certificates.crt", SHA256: strings.Repeat("b", 64), Module: "golang.org/x/crypto/x509roots/fallback", Version: "v0.0.0-1"})
	if string(again) != string(out) {
		t.Error("equal inputs gave different documents")
	}
}

func TestGenerateRefuses(t *testing.T) {
	if _, err := Generate(Subject{Repository: "r", Arch: "amd64"}, []Binary{{Name: "x", Info: info("m")}}, nil); err == nil {
		t.Error("no digest: generated")
	}
	if _, err := Generate(subject, nil, nil); err == nil {
		t.Error("no binary: generated")
	}
	if _, err := Generate(subject, []Binary{{Name: "x"}}, nil); err == nil {
		t.Error("no build information: generated")
	}
}

func TestCheck(t *testing.T) {
	out, err := Generate(subject, []Binary{{Name: "podidentity-node", Info: info("m")}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := Parse(out)
	if err != nil {
		t.Fatal(err)
	}
	other := subject
	other.Digest = "sha256:" + strings.Repeat("c", 64)
	otherArch := subject
	otherArch.Arch = "amd64"
	for _, tc := range []struct {
		name     string
		s        Subject
		binaries []string
		ok       bool
	}{
		{"matches", subject, []string{"podidentity-node"}, true},
		{"another digest", other, []string{"podidentity-node"}, false},
		{"another architecture", otherArch, []string{"podidentity-node"}, false},
		{"a binary missing", subject, []string{"podidentity-node", "podidentity-cni"}, false},
	} {
		if err := Check(doc, tc.s, tc.binaries); (err == nil) != tc.ok {
			t.Errorf("%s: Check = %v", tc.name, err)
		}
	}
	if _, err := Parse([]byte(`{"bomFormat":"SPDX"}`)); err == nil {
		t.Error("a non-CycloneDX document parsed")
	}
}
