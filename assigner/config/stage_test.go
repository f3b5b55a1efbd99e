package config

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// readAsEnv makes the test binary read an azure.json and print the outcome, for TestStageAzureJSON's child
// processes running as the assigner's uid.
const readAsEnv = "PODIDENTITY_TEST_READ_AZURE_JSON"

func TestReadAzureJSONChild(t *testing.T) {
	path := os.Getenv(readAsEnv)
	if path == "" {
		t.Skip("child of TestStageAzureJSON")
	}
	c, err := LoadAzureJSON(path)
	if err != nil {
		fmt.Println("ERROR:", err)
		return
	}
	fmt.Println("TENANT:", c.TenantID)
}

// readAs runs LoadAzureJSON(path) in a child process with the given uid and gid and returns what it printed.
// The test binary is copied next to the file first: go test builds it in a directory only root may enter.
func readAs(t *testing.T, uid, gid uint32, path string) string {
	t.Helper()
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(filepath.Dir(filepath.Dir(path)), "config.test")
	if _, err := os.Stat(bin); err != nil {
		if err := os.WriteFile(bin, self, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(bin, "-test.run=^TestReadAzureJSONChild$", "-test.v")
	cmd.Env = append(os.Environ(), readAsEnv+"="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child as %d:%d: %v\n%s", uid, gid, err, out)
	}
	return string(out)
}

// TestStageAzureJSON reproduces AKS's azure.json (root's, mode 0600) and the assigner's uid 65532 on this
// machine's kernel: the assigner cannot read it, and the error says what to do; staged by root into a directory
// that the pod's fsGroup owns (set-group-id, as the kubelet prepares an emptyDir for fsGroup), it can.
func TestStageAzureJSON(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: it creates a root-only file and reads it as another uid")
	}
	const uid, gid = 65532, 65532
	top, err := os.MkdirTemp("", "azure-json-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(top) })
	dir := filepath.Join(top, "node")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(top, 0o755); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(dir, "azure.json")
	if err := os.WriteFile(src, []byte(`{"tenantId": "72f988bf-0000-4000-8000-00000000aaaa", "aadClientId": "msi"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	out := readAs(t, uid, gid, src)
	for _, want := range []string{"permission denied", "readable by root only", "stage-azure-json", "--stage-azure-config"} {
		if !strings.Contains(out, want) {
			t.Errorf("reading the root-only file as uid %d: %q lacks %q", uid, out, want)
		}
	}

	staged := filepath.Join(top, "staged")
	if err := os.Mkdir(staged, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(staged, 0, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(staged, 0o2770|os.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(staged, "azure.json")
	if err := StageAzureJSON(src, dst); err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(dst)
	if err != nil {
		t.Fatal(err)
	}
	st := info.Sys().(*syscall.Stat_t)
	if info.Mode().Perm() != 0o440 || st.Gid != gid {
		t.Fatalf("staged file mode %v gid %d, want 0440 and the fsGroup %d", info.Mode().Perm(), st.Gid, gid)
	}
	if out := readAs(t, uid, gid, dst); !strings.Contains(out, "TENANT: 72f988bf-0000-4000-8000-00000000aaaa") {
		t.Fatalf("reading the staged file as uid %d: %s", uid, out)
	}
	// Another uid outside the group still cannot.
	if out := readAs(t, 1000, 1000, dst); !strings.Contains(out, "permission denied") {
		t.Fatalf("uid 1000 read the staged file: %s", out)
	}
	// Garbage is not staged.
	if err := os.WriteFile(src, []byte("not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := StageAzureJSON(src, filepath.Join(staged, "other.json")); err == nil || !strings.Contains(err.Error(), "not valid JSON") {
		t.Fatalf("staging garbage: %v", err)
	}
}
