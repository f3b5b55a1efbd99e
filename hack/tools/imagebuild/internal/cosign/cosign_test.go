package cosign

import (
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

func digest(t *testing.T, repo, hexChar string) name.Digest {
	t.Helper()
	d, err := name.NewDigest(repo + "@sha256:" + strings.Repeat(hexChar, 64))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestTag(t *testing.T) {
	repo, _ := name.NewRepository("registry.example:5000/podidentity/podidentity-webhook")
	h := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("a", 64)}
	if got, want := Tag(repo, h, SignatureSuffix).String(), "registry.example:5000/podidentity/podidentity-webhook:sha256-"+strings.Repeat("a", 64)+".sig"; got != want {
		t.Errorf("Tag = %s, want %s", got, want)
	}
}

func TestSignVerify(t *testing.T) {
	for _, password := range []string{"", "s3cret"} {
		priv, pub, err := GenerateKeyPair([]byte(password))
		if err != nil {
			t.Fatal(err)
		}
		if password != "" && !strings.Contains(string(priv), "ENCRYPTED") {
			t.Errorf("a key with a password is not encrypted:\n%s", priv)
		}
		if password != "" {
			if _, err := LoadSigner(priv, nil); err == nil {
				t.Error("an encrypted key loaded without its password")
			}
		}
		signer, err := LoadSigner(priv, []byte(password))
		if err != nil {
			t.Fatal(err)
		}
		if derived, err := PublicKeyPEM(priv, []byte(password)); err != nil || string(derived) != string(pub) {
			t.Errorf("PublicKeyPEM = %s, %v; want the generated %s", derived, err, pub)
		}
		verifier, err := LoadVerifier(pub)
		if err != nil {
			t.Fatal(err)
		}
		_, otherPub, _ := GenerateKeyPair(nil)
		otherVerifier, _ := LoadVerifier(otherPub)

		d := digest(t, "registry.example/podidentity/podidentity-init", "a")
		sigImg, err := SignatureImage(signer, d)
		if err != nil {
			t.Fatal(err)
		}
		if err := Verify(sigImg, verifier, d); err != nil {
			t.Errorf("a good signature: %v", err)
		}
		if err := Verify(sigImg, otherVerifier, d); err == nil {
			t.Error("verified with another key")
		}
		if err := Verify(sigImg, verifier, digest(t, "registry.example/podidentity/podidentity-init", "b")); err == nil {
			t.Error("verified for another digest")
		}
		if err := Verify(sigImg, verifier, digest(t, "registry.example/podidentity/podidentity-webhook", "a")); err == nil {
			t.Error("verified for another repository")
		}

		// Another signature beside a valid one (cosign appends): still valid; a tampered one alone: not.
		otherPriv, _, _ := GenerateKeyPair(nil)
		otherSigner, _ := LoadSigner(otherPriv, nil)
		foreign, _ := SignatureImage(otherSigner, d)
		foreignLayers, _ := foreign.Manifest()
		fl, _ := foreign.LayerByDigest(foreignLayers.Layers[0].Digest)
		both, err := mutate.Append(sigImg, mutate.Addendum{Layer: fl, Annotations: foreignLayers.Layers[0].Annotations})
		if err != nil {
			t.Fatal(err)
		}
		if err := Verify(both, verifier, d); err != nil {
			t.Errorf("a valid signature beside a foreign one: %v", err)
		}
		if err := Verify(foreign, verifier, d); err == nil {
			t.Error("a foreign signature alone verified")
		}
	}
}

func TestVerifyWithoutSignature(t *testing.T) {
	_, pub, _ := GenerateKeyPair(nil)
	verifier, _ := LoadVerifier(pub)
	sbom, err := SBOMImage([]byte(`{}`), "application/vnd.cyclonedx+json")
	if err != nil {
		t.Fatal(err)
	}
	if err := Verify(sbom, verifier, digest(t, "r.example/x", "a")); err == nil || !strings.Contains(err.Error(), "no signature") {
		t.Errorf("an image without signature layers: %v", err)
	}
}

func TestPayloadIsCosignSimpleSigning(t *testing.T) {
	p, err := Payload(digest(t, "r.example/podidentity/x", "a"))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"critical":{"identity":{"docker-reference":"r.example/podidentity/x"},"image":{"docker-manifest-digest":"sha256:` + strings.Repeat("a", 64) + `"},"type":"cosign container image signature"},"optional":null}`
	if string(p) != want {
		t.Errorf("payload\n%s\nwant\n%s", p, want)
	}
}
