// Package apps builds the workloads of the end-to-end tests as container images: a Go client on the real Azure
// SDK for Go (goclient/) and a JavaScript client on @azure/identity (jsclient/). Both get managed-identity
// tokens the way an application in a pod does, through 169.254.169.254, and print one JSON line per attempt
// (see README.md for the contract). The images are tarballs for `ctr -n k8s.io images import`, built without
// a Docker daemon; their tags are content hashes, so the kubelet never pulls them.
package apps

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"

	"github.com/podidentity/podidentity/test/toolbox/ociimage"
)

// Repositories of the images; the tag is a content hash.
const (
	GoClientRepo = "podidentity.local/e2e-goclient"
	JSClientRepo = "podidentity.local/e2e-jsclient"
	AttackerRepo = "podidentity.local/e2e-attacker"
)

// AppUID is the uid (and gid) the apps run as: not root, and not the sidecar's uid (15078), whose traffic the
// redirect lets through to the real IMDS.
const AppUID = 65532

// NodePath is the Node.js runtime the JavaScript image carries: the machine's own.
const NodePath = "/usr/bin/node"

// Paths of the apps in their images.
const (
	GoClientPath = "/goclient"
	JSClientDir  = "/app"
	AttackerPath = "/attacker"
)

// RootDir is the repository's root (the directory of the main go.mod), found from this source file so the
// builders work from any test package's directory.
func RootDir() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("cannot locate the apps package's source")
	}
	root := filepath.Join(filepath.Dir(file), "..", "..")
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		return "", fmt.Errorf("repository root %s has no go.mod: build the e2e apps from a checkout: %w", root, err)
	}
	return filepath.Clean(root), nil
}

// workDir is bin/e2e under the root (git-ignored), locked against other test processes of the same run
// building the same things; unlock releases it.
func workDir() (root, dir string, unlock func(), err error) {
	if root, err = RootDir(); err != nil {
		return "", "", nil, err
	}
	dir = filepath.Join(root, "bin", "e2e")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, ".build.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", "", nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return "", "", nil, fmt.Errorf("locking %s: %w", f.Name(), err)
	}
	return root, dir, func() { f.Close() }, nil
}

// goTool is the go command that builds the Go client: the one on PATH (go test puts its toolchain's first;
// make and go run find go there too). Without one, running it fails naming "go".
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "go"
}

// BuildGoClientImage builds the Go client as a static binary and writes its image to outTar; it returns the
// image reference (podidentity.local/e2e-goclient:<content hash>).
func BuildGoClientImage(ctx context.Context, outTar string) (string, error) {
	return buildGoImage(ctx, "./test/apps/goclient", GoClientRepo, GoClientPath, AppUID, outTar)
}

// BuildAttackerImage builds the attacker (attacker/) as a static binary and writes its image, whose USER is uid,
// to outTar; it returns the image reference (podidentity.local/e2e-attacker:<content hash>). The suite builds
// it for root and for the sidecar's uid.
func BuildAttackerImage(ctx context.Context, outTar string, uid int) (string, error) {
	return buildGoImage(ctx, "./test/apps/attacker", AttackerRepo, AttackerPath, uid, outTar)
}

// buildGoImage builds the Go main package pkg as a static binary and writes an image holding it at path, run as
// uid, to outTar.
func buildGoImage(ctx context.Context, pkg, repo, path string, uid int, outTar string) (string, error) {
	root, dir, unlock, err := workDir()
	if err != nil {
		return "", err
	}
	defer unlock()
	bin := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.CommandContext(ctx, goTool(), "build", "-trimpath", "-ldflags=-s -w", "-o", bin, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building %s: %w\n%s", pkg, err, out)
	}
	files := append(userFiles(uid), ociimage.File{Path: path, Mode: 0o755, Src: bin})
	return writeImage(imageSpec{
		repo:       repo,
		files:      files,
		entrypoint: []string{path},
		env:        []string{"PATH=/"},
		workdir:    "/",
		uid:        uid,
	}, outTar)
}

// BuildJSClientImage installs the JavaScript client's locked dependencies (npm ci, cached under bin/) and
// writes its image to outTar: the machine's node with its ELF interpreter and shared libraries, the
// node_modules without developer-only files, and the script. It returns the image reference
// (podidentity.local/e2e-jsclient:<content hash>).
func BuildJSClientImage(ctx context.Context, outTar string) (string, error) {
	root, dir, unlock, err := workDir()
	if err != nil {
		return "", err
	}
	defer unlock()
	src := filepath.Join(root, "test", "apps", "jsclient")
	work := filepath.Join(dir, "jsclient")
	if err := npmCI(ctx, src, work, filepath.Join(root, "bin", "npm-cache")); err != nil {
		return "", err
	}
	if _, err := os.Stat(NodePath); err != nil {
		return "", fmt.Errorf("the JavaScript image carries this machine's node: %w (install Node.js 20: apt-get install -y nodejs)", err)
	}
	files := append(userFiles(AppUID), ociimage.File{Path: NodePath, Mode: 0o755, Src: NodePath})
	libs, err := runtimeEntries(ctx, NodePath)
	if err != nil {
		return "", err
	}
	files = append(files, libs...)
	for _, f := range []string{"client.js", "package.json"} {
		files = append(files, ociimage.File{Path: JSClientDir + "/" + f, Mode: 0o644, Src: filepath.Join(src, f)})
	}
	modules, err := ociimage.Tree(filepath.Join(work, "node_modules"), JSClientDir+"/node_modules", isPackagingNoise)
	if err != nil {
		return "", fmt.Errorf("listing node_modules: %w", err)
	}
	files = append(files, modules...)
	return writeImage(imageSpec{
		repo:       JSClientRepo,
		files:      files,
		entrypoint: []string{NodePath, JSClientDir + "/client.js"},
		env:        []string{"PATH=/usr/bin", "NODE_ENV=production"},
		workdir:    JSClientDir,
		uid:        AppUID,
	}, outTar)
}

// npmCI installs the locked dependencies of src into work/node_modules, unless the same lock file is already
// installed there. The npm cache lives in cache, so a second machine run needs no registry.
func npmCI(ctx context.Context, src, work, cache string) error {
	lock := filepath.Join(src, "package-lock.json")
	want, err := fileHash(filepath.Join(src, "package.json"), lock)
	if err != nil {
		return fmt.Errorf("the JavaScript client's package files: %w", err)
	}
	stamp := filepath.Join(work, ".installed")
	if got, err := os.ReadFile(stamp); err == nil && string(got) == want {
		return nil
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}
	for _, f := range []string{"package.json", "package-lock.json"} {
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(work, f), b, 0o644); err != nil {
			return err
		}
	}
	cmd := exec.CommandContext(ctx, "npm", "ci", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund", "--cache", cache)
	cmd.Dir = work
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("npm ci for the JavaScript client (needs npm and the npm registry, or a warm cache in %s): %w\n%s", cache, err, out)
	}
	return os.WriteFile(stamp, []byte(want), 0o644)
}
