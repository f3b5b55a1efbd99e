package apps

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// entry is one file of an image: its absolute path in the image and either its content (data), a host file
// to copy (src, symlinks followed), or a symlink target (link).
type entry struct {
	path string
	mode int64
	data []byte
	src  string
	link string
}

// imageSpec is a single-layer image on an empty base.
type imageSpec struct {
	repo       string
	entries    []entry
	entrypoint []string
	env        []string
	workdir    string
	uid        int
}

// userFiles name the image's user, so tools that look the uid up (and node's os.userInfo) find it.
func userFiles(uid int) []entry {
	return []entry{
		{path: "/etc/passwd", mode: 0o644, data: []byte(fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\napp:x:%d:%d:app:/tmp:/sbin/nologin\n", uid, uid))},
		{path: "/etc/group", mode: 0o644, data: []byte(fmt.Sprintf("root:x:0:\napp:x:%d:\n", uid))},
	}
}

// treeEntries lists a host directory as entries under dst, keeping symlinks as symlinks; skip drops paths (relative
// to dir, slash-separated) the image does not need.
func treeEntries(dir, dst string, skip func(rel string, d fs.DirEntry) bool) ([]entry, error) {
	var out []entry
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		rel = filepath.ToSlash(rel)
		if skip != nil && skip(rel, d) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		target := path.Join(dst, rel)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			out = append(out, entry{path: target, link: link})
		case d.Type().IsRegular():
			info, err := d.Info()
			if err != nil {
				return err
			}
			mode := int64(0o644)
			if info.Mode()&0o111 != 0 {
				mode = 0o755
			}
			out = append(out, entry{path: target, mode: mode, src: p})
		}
		return nil
	})
	return out, err
}

// layerTar writes the entries as one tar with fixed owners and times, parents first, so equal inputs give
// byte-identical layers and so an equal content hash.
func layerTar(entries []entry) ([]byte, error) {
	sorted := append([]entry(nil), entries...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].path < sorted[j].path })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	dirs := map[string]bool{}
	for i, e := range sorted {
		if !path.IsAbs(e.path) || path.Clean(e.path) != e.path {
			return nil, fmt.Errorf("image path %q is not a clean absolute path", e.path)
		}
		if i > 0 && sorted[i-1].path == e.path {
			return nil, fmt.Errorf("image path %s given twice", e.path)
		}
		var parents []string
		for d := path.Dir(e.path); d != "/" && !dirs[d]; d = path.Dir(d) {
			parents = append(parents, d)
		}
		for j := len(parents) - 1; j >= 0; j-- {
			dirs[parents[j]] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: parents[j][1:] + "/", Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
				return nil, err
			}
		}
		if e.link != "" {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: e.path[1:], Linkname: e.link, Mode: 0o777, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
				return nil, err
			}
			continue
		}
		data := e.data
		if e.src != "" {
			var err error
			if data, err = os.ReadFile(e.src); err != nil {
				return nil, err
			}
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: e.path[1:], Mode: e.mode, Size: int64(len(data)), ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeImage assembles the image and writes it to outTar as a tarball that `ctr -n k8s.io images import` and
// `docker load` accept. The tag is a hash of the content, never latest, so the kubelet never tries to pull
// it, and a changed app gets a new reference.
func writeImage(spec imageSpec, outTar string) (string, error) {
	layerBytes, err := layerTar(spec.entries)
	if err != nil {
		return "", fmt.Errorf("assembling the layer of %s: %w", spec.repo, err)
	}
	// BestSpeed: the node image is ~100 MB and is compressed twice (digest, then write); size matters less
	// than CPU here, the tarball never leaves the machine.
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layerBytes)), nil },
		tarball.WithCompressionLevel(gzip.BestSpeed))
	if err != nil {
		return "", err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return "", err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return "", err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cfg.Config.Entrypoint = spec.entrypoint
	cfg.Config.Env = spec.env
	cfg.Config.WorkingDir = spec.workdir
	cfg.Config.User = fmt.Sprintf("%d:%d", spec.uid, spec.uid)
	cfg.Config.Labels = map[string]string{"org.opencontainers.image.source": "https://github.com/podidentity/podidentity/tree/main/test/apps"}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return "", err
	}
	// The config names the uncompressed layer, so its digest is a content hash that costs no compression.
	cfgName, err := img.ConfigName()
	if err != nil {
		return "", err
	}
	ref := spec.repo + ":" + cfgName.Hex[:16]
	tag, err := name.NewTag(ref)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(outTar), 0o755); err != nil {
		return "", err
	}
	tmp := outTar + ".tmp"
	if err := tarball.WriteToFile(tmp, tag, img); err != nil {
		_ = os.Remove(tmp)
		return "", fmt.Errorf("writing %s: %w", outTar, err)
	}
	return ref, os.Rename(tmp, outTar)
}

// fileHash is the hex SHA-256 of files' contents, in order.
func fileHash(paths ...string) (string, error) {
	h := sha256.New()
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return "", err
		}
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// isPackagingNoise says whether a path under node_modules is never loaded by the client in Node: source maps,
// type declarations and TypeScript sources anywhere; and in the Azure SDK's packages (which ship one build
// per platform) the ES-module, browser, Workers and React Native builds, and MSAL for browsers. The client
// is CommonJS, so Node resolves every Azure package to its commonjs build. TestImages runs the client from the
// trimmed image, which is what proves this list safe.
func isPackagingNoise(rel string, d fs.DirEntry) bool {
	base := path.Base(rel)
	if d.IsDir() {
		if base == ".bin" {
			return true
		}
		if strings.HasPrefix(rel, "@azure/") || strings.HasPrefix(rel, "@typespec/") {
			switch base {
			case "esm", "browser", "workerd", "react-native", "dist-browser":
				return true
			}
			return rel == "@azure/msal-browser"
		}
		return false
	}
	return strings.HasSuffix(base, ".map") || strings.HasSuffix(base, ".d.ts") || strings.HasSuffix(base, ".d.mts") ||
		strings.HasSuffix(base, ".d.cts") || (strings.HasSuffix(base, ".ts") && strings.Contains(rel, "/src/"))
}
