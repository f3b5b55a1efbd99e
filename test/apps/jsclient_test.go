package apps

import (
	"os/exec"
	"path/filepath"
	"testing"
)

// TestJSClientUnits runs the JavaScript client's own unit tests (jsclient/client.test.js, node:test): its
// configuration and token decoding, the same table as the Go client's. They need no node_modules.
func TestJSClientUnits(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node not found: install Node.js 20 (apt-get install -y nodejs) to test the JavaScript client")
	}
	out, err := exec.Command(node, "--test", filepath.Join("jsclient", "client.test.js")).CombinedOutput()
	if err != nil {
		t.Fatalf("node --test jsclient/client.test.js: %v\n%s", err, out)
	}
}
