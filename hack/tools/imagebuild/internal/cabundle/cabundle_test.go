package cabundle

import (
	"crypto/x509"
	"encoding/pem"
	"runtime/debug"
	"testing"
)

func TestPEMHoldsOnlyUnconstrainedCARoots(t *testing.T) {
	rest := PEM()
	n := 0
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatalf("certificate %d: %v", n, err)
		}
		if !cert.IsCA {
			t.Errorf("%s is not a CA", cert.Subject)
		}
		n++
	}
	if len(rest) != 0 {
		t.Errorf("%d bytes after the last certificate", len(rest))
	}
	// Mozilla's store has well over 100 roots; a handful carry distrust-after dates.
	if n < 100 {
		t.Errorf("%d roots, want the Mozilla store (more than 100)", n)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(PEM()) {
		t.Error("crypto/x509 accepts none of the bundle")
	}
}

func TestModuleVersion(t *testing.T) {
	info := &debug.BuildInfo{Deps: []*debug.Module{
		{Path: "example.com/a", Version: "v1.0.0"},
		{Path: Module, Version: "v0.0.0-1", Replace: &debug.Module{Path: Module, Version: "v0.0.0-2"}},
	}}
	for _, tc := range []struct {
		path, want string
		wantErr    bool
	}{
		{path: "example.com/a", want: "v1.0.0"},
		{path: Module, want: "v0.0.0-2"},
		{path: "example.com/missing", wantErr: true},
	} {
		got, err := moduleVersion(info, tc.path)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("moduleVersion(%s) = %q, %v; want %q, error %v", tc.path, got, err, tc.want, tc.wantErr)
		}
	}
}
