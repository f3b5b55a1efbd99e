package controller

import (
	"fmt"
	"testing"
	"time"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/test/emulators/arm"
)

// TestStartIsNotDebounced: the objects a starting assigner finds (its caches' initial lists) get their first
// pass without the debounce, so a restart or a failover does not wait for it. The debounce here is an hour:
// with it applied to the start-up, nothing would be attached within the test's timeout.
func TestStartIsNotDebounced(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	srv := arm.New(t, arm.Options{Latency: 50 * time.Millisecond})
	ss := ssID("pool1")
	srv.AddVMSS(ss, false)
	mkNode(t, c, "ss1-0", instanceOf(ss, 0))
	mkNode(t, c, "ss1-1", instanceOf(ss, 1))
	ns := "apps"
	mkNamespace(t, c, ns)
	mkIdentity(t, c, ns, "a", uami("a"))
	mkIdentity(t, c, ns, "b", uami("b"))
	mkBinding(t, c, ns, "bind-a", "a", "sel-a")
	mkBinding(t, c, ns, "bind-b", "b", "sel-b")
	mkPod(t, c, ns, "p1", "ss1-0", "sel-a", nil)
	mkPod(t, c, ns, "p2", "ss1-1", "sel-b", nil)

	opts := testOptions()
	opts.Debounce = time.Hour
	startAssigner(t, env, armClient(srv), opts)
	eventually(t, time.Minute, "both identities attached and both objects Assigned", func() error {
		if err := azureHas(srv, ss, false, uami("a"), uami("b")); err != nil {
			return err
		}
		got, err := assignedStates(c)
		if err != nil {
			return err
		}
		if len(got) != 2 {
			return fmt.Errorf("AzureAssignedIdentities = %v, want 2", got)
		}
		for k, s := range got {
			if s != aadv1.AssignedIDAssigned {
				return fmt.Errorf("%s is %s", k, s)
			}
		}
		return nil
	})
	// The initial lists of the nodes and the pods both name the scale set, and the bindings' and
	// identities' initial lists enumerate nothing more: one pass, one PATCH.
	if w := srv.Counts().Writes; w != 1 {
		t.Fatalf("ARM writes = %d, want 1 (one pass for the scale set)", w)
	}
}
