package app

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/podidentity/podidentity/assigner/upgrade"
	"github.com/podidentity/podidentity/test/toolbox/testenv"
)

func kubeconfigFor(t *testing.T, env *testenv.Env) string {
	t.Helper()
	user, err := env.Environment.AddUser(envtest.User{Name: "assigner", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestStartupUpgradeInManagedMode starts the assigner in managed mode and sees the start-up upgrade recorded.
func TestStartupUpgradeInManagedMode(t *testing.T) {
	env := testenv.Start(t, nil)
	f, err := ParseFlags([]string{"--managed", "--leader-elect=false", "--kubeconfig", kubeconfigFor(t, env),
		"--namespace", "default", "--metrics-bind-address=0", "--health-probe-bind-address=0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, f) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("assigner: %v", err)
		}
	}()
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		var cm corev1.ConfigMap
		if err := env.Client.Get(ctx, types.NamespacedName{Namespace: "default", Name: upgrade.ConfigMapName}, &cm); err != nil {
			return false, nil
		}
		return cm.Data[upgrade.DoneKey] == upgrade.Version, nil
	})
	if err != nil {
		t.Fatalf("start-up upgrade not recorded: %v", err)
	}
}

// TestUpgradeOnlyRunsWithoutAzure runs the one-shot command through Run: it records the upgrade in the
// ConfigMap and returns without reading any Azure configuration (the azure.json it is given does not exist).
func TestUpgradeOnlyRunsWithoutAzure(t *testing.T) {
	env := testenv.Start(t, nil)
	dir := t.TempDir()
	f, err := ParseFlags([]string{"--upgrade-crd-fields-only", "--kubeconfig", kubeconfigFor(t, env), "--namespace", "default",
		"--azure-config", filepath.Join(dir, "missing-azure.json")})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := Run(ctx, f); err != nil {
		t.Fatalf("one-shot upgrade: %v", err)
	}
	var cm corev1.ConfigMap
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: "default", Name: upgrade.ConfigMapName}, &cm); err != nil {
		t.Fatalf("upgrade not recorded: %v", err)
	}
	if cm.Data[upgrade.DoneKey] != upgrade.Version {
		t.Fatalf("ConfigMap data %v", cm.Data)
	}
}

// TestFederatedOnlyStartsWithoutAzure: with --federated-only the assigner (a real process, as main runs it,
// without any AZURE_* variable) reads no Azure configuration, though the azure.json it is given does not exist:
// it does its start-up work, says so, serves, and stops cleanly on SIGTERM. Without the flag the same start
// fails, naming the missing file.
func TestFederatedOnlyStartsWithoutAzure(t *testing.T) {
	env := testenv.Start(t, nil)
	missing := filepath.Join(t.TempDir(), "missing-azure.json")
	args := []string{"--leader-elect=false", "--kubeconfig", kubeconfigFor(t, env), "--namespace", "default",
		"--metrics-bind-address=0", "--health-probe-bind-address=0", "--azure-config", missing}

	without := startAssignerProcess(t, "without-flag", "", args...)
	select {
	case err := <-without.done:
		without.done <- err
		if err == nil || !strings.Contains(without.out.String(), missing) {
			t.Fatalf("without --federated-only: exit %v, output %s; want a failure naming %s", err, without.out.String(), missing)
		}
	case <-time.After(time.Minute):
		t.Fatal("without --federated-only the assigner did not stop")
	}

	p := startAssignerProcess(t, "federated-only", "", append(args, "--federated-only")...)
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		select {
		case err := <-p.done:
			p.done <- err
			return false, fmt.Errorf("the assigner stopped: %w\n%s", err, p.out.String())
		default:
		}
		var cm corev1.ConfigMap
		if err := env.Client.Get(ctx, types.NamespacedName{Namespace: "default", Name: upgrade.ConfigMapName}, &cm); err != nil {
			return false, nil
		}
		return cm.Data[upgrade.DoneKey] == upgrade.Version && p.logged("federated-only: no Azure credentials are read"), nil
	})
	if err != nil {
		t.Fatalf("--federated-only did not start: %v", err)
	}
	p.stop(t)
}
