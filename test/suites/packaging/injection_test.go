package packaging

import (
	"strings"
	"testing"
)

// TestInjectionImagePullSecrets: injection.imagePullSecrets reaches the webhook as --image-pull-secrets (which
// the webhook binary accepts), absent by default, and stays apart from imagePullSecrets, the chart's own pods'.
func TestInjectionImagePullSecrets(t *testing.T) {
	check := argsChecker(t, "webhook")
	for _, tc := range []struct {
		name string
		sets []string
		// want: the webhook's --image-pull-secrets argument; "": none.
		want string
		// ownPullSecrets: the webhook pod's own spec.imagePullSecrets, as JSON; "": none.
		ownPullSecrets string
	}{
		{name: "none by default"},
		{name: "one", sets: []string{"injection.imagePullSecrets={acr-pull}"}, want: "--image-pull-secrets=acr-pull"},
		{name: "several, in order", sets: []string{"injection.imagePullSecrets={mirror-pull,registry.example.com}"}, want: "--image-pull-secrets=mirror-pull,registry.example.com"},
		{
			name: "apart from the chart's own pods' pull secrets",
			sets: []string{"imagePullSecrets[0].name=system-pull", "injection.imagePullSecrets={acr-pull}"},
			want: "--image-pull-secrets=acr-pull", ownPullSecrets: `[{"name":"system-pull"}]`,
		},
		{name: "the chart's own only", sets: []string{"imagePullSecrets[0].name=system-pull"}, ownPullSecrets: `[{"name":"system-pull"}]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, err := helmTemplate(t, nil, tc.sets...)
			if err != nil {
				t.Fatalf("helm template: %v\n%s", err, errOut)
			}
			objs := decodeAll(t, out)
			args := argsOf(t, objs, "Deployment", "podidentity-webhook", "webhook")
			var got []string
			for _, a := range args {
				if strings.HasPrefix(a, "--image-pull-secrets") {
					got = append(got, a)
				}
			}
			switch {
			case tc.want == "" && len(got) > 0:
				t.Errorf("webhook args have %v, want no --image-pull-secrets", got)
			case tc.want != "" && (len(got) != 1 || got[0] != tc.want):
				t.Errorf("webhook args have %v, want exactly %s", got, tc.want)
			}
			if err := check(args); err != nil {
				t.Errorf("the webhook refuses its args: %v", err)
			}
			own, found := field(podSpec(t, objs, "Deployment", "podidentity-webhook"), "imagePullSecrets")
			switch {
			case tc.ownPullSecrets == "" && found:
				t.Errorf("webhook pod imagePullSecrets = %s, want none (injection.imagePullSecrets is for injected pods)", asJSON(t, own))
			case tc.ownPullSecrets != "":
				wantJSON(t, "webhook pod imagePullSecrets", own, tc.ownPullSecrets)
			}
		})
	}
}

// TestInjectionImagePullSecretsRefused: the schema takes Secret names only, so the {name: ...} form of
// imagePullSecrets, or a registry, is refused at install with the value's path.
func TestInjectionImagePullSecretsRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"objects instead of names", []string{"--set-json", `injection.imagePullSecrets=[{"name":"acr-pull"}]`}, []string{"/injection/imagePullSecrets/0", "want string"}},
		{"not a Secret name", []string{"--set", "injection.imagePullSecrets={myacr.azurecr.io/podidentity}"}, []string{"/injection/imagePullSecrets/0", "does not match pattern"}},
		{"upper case", []string{"--set", "injection.imagePullSecrets={ACR-Pull}"}, []string{"/injection/imagePullSecrets/0"}},
		{"twice the same", []string{"--set", "injection.imagePullSecrets={acr-pull,acr-pull}"}, []string{"/injection/imagePullSecrets", "are equal"}},
		{"misspelt key", []string{"--set", "injection.imagePullSecret={acr-pull}"}, []string{"imagePullSecret", "additional properties"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, errOut, err := helmTemplateArgs(t, tc.args)
			if err == nil {
				t.Fatalf("helm template accepted %v", tc.args)
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("error lacks %q:\n%s", w, errOut)
				}
			}
		})
	}
}
