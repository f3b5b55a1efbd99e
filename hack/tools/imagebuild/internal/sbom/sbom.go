// Package sbom writes and checks the software bill of materials of an image: a CycloneDX 1.6 JSON document
// whose subject is one platform image (its repository, tag and digest) and whose components are what is in
// it: each binary (its main module, from the Go build information the binary carries), the Go standard
// library and every module linked in (with go.sum's hash), and the CA bundle with the module it comes from.
// Equal images give equal documents (no timestamp, no random serial number).
package sbom

import (
	"bytes"
	"fmt"
	"net/url"
	"runtime/debug"
	"sort"
	"strings"

	cdx "github.com/CycloneDX/cyclonedx-go"
)

// MediaType is the media type of the document, as `cosign attach sbom --type cyclonedx` stores it.
const MediaType = "application/vnd.cyclonedx+json"

// Subject is the platform image the document describes.
type Subject struct {
	// Repository is the image's repository (registry/name), Tag its tag.
	Repository, Tag string
	// Digest is the platform image's manifest digest (sha256:...), Arch its architecture.
	Digest, Arch string
}

// Binary is one executable in the image and its Go build information (debug/buildinfo.ReadFile).
type Binary struct {
	Name string
	Info *debug.BuildInfo
}

// CABundle is the CA bundle file in the image.
type CABundle struct {
	Path    string // where it is in the image
	SHA256  string // hex digest of the file
	Module  string // the Go module it comes from, and its version
	Version string
}

