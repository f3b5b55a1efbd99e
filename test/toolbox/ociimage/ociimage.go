// Package ociimage is the one definition of how this repository assembles a container image without a Docker
// daemon: one layer of files on an empty base (Layer), a config that names the architecture, entrypoint and the
// uid the image runs as (Build), and an OCI image index of one image per architecture (Index). Every file gets
// fixed ownership (0:0) and time (the epoch) and the layer lists its files sorted by path, parents first, so
// equal inputs give byte-identical layers and so equal digests.
//
// It is build tooling in no product binary, kept with the test toolbox: bin/imagebuild (hack/tools/imagebuild) builds the product's images with
// it (`make images`, `make images-push`), and test/apps the end-to-end suite's client images. The images
// themselves are go-containerregistry values: write them with tarball.WriteToFile, push them with remote.
package ociimage

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// File is one entry of a layer: at Path (absolute and clean), either Data, the content of the host file Src
// (read when the layer is written; symlinks followed), or a symlink to Link.
type File struct {
	Path string
	// Mode is the permission bits of a regular file (0o644, 0o755); symlinks are 0o777, directories 0o755.
	Mode int64
	Data []byte
	Src  string
	Link string
}

// Config is what an image's config says besides its layer.
type Config struct {
	// Arch is the GOARCH its binaries were built for; the image is linux/<Arch>.
	Arch       string
	Entrypoint []string
	Env        []string
	WorkingDir string
	// UID is the user and group the image runs as ("<uid>:<uid>"; 0 for root).
	UID    int
	Labels map[string]string
}

// UserFiles are /etc/passwd and /etc/group naming root, then each of users with its uid as its group, so
// tools that look a uid up (Node's os.userInfo, say) find it.
func UserFiles(users ...User) []File {
	passwd := "root:x:0:0:root:/root:/sbin/nologin\n"
	group := "root:x:0:\n"
	for _, u := range users {
		passwd += fmt.Sprintf("%s:x:%d:%d:%s:%s:/sbin/nologin\n", u.Name, u.UID, u.UID, u.Name, u.Home)
		group += fmt.Sprintf("%s:x:%d:\n", u.Name, u.UID)
	}
	return []File{
		{Path: "/etc/passwd", Mode: 0o644, Data: []byte(passwd)},
		{Path: "/etc/group", Mode: 0o644, Data: []byte(group)},
	}
}

// User is an account of UserFiles.
type User struct {
	Name string
	UID  int
	Home string
}

// Tree lists the host directory dir as files under dst, keeping symlinks as symlinks; a regular file is 0o755
// when any execute bit is set, else 0o644. skip, when not nil, drops paths (relative to dir, slash-separated)
// the image does not need; a skipped directory is not entered.
func Tree(dir, dst string, skip func(rel string, d fs.DirEntry) bool) ([]File, error) {
	var out []File
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
			out = append(out, File{Path: target, Link: link})
		case d.Type().IsRegular():
			info, err := d.Info()
			if err != nil {
				return err
			}
			mode := int64(0o644)
			if info.Mode()&0o111 != 0 {
				mode = 0o755
			}
			out = append(out, File{Path: target, Mode: mode, Src: p})
		}
		return nil
	})
	return out, err
}

// LayerTar writes files as one uncompressed tar: sorted by path, each parent directory before its first child,
// owner 0:0 and time the epoch throughout. The order of files does not matter; a path given twice, or one
// not absolute and clean, is an error.
func LayerTar(files []File) ([]byte, error) {
	sorted := append([]File(nil), files...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Path < sorted[j].Path })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	dirs := map[string]bool{}
	for i, f := range sorted {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path || f.Path == "/" {
			return nil, fmt.Errorf("image path %q is not a clean absolute path", f.Path)
		}
		if i > 0 && sorted[i-1].Path == f.Path {
			return nil, fmt.Errorf("image path %s given twice", f.Path)
		}
		var parents []string
		for d := path.Dir(f.Path); d != "/" && !dirs[d]; d = path.Dir(d) {
			parents = append(parents, d)
		}
		for j := len(parents) - 1; j >= 0; j-- {
			dirs[parents[j]] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: parents[j][1:] + "/", Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
				return nil, err
			}
		}
		if f.Link != "" {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: f.Path[1:], Linkname: f.Link, Mode: 0o777, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
				return nil, err
			}
			continue
		}
		data := f.Data
		if f.Src != "" {
			var err error
			if data, err = os.ReadFile(f.Src); err != nil {
				return nil, err
			}
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.Path[1:], Mode: f.Mode, Size: int64(len(data)), ModTime: epoch, Format: tar.FormatPAX}); err != nil {
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

// Layer is LayerTar's tar as an OCI layer; opts are go-containerregistry's (a compression level, say).
func Layer(files []File, opts ...tarball.LayerOption) (v1.Layer, error) {
	b, err := LayerTar(files)
	if err != nil {
		return nil, err
	}
	opts = append([]tarball.LayerOption{tarball.WithMediaType(types.OCILayer)}, opts...)
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }, opts...)
}

// Build is the image of layer on an empty base, with OCI media types, created at the epoch, its config as cfg
// says.
func Build(layer v1.Layer, cfg Config) (v1.Image, error) {
	if cfg.Arch == "" {
		return nil, fmt.Errorf("an image needs an architecture")
	}
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.AppendLayers(base, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS = "linux"
	cf.Architecture = cfg.Arch
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cf.Config.Entrypoint = cfg.Entrypoint
	cf.Config.Env = cfg.Env
	cf.Config.WorkingDir = cfg.WorkingDir
	cf.Config.User = fmt.Sprintf("%d:%d", cfg.UID, cfg.UID)
	cf.Config.Labels = cfg.Labels
	return mutate.ConfigFile(img, cf)
}

// Index is an OCI image index of images, one per linux/<arch>, in the order of archs; every image must have
// exactly one architecture of archs.
func Index(images map[string]v1.Image, archs []string) (v1.ImageIndex, error) {
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	var adds []mutate.IndexAddendum
	for _, arch := range archs {
		img, ok := images[arch]
		if !ok {
			return nil, fmt.Errorf("no image for linux/%s", arch)
		}
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{
			MediaType: types.OCIManifestSchema1,
			Platform:  &v1.Platform{OS: "linux", Architecture: arch},
		}})
	}
	if len(adds) != len(images) {
		return nil, fmt.Errorf("%d images for %d architectures", len(images), len(archs))
	}
	return mutate.AppendManifests(idx, adds...), nil
}
