// Command imagebuild assembles a container image from one static binary, without a Docker daemon or a
// registry: an empty base, one layer (the binary, /etc/passwd and /etc/group naming the image's user, and the
// CA bundle so TLS to Azure works), and a config with the entrypoint and user. It writes a tarball that
// `ctr images import` and `docker load` accept. It is the daemonless twin of the Dockerfile's targets.
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"sort"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func main() {
	var (
		binary   = flag.String("binary", "", "static binary to put in the image (required)")
		ref      = flag.String("tag", "", "image reference, e.g. podidentity/sidecar:v0.1.0 (required)")
		out      = flag.String("out", "", "output tarball (required)")
		uid      = flag.Int("uid", 65532, "user the image runs as (0 for root)")
		caBundle = flag.String("ca-bundle", "/etc/ssl/certs/ca-certificates.crt", "CA bundle copied to /etc/ssl/certs/ca-certificates.crt; empty for none")
		version  = flag.String("version", "dev", "value of the org.opencontainers.image.version label")
		arch     = flag.String("arch", runtime.GOARCH, "image architecture (the binary must match)")
		extra    extraBinaries
	)
	flag.Var(&extra, "extra-binary", "another static binary to put at /<its name> (repeatable; e.g. the CNI plugin the node agent installs)")
	flag.Parse()
	if *binary == "" || *ref == "" || *out == "" {
		fmt.Fprintln(os.Stderr, "imagebuild: --binary, --tag and --out are required")
		os.Exit(2)
	}
	if err := build(*binary, extra, *ref, *out, *uid, *caBundle, *version, *arch); err != nil {
		fmt.Fprintln(os.Stderr, "imagebuild:", err)
		os.Exit(1)
	}
}

// extraBinaries collects --extra-binary.
type extraBinaries []string

func (e *extraBinaries) String() string     { return fmt.Sprint([]string(*e)) }
func (e *extraBinaries) Set(v string) error { *e = append(*e, v); return nil }

func build(binary string, extra []string, ref, out string, uid int, caBundle, version, arch string) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("--tag %q: %w", ref, err)
	}
	bin, err := os.ReadFile(binary)
	if err != nil {
		return err
	}
	entry := "/" + path.Base(binary)
	files := []file{
		{name: entry, mode: 0o755, data: bin},
		{name: "/etc/passwd", mode: 0o644, data: []byte(fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\npodidentity:x:%d:%d:podidentity:/:/sbin/nologin\n", uid, uid))},
		{name: "/etc/group", mode: 0o644, data: []byte(fmt.Sprintf("root:x:0:\nnonroot:x:65532:\npodidentity:x:%d:\n", uid))},
	}
	for _, x := range extra {
		data, err := os.ReadFile(x)
		if err != nil {
			return fmt.Errorf("--extra-binary: %w", err)
		}
		files = append(files, file{name: "/" + path.Base(x), mode: 0o755, data: data})
	}
	if caBundle != "" {
		ca, err := os.ReadFile(caBundle)
		if err != nil {
			return fmt.Errorf("CA bundle: %w (install ca-certificates or pass --ca-bundle=)", err)
		}
		files = append(files, file{name: "/etc/ssl/certs/ca-certificates.crt", mode: 0o644, data: ca})
	}
	layerTar, err := tarOf(files)
	if err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layerTar)), nil })
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cfg = cfg.DeepCopy()
	cfg.OS = "linux"
	cfg.Architecture = arch
	cfg.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cfg.Config.Entrypoint = []string{entry}
	cfg.Config.User = fmt.Sprintf("%d:%d", uid, uid)
	cfg.Config.Env = []string{"PATH=/", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"}
	cfg.Config.Labels = map[string]string{
		"org.opencontainers.image.source":  "https://github.com/podidentity/podidentity",
		"org.opencontainers.image.version": version,
	}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return err
	}
	return tarball.WriteToFile(out, tag, img)
}

type file struct {
	name string
	mode int64
	data []byte
}

// tarOf writes files with fixed ownership and times, so equal inputs give byte-identical layers.
func tarOf(files []file) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for _, f := range files {
		for d := path.Dir(f.name); d != "/" && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	for _, d := range sortedKeys(dirs) {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d[1:] + "/", Mode: 0o755, ModTime: time.Unix(0, 0)}); err != nil {
			return nil, err
		}
	}
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name[1:], Mode: f.mode, Size: int64(len(f.data)), ModTime: time.Unix(0, 0)}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func sortedKeys(m map[string]bool) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys) // a parent is a prefix of its children, so it sorts first
	return keys
}
