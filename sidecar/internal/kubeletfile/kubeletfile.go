// Package kubeletfile writes a projected file the way the kubelet's atomic writer does, for tests of code that
// watches downward-API files: each version in a timestamped directory, a "..data" symlink swapped to it with a
// rename, and the file itself a symlink through "..data". A watcher that follows the file's path sees every
// swap as one atomic change.
package kubeletfile

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// Dir is a directory the kubelet would project one file into.
type Dir struct {
	dir, name string
	versions  int
}

// New returns the projection of file name into dir; nothing is written until Write.
func New(dir, name string) *Dir { return &Dir{dir: dir, name: name} }

// Path is the file's path, as a container sees it.
func (d *Dir) Path() string { return filepath.Join(d.dir, d.name) }

// Write publishes content as the file's next version.
func (d *Dir) Write(t testing.TB, content []byte) {
	t.Helper()
	d.versions++
	version := filepath.Join(d.dir, fmt.Sprintf("..2026_11_27_21_00_00.%d", d.versions))
	if err := os.Mkdir(version, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(version, d.name), content, 0o644); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(d.dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(version), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(d.dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(d.Path()); os.IsNotExist(err) {
		if err := os.Symlink(filepath.Join("..data", d.name), d.Path()); err != nil {
			t.Fatal(err)
		}
	}
}
