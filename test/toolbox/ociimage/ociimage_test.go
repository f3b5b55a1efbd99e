package ociimage

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

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

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
	files := []File{
		{Path: "/app/node_modules/x/index.js", Mode: 0o644, Data: []byte("js")},
		{Path: "/lib64/ld.so", Mode: 0o755, Src: filepath.Join(dir, "lib.so")},
		{Path: "/app/node_modules/.bin/x", Link: "../x/index.js"},
		{Path: "/app/client.js", Mode: 0o644, Data: []byte("main")},
	}
	got, err := LayerTar(files)
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
	again, err := LayerTar([]File{files[3], files[1], files[0], files[2]})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, again) {
		t.Error("the layer depends on the order of its entries; equal inputs would give different digests")
	}

	for _, bad := range []struct {
		name    string
		files   []File
		wantErr string
	}{
		{"duplicate", []File{{Path: "/a", Data: []byte("1")}, {Path: "/a", Data: []byte("2")}}, "given twice"},
		{"relative", []File{{Path: "a"}}, "not a clean absolute path"},
		{"unclean", []File{{Path: "/a/../b"}}, "not a clean absolute path"},
		{"root", []File{{Path: "/"}}, "not a clean absolute path"},
	} {
		if _, err := LayerTar(bad.files); err == nil || !strings.Contains(err.Error(), bad.wantErr) {
			t.Errorf("%s: error = %v, want %q", bad.name, err, bad.wantErr)
		}
	}
}

func TestTreeKeepsModesAndLinks(t *testing.T) {
	dir := t.TempDir()
	for name, mode := range map[string]os.FileMode{"bin/tool": 0o750, "lib/data.txt": 0o600} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(name), mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("../bin/tool", filepath.Join(dir, "lib", "tool")); err != nil {
		t.Fatal(err)
	}
	got, err := Tree(dir, "/opt", func(rel string, _ os.DirEntry) bool { return rel == "skipped" })
	if err != nil {
		t.Fatal(err)
	}
	want := []File{
		{Path: "/opt/bin/tool", Mode: 0o755, Src: filepath.Join(dir, "bin", "tool")},
		{Path: "/opt/lib/data.txt", Mode: 0o644, Src: filepath.Join(dir, "lib", "data.txt")},
		{Path: "/opt/lib/tool", Link: "../bin/tool"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Tree =\n%+v\nwant\n%+v", got, want)
	}
}

func TestUserFiles(t *testing.T) {
	files := UserFiles(User{Name: "nonroot", UID: 65532, Home: "/home/nonroot"}, User{Name: "app", UID: 1000, Home: "/"})
	want := map[string]string{
		"/etc/passwd": "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\napp:x:1000:1000:app:/:/sbin/nologin\n",
		"/etc/group":  "root:x:0:\nnonroot:x:65532:\napp:x:1000:\n",
	}
	if len(files) != len(want) {
		t.Fatalf("%d files, want %d", len(files), len(want))
	}
	for _, f := range files {
		if string(f.Data) != want[f.Path] || f.Mode != 0o644 {
			t.Errorf("%s (mode %o) =\n%s\nwant mode 644 and\n%s", f.Path, f.Mode, f.Data, want[f.Path])
		}
	}
}

func TestBuild(t *testing.T) {
	layer, err := Layer([]File{{Path: "/bin/app", Mode: 0o755, Data: []byte("app")}})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Arch: "arm64", Entrypoint: []string{"/bin/app", "-v"}, Env: []string{"PATH=/bin"}, WorkingDir: "/work", UID: 65532,
		Labels: map[string]string{"org.opencontainers.image.version": "0.1.0"}}
	img, err := Build(layer, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if mt, _ := img.MediaType(); mt != types.OCIManifestSchema1 {
		t.Errorf("media type %s, want OCI", mt)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.Config.MediaType != types.OCIConfigJSON || len(m.Layers) != 1 || m.Layers[0].MediaType != types.OCILayer {
		t.Errorf("manifest %+v: want an OCI config and one OCI layer", m)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "arm64" || cf.Config.User != "65532:65532" || cf.Created.Unix() != 0 ||
		!reflect.DeepEqual(cf.Config.Entrypoint, cfg.Entrypoint) || !reflect.DeepEqual(cf.Config.Env, cfg.Env) ||
		cf.Config.WorkingDir != "/work" || !reflect.DeepEqual(cf.Config.Labels, cfg.Labels) {
		t.Errorf("config %+v, want %+v on linux, created at the epoch", cf.Config, cfg)
	}
	tr := tar.NewReader(mutate.Extract(img))
	var names []string
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
	}
	if !reflect.DeepEqual(names, []string{"bin", "bin/app"}) { // mutate.Extract drops the directory's slash
		t.Errorf("filesystem %q, want bin and bin/app", names)
	}
	if _, err := Build(layer, Config{}); err == nil {
		t.Error("an image with no architecture was built")
	}
}

func TestIndex(t *testing.T) {
	images := map[string]v1.Image{}
	for _, arch := range []string{"amd64", "arm64"} {
		layer, err := Layer([]File{{Path: "/app", Mode: 0o755, Data: []byte("app-" + arch)}})
		if err != nil {
			t.Fatal(err)
		}
		if images[arch], err = Build(layer, Config{Arch: arch}); err != nil {
			t.Fatal(err)
		}
	}
	idx, err := Index(images, []string{"amd64", "arm64"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.MediaType != types.OCIImageIndex || len(m.Manifests) != 2 {
		t.Fatalf("index %+v", m)
	}
	for i, arch := range []string{"amd64", "arm64"} {
		d := m.Manifests[i]
		want, _ := images[arch].Digest()
		if d.Platform == nil || d.Platform.OS != "linux" || d.Platform.Architecture != arch || d.Digest != want {
			t.Errorf("manifest %d: %+v, want linux/%s %s", i, d, arch, want)
		}
	}
	if _, err := Index(map[string]v1.Image{"amd64": images["amd64"]}, []string{"amd64", "arm64"}); err == nil {
		t.Error("an index with an architecture missing was built")
	}
	if _, err := Index(images, []string{"amd64"}); err == nil {
		t.Error("an index that drops an image was built")
	}
}
