package apps

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/podidentity/podidentity/test/toolbox/ociimage"
)

func TestParseLdd(t *testing.T) {
	tests := []struct {
		name    string
		out     string
		want    []string
		wantErr string
	}{
		{
			name: "node on Debian",
			out: "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibdl.so.2 => /lib/x86_64-linux-gnu/libdl.so.2 (0x00007f22)\n" +
				"\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f21)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f22)\n",
			want: []string{"/lib/x86_64-linux-gnu/libdl.so.2", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"},
		},
		{name: "static binary", out: "\tnot a dynamic executable\n", want: nil},
		{name: "missing library", out: "\tlibfoo.so.1 => not found\n", wantErr: "libfoo.so.1 is not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseLdd(tt.out)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("paths = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestTreeSkipsPackagingNoise(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"@azure/identity/dist/commonjs/index.js", "@azure/identity/dist/commonjs/index.js.map",
		"@azure/identity/dist/commonjs/index.d.ts", "@azure/msal-common/src/utils/Constants.ts", "@azure/identity/package.json",
		".bin/semver-target", "@azure/identity/dist/esm/index.js", "@azure/identity/dist/browser/index.js",
		"@azure/msal-browser/lib/msal-browser.cjs", "@azure/msal-common/dist-browser/index.js", "debug/src/browser.js",
		"open/index.js"} {
		p := filepath.Join(dir, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("../@azure/identity/package.json", filepath.Join(dir, "@azure", "link.json")); err != nil {
		t.Fatal(err)
	}
	got, err := ociimage.Tree(dir, "/app/node_modules", isPackagingNoise)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range got {
		n := e.Path
		if e.Link != "" {
			n += " -> " + e.Link
		}
		names = append(names, n)
	}
	want := []string{
		"/app/node_modules/@azure/identity/dist/commonjs/index.js",
		"/app/node_modules/@azure/identity/package.json",
		"/app/node_modules/@azure/link.json -> ../@azure/identity/package.json",
		"/app/node_modules/debug/src/browser.js", // outside the Azure SDK nothing is second-guessed
		"/app/node_modules/open/index.js",
	}
	if !reflect.DeepEqual(names, want) {
		t.Errorf("entries = %q\nwant %q", names, want)
	}
}
