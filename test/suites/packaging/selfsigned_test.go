package packaging

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/toolbox/testenv"
	"github.com/podidentity/podidentity/test/toolbox/wait"
	"github.com/podidentity/podidentity/webhook/app"
	"github.com/podidentity/podidentity/webhook/certs"
	"github.com/podidentity/podidentity/webhook/config"
)

const (
	selfSignedNS     = "podidentity-system"
	selfSignedSecret = "podidentity-webhook-cert"
	selfSignedMWC    = "podidentity-webhook"
)

// TestSelfSignedCertificatesEndToEnd is the no-cert-manager mode against a real API server: the webhook
// process generates its CA and serving certificate (webhook/certs), patches the caBundle, and the API server
// then calls it for every pod of an opted-in namespace. The serving certificate's validity is forced down to
// seconds so it is rotated several times while pods are created without pause; not one admission may fail.
// The webhook is the real one (webhook/app) running under the chart's service account and RBAC, so the
// chart's permissions for the webhook's reads are proven too.
func TestSelfSignedCertificatesEndToEnd(t *testing.T) {
	env := testenv.Start(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// This API server has no cert-manager CRDs: the chart's default install stops at its cert-manager objects with
	// the message docs/troubleshooting.md quotes, and certManager.enabled=false installs (server-side dry runs:
	// helm maps every object against the API server, and creates nothing).
	t.Run("without cert-manager", func(t *testing.T) {
		kubeconfig := writeKubeconfig(t, env.Config)
		install := func(sets ...string) (string, error) {
			args := []string{"install", "nocm", chartDir(), "--kubeconfig", kubeconfig, "--namespace", "nocm", "--dry-run=server"}
			for _, s := range sets {
				args = append(args, "--set", s)
			}
			out, errOut, err := run(t, helmBin(t), args...)
			return out + errOut, err
		}
		out, err := install()
		if err == nil || !strings.Contains(out, noCertManagerRefusal) {
			t.Errorf("helm install without cert-manager's CRDs: err %v, want a message containing %q:\n%s", err, noCertManagerRefusal, out)
		}
		t.Logf("helm install without cert-manager:\n%s", out)
		if out, err := install("certManager.enabled=false"); err != nil {
			t.Errorf("helm install --set certManager.enabled=false: %v\n%s", err, out)
		}
	})

	for _, ns := range []*corev1.Namespace{
		{ObjectMeta: metav1.ObjectMeta{Name: selfSignedNS}},
		{ObjectMeta: metav1.ObjectMeta{Name: "apps", Labels: map[string]string{"podidentity.io/injection": "enabled"}}},
	} {
		if err := env.Client.Create(ctx, ns); err != nil {
			t.Fatal(err)
		}
	}
	// What the chart creates without cert-manager, taken from its rendering: the webhook's service account and
	// RBAC (the process below runs as that account, so the chart's least-privilege rules are what is tested)
	// and the empty Secret. The webhook configuration is the chart's but for the URL form, which stands in for
	// the Service (the API server reaches this process on loopback).
	out, errOut, err := helmTemplate(t, []string{"testdata/values/no-cert-manager.yaml"})
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, errOut)
	}
	var chartObjs []*unstructured.Unstructured
	for _, o := range decodeAll(t, out) {
		switch {
		case o.GetKind() == "Secret" && o.GetName() == selfSignedSecret,
			strings.HasPrefix(o.GroupVersionKind().Group, "rbac.") && o.GetName() == "podidentity-webhook",
			o.GetKind() == "ServiceAccount" && o.GetName() == "podidentity-webhook":
			chartObjs = append(chartObjs, o)
		}
	}
	if len(chartObjs) != 6 {
		t.Fatalf("want the Secret, ServiceAccount, ClusterRole(Binding) and Role(Binding) of the webhook, got %d objects", len(chartObjs))
	}
	applyAll(t, env.Config, chartObjs)
	port := freePort(t)
	url := fmt.Sprintf("https://localhost:%d%s", port, config.Path)
	fail, none, ifNeeded := admissionregistrationv1.Fail, admissionregistrationv1.SideEffectClassNone, admissionregistrationv1.IfNeededReinvocationPolicy
	timeout := int32(5)
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: selfSignedMWC},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:                    "pods.podidentity.io",
			AdmissionReviewVersions: []string{"v1"},
			ClientConfig:            admissionregistrationv1.WebhookClientConfig{URL: &url},
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
			}},
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"podidentity.io/injection": "enabled"}},
			FailurePolicy:     &fail, SideEffects: &none, ReinvocationPolicy: &ifNeeded, TimeoutSeconds: &timeout,
		}},
	}
	if err := env.Client.Create(ctx, mwc); err != nil {
		t.Fatal(err)
	}

	// The webhook process: a manager whose webhook server serves the rotated certificate.
	src := certs.New(testr.New(t))
	asWebhook := rest.CopyConfig(env.Config)
	asWebhook.Impersonate = rest.ImpersonationConfig{
		UserName: "system:serviceaccount:" + selfSignedNS + ":podidentity-webhook",
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + selfSignedNS, "system:authenticated"},
	}
	// The impersonation is in force: the account may not read Secrets outside its namespace.
	restricted, err := client.New(asWebhook, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	if err := restricted.List(ctx, &corev1.SecretList{}, client.InNamespace("apps")); !apierrors.IsForbidden(err) {
		t.Fatalf("the webhook's account listed Secrets of another namespace (err %v): RBAC is not least privilege or not in force", err)
	}
	// The real webhook (webhook/app, as podidentity-webhook builds it) with the chart's flags' defaults.
	fs := flag.NewFlagSet("podidentity-webhook", flag.ContinueOnError)
	cfg := config.Bind(fs)
	if err := fs.Parse([]string{"--port=" + strconv.Itoa(port), "--metrics-bind-address=0", "--health-probe-bind-address=0"}); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Complete(); err != nil {
		t.Fatal(err)
	}
	mgr, err := app.New(cfg, asWebhook, "127.0.0.1", testr.New(t), src.TLSOption)
	if err != nil {
		t.Fatal(err)
	}
	opts := certs.Options{
		Enabled: true, SecretName: selfSignedSecret, Namespace: selfSignedNS,
		WebhookConfigurationName: selfSignedMWC, ServiceName: "podidentity-webhook",
		ExtraDNSNames: []string{"localhost"},
		// Forced short validity: the serving certificate lives 20 s and is renewed 15 s before it expires,
		// i.e. every ~5 s; the CA lives a day and is kept, so the caBundle stays valid across rotations.
		CAValidity: 24 * time.Hour, CertValidity: 20 * time.Second, RenewBefore: 15 * time.Second,
		CheckInterval: time.Second, CertDir: t.TempDir(),
	}
	if err := src.AddToManager(mgr, opts); err != nil {
		t.Fatal(err)
	}
	mgrDone := make(chan error, 1)
	go func() { mgrDone <- mgr.Start(ctx) }()
	defer func() {
		cancel()
		if err := <-mgrDone; err != nil {
			t.Errorf("manager: %v", err)
		}
	}()

	// The caBundle is patched with the CA of the Secret.
	var caBundle []byte
	wait.For(t, 60*time.Second, 200*time.Millisecond, "the caBundle to be patched", func() error {
		var got admissionregistrationv1.MutatingWebhookConfiguration
		if err := env.Client.Get(ctx, types.NamespacedName{Name: selfSignedMWC}, &got); err != nil {
			return err
		}
		if caBundle = got.Webhooks[0].ClientConfig.CABundle; len(caBundle) == 0 {
			return errors.New("the caBundle is empty")
		}
		return src.Ready(nil)
	})
	var secret corev1.Secret
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: selfSignedNS, Name: selfSignedSecret}, &secret); err != nil {
		t.Fatal(err)
	}
	if string(secret.Data["ca.crt"]) != string(caBundle) {
		t.Fatal("the caBundle is not the CA kept in the Secret")
	}
	checkServingCert(t, secret.Data["tls.crt"], caBundle, "podidentity-webhook."+selfSignedNS+".svc")

	// Pods are created back to back until the serving certificate has been replaced at least three times.
	seen := map[string]bool{string(secret.Data["tls.crt"]): true}
	created, deadline := 0, time.Now().Add(2*time.Minute)
	for len(seen) < 4 {
		if time.Now().After(deadline) {
			t.Fatalf("the serving certificate was rotated %d times in 2 minutes, want 3 (validity 20s, renewed 15s before expiry)", len(seen)-1)
		}
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "p" + strconv.Itoa(created), Namespace: "apps"},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}},
		}
		if err := env.Client.Create(ctx, pod); err != nil {
			t.Fatalf("admission failed after %d pods and %d rotations: %v", created, len(seen)-1, err)
		}
		if len(pod.Spec.InitContainers) < 2 || pod.Spec.InitContainers[0].Name != contract.InitContainerName ||
			pod.Spec.InitContainers[1].Name != contract.SidecarContainerName {
			t.Fatalf("pod %s was admitted without injection: init containers %v", pod.Name, pod.Spec.InitContainers)
		}
		created++
		if err := env.Client.Get(ctx, types.NamespacedName{Namespace: selfSignedNS, Name: selfSignedSecret}, &secret); err != nil {
			t.Fatal(err)
		}
		if !seen[string(secret.Data["tls.crt"])] {
			seen[string(secret.Data["tls.crt"])] = true
			checkServingCert(t, secret.Data["tls.crt"], caBundle, "localhost")
		}
		time.Sleep(100 * time.Millisecond)
	}
	var got admissionregistrationv1.MutatingWebhookConfiguration
	if err := env.Client.Get(ctx, types.NamespacedName{Name: selfSignedMWC}, &got); err != nil {
		t.Fatal(err)
	}
	if string(got.Webhooks[0].ClientConfig.CABundle) != string(caBundle) {
		t.Error("the caBundle changed although the CA did not expire")
	}
	t.Logf("%d pods admitted through %d serving-certificate rotations, none failed", created, len(seen)-1)

	// In init mode an opted-in namespace that enforces Pod Security baseline or restricted refuses every injected
	// pod, for our containers only (the app's is restricted-clean): the messages docs/troubleshooting.md quotes.
	for _, level := range []string{"baseline", "restricted"} {
		ns := "apps-" + level
		if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{
			"podidentity.io/injection": "enabled", "pod-security.kubernetes.io/enforce": level,
		}}}); err != nil {
			t.Fatal(err)
		}
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "shop-1", Namespace: ns},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app", SecurityContext: &corev1.SecurityContext{
				RunAsNonRoot: ptr(true), RunAsUser: ptr(int64(1000)), AllowPrivilegeEscalation: ptr(false),
				Capabilities:   &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			}}}},
		}
		err := env.Client.Create(ctx, pod)
		if err == nil {
			t.Errorf("an injected pod (init mode) was admitted in a namespace enforcing Pod Security %s", level)
			continue
		}
		t.Logf("Pod Security %s: %v", level, err)
		for _, want := range []string{podSecurityRefusal, `"` + level + `:latest"`, `"podidentity-init"`, `"NET_ADMIN"`} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("Pod Security %s refusal lacks %q (docs/troubleshooting.md quotes it): %v", level, want, err)
			}
		}
		if strings.Contains(err.Error(), `"app"`) {
			t.Errorf("Pod Security %s refusal names the app's container, which is restricted-clean: %v", level, err)
		}
	}
}

// Foreign messages docs/troubleshooting.md quotes in its Install section, checked against what helm and the API
// server say.
const (
	noCertManagerRefusal = `no matches for kind "Certificate" in version "cert-manager.io/v1"`
	podSecurityRefusal   = "violates PodSecurity"
)

func ptr[T any](v T) *T { return &v }

// checkServingCert verifies the PEM certificate chains to the CA and names dnsName.
func checkServingCert(t *testing.T, certPEM, caPEM []byte, dnsName string) {
	t.Helper()
	block, _ := pem.Decode(certPEM)
	if block == nil {
		t.Fatal("the Secret's tls.crt is not PEM")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("the caBundle holds no certificate")
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: dnsName}); err != nil {
		t.Errorf("serving certificate does not verify for %s against the caBundle: %v", dnsName, err)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
