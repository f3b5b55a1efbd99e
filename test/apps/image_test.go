package apps

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
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

type tarItem struct {
	name, link string
	typ        byte
	mode       int64
	body       string
}

func readTar(t *testing.T, b []byte) []tarItem {
	t.Helper()
	var items []tarItem
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return items
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 || h.ModTime.Unix() != 0 {
			t.Errorf("%s: owner %d:%d mtime %v, want 0:0 at the epoch", h.Name, h.Uid, h.Gid, h.ModTime)
		}
		items = append(items, tarItem{name: h.Name, link: h.Linkname, typ: h.Typeflag, mode: h.Mode, body: string(body)})
	}
}

func TestLayerTar(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "lib.so"), []byte("ELF"), 0o755); err != nil {
		t.Fatal(err)
	}
	entries := []entry{
		{path: "/app/node_modules/x/index.js", mode: 0o644, data: []byte("js")},
		{path: "/lib64/ld.so", mode: 0o755, src: filepath.Join(dir, "lib.so")},
		{path: "/app/node_modules/.bin/x", link: "../x/index.js"},
		{path: "/app/client.js", mode: 0o644, data: []byte("main")},
	}
	got, err := layerTar(entries)
	if err != nil {
		t.Fatal(err)
	}
	want := []tarItem{
		{name: "app/", typ: tar.TypeDir, mode: 0o755},
		{name: "app/client.js", typ: tar.TypeReg, mode: 0o644, body: "main"},
		{name: "app/node_modules/", typ: tar.TypeDir, mode: 0o755},
		{name: "app/node_modules/.bin/", typ: tar.TypeDir, mode: 0o755},
		{name: "app/node_modules/.bin/x", typ: tar.TypeSymlink, mode: 0o777, link: "../x/index.js"},
		{name: "app/node_modules/x/", typ: tar.TypeDir, mode: 0o755},
		{name: "app/node_modules/x/index.js", typ: tar.TypeReg, mode: 0o644, body: "js"},
		{name: "lib64/", typ: tar.TypeDir, mode: 0o755},
		{name: "lib64/ld.so", typ: tar.TypeReg, mode: 0o755, body: "ELF"},
	}
	if items := readTar(t, got); !reflect.DeepEqual(items, want) {
		t.Errorf("layer =\n%+v\nwant\n%+v", items, want)
	}
	// Same entries in another order: the same bytes, hence the same content-hash tag.
	again, err := layerTar([]entry{entries[3], entries[1], entries[0], entries[2]})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, again) {
		t.Error("the layer depends on the order of its entries; image tags would not be content hashes")
	}

	for _, bad := range []struct {
		name    string
		entries []entry
		wantErr string
	}{
		{"duplicate", []entry{{path: "/a", data: []byte("1")}, {path: "/a", data: []byte("2")}}, "given twice"},
		{"relative", []entry{{path: "a"}}, "not a clean absolute path"},
		{"unclean", []entry{{path: "/a/../b"}}, "not a clean absolute path"},
	} {
		if _, err := layerTar(bad.entries); err == nil || !strings.Contains(err.Error(), bad.wantErr) {
			t.Errorf("%s: error = %v, want %q", bad.name, err, bad.wantErr)
		}
	}
}

func TestTreeEntriesSkipsPackagingNoise(t *testing.T) {
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
	got, err := treeEntries(dir, "/app/node_modules", isPackagingNoise)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range got {
		n := e.path
		if e.link != "" {
			n += " -> " + e.link
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
