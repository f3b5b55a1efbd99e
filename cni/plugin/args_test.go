package plugin_test

import (
	"strings"
	"testing"

	"github.com/podidentity/podidentity/cni/plugin"
)

func TestParseArgs(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    string
		named   bool
		ns, pod string
		uid     string
		mention string // error fragment; "" for success
	}{
		{name: "containerd's CNI_ARGS", named: true, ns: "apps", pod: "web-0", uid: "0c6b8d2e-1f2a-4b3c-9d4e-5f6a7b8c9d0e",
			args: "K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=0c6b8d2e-1f2a-4b3c-9d4e-5f6a7b8c9d0e;IgnoreUnknown=1;K8S_POD_NAMESPACE=apps;K8S_POD_NAME=web-0"},
		{name: "without the UID (older runtimes)", named: true, ns: "apps", pod: "web-0",
			args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=apps;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc"},
		{name: "keys for other plugins, without IgnoreUnknown", named: true, ns: "apps", pod: "web-0",
			args: "K8S_POD_NAMESPACE=apps;K8S_POD_NAME=web-0;MAC=00:11:22:33:44:55;IP=10.0.0.9"},
		{name: "keys for other plugins, IgnoreUnknown=0", named: true, ns: "apps", pod: "web-0",
			args: "IgnoreUnknown=0;K8S_POD_NAMESPACE=apps;K8S_POD_NAME=web-0;MAC=00:11:22:33:44:55", mention: "unknown args"},
		{name: "no CNI_ARGS: not a pod", args: "", named: false},
		{name: "no pod keys: not a pod", args: "IgnoreUnknown=1;MAC=00:11:22:33:44:55", named: false},
		{name: "namespace without name", args: "K8S_POD_NAMESPACE=apps", mention: "only in part"},
		{name: "name without namespace", args: "K8S_POD_NAME=web-0", mention: "only in part"},
		{name: "a pair without =", args: "K8S_POD_NAMESPACE=apps;K8S_POD_NAME", mention: "cannot be parsed"},
		{name: "a bad boolean", args: "IgnoreUnknown=perhaps;K8S_POD_NAMESPACE=apps;K8S_POD_NAME=web-0", mention: "cannot be parsed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args, named, err := plugin.ParseArgs(tc.args)
			if tc.mention != "" {
				if err == nil || !strings.Contains(err.Error(), tc.mention) {
					t.Fatalf("ParseArgs = %v, want an error saying %q", err, tc.mention)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if named != tc.named || string(args.K8S_POD_NAMESPACE) != tc.ns || string(args.K8S_POD_NAME) != tc.pod || string(args.K8S_POD_UID) != tc.uid {
				t.Errorf("ParseArgs = %+v named %v; want %s/%s uid %q named %v", args, named, tc.ns, tc.pod, tc.uid, tc.named)
			}
		})
	}
}