// Generate is the document for an image.
func Generate(s Subject, bins []Binary, ca *CABundle) ([]byte, error) {
	if s.Repository == "" || s.Digest == "" || s.Arch == "" {
		return nil, fmt.Errorf("an SBOM needs the image's repository, digest and architecture")
	}
	if len(bins) == 0 {
		return nil, fmt.Errorf("an SBOM needs at least one binary")
	}
	subjectRef := SubjectRef(s)
	bom := cdx.NewBOM()
	bom.Metadata = &cdx.Metadata{
		Tools: &cdx.ToolsChoice{Components: &[]cdx.Component{{Type: cdx.ComponentTypeApplication, Name: "podidentity imagebuild"}}},
		Component: &cdx.Component{
			BOMRef: subjectRef, Type: cdx.ComponentTypeContainer, Name: s.Repository, Version: s.Tag, PackageURL: subjectRef,
			Properties: &[]cdx.Property{{Name: "oci:platform", Value: "linux/" + s.Arch}, {Name: "oci:digest", Value: s.Digest}},
		},
	}
	modules := map[string]cdx.Component{}
	var apps []cdx.Component
	var deps []cdx.Dependency
	var subjectDeps []string
	for _, b := range bins {
		if b.Info == nil {
			return nil, fmt.Errorf("binary %s has no Go build information", b.Name)
		}
		app := application(b, s.Arch)
		apps = append(apps, app)
		subjectDeps = append(subjectDeps, app.BOMRef)
		var appDeps []string
		std := library("stdlib", b.Info.GoVersion, "")
		modules[std.BOMRef] = std
		appDeps = append(appDeps, std.BOMRef)
		for _, d := range b.Info.Deps {
			m := d
			if d.Replace != nil {
				m = d.Replace
			}
			c := library(m.Path, m.Version, m.Sum)
			modules[c.BOMRef] = c
			appDeps = append(appDeps, c.BOMRef)
		}
		sort.Strings(appDeps)
		deps = append(deps, cdx.Dependency{Ref: app.BOMRef, Dependencies: &appDeps})
	}
	components := apps
	if ca != nil {
		mod := library(ca.Module, ca.Version, "")
		file := cdx.Component{
			BOMRef: "file:" + ca.Path, Type: cdx.ComponentTypeFile, Name: ca.Path,
			Description: "Mozilla's root store as " + ca.Module + " ships it, roots with a distrust-after date left out",
			Hashes:      &[]cdx.Hash{{Algorithm: cdx.HashAlgoSHA256, Value: ca.SHA256}},
			Components:  &[]cdx.Component{mod},
		}
		components = append(components, file)
		subjectDeps = append(subjectDeps, file.BOMRef)
	}
	for _, ref := range sortedKeys(modules) {
		components = append(components, modules[ref])
	}
	bom.Components = &components
	sort.Strings(subjectDeps)
	graph := append([]cdx.Dependency{{Ref: subjectRef, Dependencies: &subjectDeps}}, deps...)
	bom.Dependencies = &graph

	var buf bytes.Buffer
	enc := cdx.NewBOMEncoder(&buf, cdx.BOMFileFormatJSON)
	enc.SetPretty(true)
	if err := enc.EncodeVersion(bom, cdx.SpecVersion1_6); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// SubjectRef is the package URL (pkg:oci) of a platform image, the document's subject and bom-ref.
func SubjectRef(s Subject) string {
	name := s.Repository[strings.LastIndex(s.Repository, "/")+1:]
	q := url.Values{"arch": {s.Arch}, "repository_url": {s.Repository}}
	if s.Tag != "" {
		q.Set("tag", s.Tag)
	}
	return "pkg:oci/" + name + "@" + url.PathEscape(s.Digest) + "?" + q.Encode()
}

func application(b Binary, arch string) cdx.Component {
	mainMod := b.Info.Main
	props := []cdx.Property{{Name: "go:version", Value: b.Info.GoVersion}}
	for _, s := range b.Info.Settings {
		switch s.Key {
		case "GOOS", "GOARCH", "CGO_ENABLED", "-trimpath", "-ldflags", "vcs.revision", "vcs.modified":
			props = append(props, cdx.Property{Name: "go:build:" + s.Key, Value: s.Value})
		}
	}
	purl := golangPURL(mainMod.Path, mainMod.Version) + "&goos=linux&goarch=" + arch
	return cdx.Component{
		BOMRef: "file:/" + b.Name, Type: cdx.ComponentTypeApplication, Name: b.Name, Version: mainMod.Version,
		PackageURL: purl, Group: b.Info.Path, Properties: &props,
	}
}

func library(path, version, sum string) cdx.Component {
	purl := golangPURL(path, version)
	c := cdx.Component{BOMRef: purl, Type: cdx.ComponentTypeLibrary, Name: path, Version: version, PackageURL: purl}
	if sum != "" {
		c.Properties = &[]cdx.Property{{Name: "go:sum", Value: sum}}
	}
	return c
}

// golangPURL is a Go module's package URL (the stdlib as "stdlib").
func golangPURL(path, version string) string {
	return "pkg:golang/" + path + "@" + url.PathEscape(version) + "?type=module"
}

// Document is what Check reads of a document.
type Document struct {
	Subject      string   // the metadata component's bom-ref
	Applications []string // the names of the application components
	Components   int
}

// Parse decodes a CycloneDX JSON document.
func Parse(data []byte) (*Document, error) {
	var bom cdx.BOM
	if err := cdx.NewBOMDecoder(bytes.NewReader(data), cdx.BOMFileFormatJSON).Decode(&bom); err != nil {
		return nil, fmt.Errorf("not a CycloneDX JSON document: %w", err)
	}
	if bom.BOMFormat != cdx.BOMFormat {
		return nil, fmt.Errorf("bomFormat %q, want %q", bom.BOMFormat, cdx.BOMFormat)
	}
	d := &Document{}
	if bom.Metadata != nil && bom.Metadata.Component != nil {
		d.Subject = bom.Metadata.Component.BOMRef
	}
	if bom.Components != nil {
		d.Components = len(*bom.Components)
		for _, c := range *bom.Components {
			if c.Type == cdx.ComponentTypeApplication {
				d.Applications = append(d.Applications, c.Name)
			}
		}
	}
	return d, nil
}

// Check says why a document does not describe the image s with the binaries named (nil when it does).
func Check(d *Document, s Subject, binaries []string) error {
	if want := SubjectRef(s); d.Subject != want {
		return fmt.Errorf("the SBOM describes %q, not %q", d.Subject, want)
	}
	have := map[string]bool{}
	for _, a := range d.Applications {
		have[a] = true
	}
	for _, b := range binaries {
		if !have[b] {
			return fmt.Errorf("the SBOM lists no binary %s (it lists %v)", b, d.Applications)
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
