package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// The tests run the real command as a separate process, built as the images build it (CGO_ENABLED=0: only
// such a binary can drop privileges on every thread). Started as root, it switches to the sidecar's uid and
// then reads its files as that uid; so the binary, its files and the helper processes live in directories
// every uid can read (the go tool's own directories are root's).

// helperEnv makes the test binary a helper process of the namespace tests instead of running the tests:
// "get <url>" prints "<status> <body>" of a GET with "Metadata: true", "read <path>" prints "ok" or
// "error <why>", "sleep" waits to be killed.
const helperEnv = "PODIDENTITY_SIDECAR_TEST_HELPER"

var (
	// shared is a directory every uid may read, for the built sidecar and the helper binary; set by TestMain.
	shared string
	// helperBinary is a copy of the test binary in shared (root only).
	helperBinary string

	buildOnce sync.Once
	built     string
	buildErr  error
)

func TestMain(m *testing.M) {
	if arg, ok := os.LookupEnv(helperEnv); ok {
		os.Exit(helper(arg))
	}
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "podidentity-sidecar-test-")
	if err == nil {
		defer os.RemoveAll(dir)
		err = os.Chmod(dir, 0o755)
	}
	if err == nil && os.Geteuid() == 0 {
		var self string
		var data []byte
		if self, err = os.Executable(); err == nil {
			if data, err = os.ReadFile(self); err == nil {
				helperBinary = filepath.Join(dir, "helper")
				err = os.WriteFile(helperBinary, data, 0o755)
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "preparing the shared test directory:", err)
		return 1
	}
	shared = dir
	return m.Run()
}

// sidecarBinary builds the command once per test run, with CGO_ENABLED=0, into the shared directory.
func sidecarBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		built = filepath.Join(shared, "podidentity-sidecar")
		cmd := exec.Command("go", "build", "-trimpath", "-o", built, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build (CGO_ENABLED=0): %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return built
}

// readableDir is a fresh directory every uid can read, removed when the test ends.
func readableDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp(shared, "files-")
	if err == nil {
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func helper(arg string) int {
	switch verb, rest, _ := strings.Cut(arg, " "); verb {
	case "get":
		req, err := http.NewRequest(http.MethodGet, rest, nil)
		if err != nil {
			fmt.Println("error", err)
			return 0
		}
		req.Header.Set("Metadata", "true")
		resp, err := (&http.Client{Timeout: 20 * time.Second}).Do(req)
		if err != nil {
			fmt.Println("error", err)
			return 0
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		fmt.Printf("%d %s\n", resp.StatusCode, body)
	case "read":
		if _, err := os.ReadFile(rest); err != nil {
			if errors.Is(err, os.ErrPermission) {
				fmt.Println("error permission denied:", err)
			} else {
				fmt.Println("error", err)
			}
			return 0
		}
		fmt.Println("ok")
	case "sleep":
		time.Sleep(time.Hour)
	default:
		fmt.Fprintf(os.Stderr, "unknown helper %q\n", arg)
		return 2
	}
	return 0
}
