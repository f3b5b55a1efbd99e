// Package cabundle is the CA bundle the images carry at /etc/ssl/certs/ca-certificates.crt: Mozilla's root
// store as golang.org/x/crypto/x509roots/fallback ships it, pinned by that module's version in
// hack/tools/go.mod (and so by go.sum's checksum), never the build host's /etc/ssl.
//
// Mozilla marks some roots "distrust after" a date; a PEM file cannot say that, so those roots are left out:
// a TLS server whose chain ends at one of them is refused rather than trusted without the limit.
package cabundle

import (
	"bytes"
	"encoding/pem"
	"fmt"
	"runtime/debug"

	"golang.org/x/crypto/x509roots/fallback/bundle"
)

// Module is the Go module the bundle comes from.
const Module = "golang.org/x/crypto/x509roots/fallback"

// PEM returns the bundle: every root without a constraint, PEM-encoded, in the module's order.
func PEM() []byte {
	var buf bytes.Buffer
	for root := range bundle.Roots() {
		if root.Constraint != nil {
			continue
		}
		if err := pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: root.Certificate}); err != nil {
			panic(err) // writing to a bytes.Buffer does not fail
		}
	}
	return buf.Bytes()
}

// Version is the version of Module this binary was built with (from its build information), e.g.
// v0.0.0-20261030153154-30a33513ff6d.
func Version() (string, error) {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "", fmt.Errorf("no build information in this binary: build imagebuild with `go build` from hack/tools")
	}
	return moduleVersion(info, Module)
}

// moduleVersion finds a dependency's version (after replacements) in build information.
func moduleVersion(info *debug.BuildInfo, path string) (string, error) {
	for _, d := range info.Deps {
		if d.Path != path {
			continue
		}
		if d.Replace != nil {
			return d.Replace.Version, nil
		}
		return d.Version, nil
	}
	return "", fmt.Errorf("%s is not among this binary's dependencies", path)
}
