package apps

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/podidentity/podidentity/test/toolbox/ociimage"
)

// Interpreter returns the ELF interpreter (PT_INTERP) a dynamically linked binary names, e.g.
// /lib64/ld-linux-x86-64.so.2, or "" for a static binary. Without it at that path the kernel cannot start the
// binary and the container fails with a bare "no such file or directory".
func Interpreter(binary string) (string, error) {
	f, err := elf.Open(binary)
	if err != nil {
		return "", err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			return "", fmt.Errorf("reading the interpreter of %s: %w", binary, err)
		}
		return string(bytes.TrimRight(b, "\x00")), nil
	}
	return "", nil
}

// parseLdd returns the absolute paths of the shared objects in ldd's output, in order, without the vDSO
// (the kernel provides it): "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and
// "/lib64/ld-linux-x86-64.so.2 (0x...)".
func parseLdd(out string) ([]string, error) {
	var paths []string
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 0:
		case len(f) >= 3 && f[1] == "=>" && f[2] == "not":
			return nil, fmt.Errorf("%s is not found on this machine (ldd: %s)", f[0], strings.TrimSpace(sc.Text()))
		case len(f) >= 3 && f[1] == "=>" && filepath.IsAbs(f[2]):
			paths = append(paths, f[2])
		case filepath.IsAbs(f[0]):
			paths = append(paths, f[0])
		}
	}
	return paths, sc.Err()
}

// runtimeEntries lists the files a dynamically linked binary needs besides itself: its ELF interpreter and the
// shared libraries ldd names, each at the path the loader looks for it, with the content of the file that
// path resolves to on this machine (so /lib64/ld-linux-x86-64.so.2 is a real file in the image, not a link
// into a directory the image lacks).
func runtimeEntries(ctx context.Context, binary string) ([]ociimage.File, error) {
	interp, err := Interpreter(binary)
	if err != nil {
		return nil, err
	}
	out, err := exec.CommandContext(ctx, "ldd", binary).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w (install libc-bin)", binary, err)
	}
	libs, err := parseLdd(string(out))
	if err != nil {
		return nil, err
	}
	if interp != "" {
		libs = append(libs, interp)
	}
	seen := map[string]bool{}
	var entries []ociimage.File
	for _, l := range libs {
		if seen[l] {
			continue
		}
		seen[l] = true
		real, err := filepath.EvalSymlinks(l)
		if err != nil {
			return nil, fmt.Errorf("shared library %s of %s: %w", l, binary, err)
		}
		entries = append(entries, ociimage.File{Path: filepath.Clean(l), Mode: 0o755, Src: real})
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Path < entries[j].Path })
	return entries, nil
}
