// Package cosign signs images and attaches SBOMs the way cosign does, so that `cosign verify --key` and
// `cosign download sbom` read what this project pushes, with keys that work offline (no Fulcio, no Rekor):
//
//   - a signature is a "simple signing" payload (github.com/containers/image's format, as sigstore's
//     payload package writes it) naming the repository and the signed manifest digest, signed with an ECDSA
//     P-256 key over SHA-256; it is stored as a layer of an image tagged sha256-<hex>.sig in the same
//     repository, the base64 signature in the layer's dev.cosignproject.cosign/signature annotation;
//   - an SBOM is the only layer of an image tagged sha256-<hex>.sbom, of the SBOM's own media type.
//
// Keys are PEM: the private key PKCS#8, encrypted (sigstore's scrypt + secretbox format, as cosign's own keys)
// when a password is given; the public key PKIX.
package cosign

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/payload"
)

const (
	// SimpleSigningMediaType is the media type of a signature layer.
	SimpleSigningMediaType types.MediaType = "application/vnd.dev.cosign.simplesigning.v1+json"
	// SignatureAnnotation holds a layer's base64 signature.
	SignatureAnnotation = "dev.cosignproject.cosign/signature"
	// SignatureSuffix and SBOMSuffix end the tags of signatures and SBOMs.
	SignatureSuffix = "sig"
	SBOMSuffix      = "sbom"
)

// Tag is where cosign keeps an artifact of the manifest with digest d in repository repo:
// <repo>:sha256-<hex>.<suffix>.
func Tag(repo name.Repository, d v1.Hash, suffix string) name.Tag {
	return repo.Tag(d.Algorithm + "-" + d.Hex + "." + suffix)
}

// GenerateKeyPair makes an ECDSA P-256 key pair: the private key PEM (encrypted with password unless it is
// empty) and the public key PEM.
func GenerateKeyPair(password []byte) (privPEM, pubPEM []byte, err error) {
	var pf cryptoutils.PassFunc
	if len(password) > 0 {
		pf = cryptoutils.StaticPasswordFunc(password)
	}
	return cryptoutils.GeneratePEMEncodedECDSAKeyPair(elliptic.P256(), pf)
}

// LoadSigner reads a private key PEM (password for an encrypted one).
func LoadSigner(privPEM, password []byte) (signature.SignerVerifier, error) {
	var pf cryptoutils.PassFunc
	if len(password) > 0 {
		pf = cryptoutils.StaticPasswordFunc(password)
	}
	key, err := cryptoutils.UnmarshalPEMToPrivateKey(privPEM, pf)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w (an encrypted key needs its password in COSIGN_PASSWORD)", err)
	}
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("signing key: %T, want an ECDSA key (make one with `imagebuild keygen`)", key)
	}
	return signature.LoadECDSASignerVerifier(ec, crypto.SHA256)
}

// PublicKeyPEM is the public key PEM of a private key PEM.
func PublicKeyPEM(privPEM, password []byte) ([]byte, error) {
	signer, err := LoadSigner(privPEM, password)
	if err != nil {
		return nil, err
	}
	pub, err := signer.PublicKey()
	if err != nil {
		return nil, err
	}
	return cryptoutils.MarshalPublicKeyToPEM(pub)
}

// LoadVerifier reads a public key PEM.
func LoadVerifier(pubPEM []byte) (signature.Verifier, error) {
	key, err := cryptoutils.UnmarshalPEMToPublicKey(pubPEM)
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	return signature.LoadVerifier(key, crypto.SHA256)
}

// Payload is the simple signing payload for the manifest d.
func Payload(d name.Digest) ([]byte, error) {
	return json.Marshal(payload.Cosign{Image: d})
}

// SignatureImage signs d and returns the image to push to Tag(d's repository, d's digest, SignatureSuffix).
func SignatureImage(signer signature.Signer, d name.Digest) (v1.Image, error) {
	p, err := Payload(d)
	if err != nil {
		return nil, err
	}
	sig, err := signer.SignMessage(bytes.NewReader(p))
	if err != nil {
		return nil, fmt.Errorf("signing %s: %w", d, err)
	}
	return artifact(p, SimpleSigningMediaType, map[string]string{SignatureAnnotation: base64.StdEncoding.EncodeToString(sig)})
}

// SBOMImage is the image that carries an SBOM document of the given media type.
func SBOMImage(doc []byte, mediaType string) (v1.Image, error) {
	return artifact(doc, types.MediaType(mediaType), nil)
}

func artifact(data []byte, mt types.MediaType, annotations map[string]string) (v1.Image, error) {
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	return mutate.Append(base, mutate.Addendum{Layer: static.NewLayer(data, mt), Annotations: annotations})
}

// Verify says why no signature in sigImage (the image at d's signature tag) is a valid signature of d by the
// verifier's key (nil when one is).
func Verify(sigImage v1.Image, verifier signature.Verifier, d name.Digest) error {
	m, err := sigImage.Manifest()
	if err != nil {
		return err
	}
	var reasons []string
	for _, desc := range m.Layers {
		if desc.MediaType != SimpleSigningMediaType {
			continue
		}
		err := verifyLayer(sigImage, desc, verifier, d)
		if err == nil {
			return nil
		}
		reasons = append(reasons, err.Error())
	}
	if len(reasons) == 0 {
		return fmt.Errorf("%s: no signature", d)
	}
	return fmt.Errorf("%s: no valid signature: %s", d, strings.Join(reasons, "; "))
}

func verifyLayer(img v1.Image, desc v1.Descriptor, verifier signature.Verifier, d name.Digest) error {
	sig, err := base64.StdEncoding.DecodeString(desc.Annotations[SignatureAnnotation])
	if err != nil || len(sig) == 0 {
		return errors.New("a layer without a signature annotation")
	}
	layer, err := img.LayerByDigest(desc.Digest)
	if err != nil {
		return err
	}
	rc, err := layer.Compressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	p, err := io.ReadAll(rc)
	if err != nil {
		return err
	}
	if err := verifier.VerifySignature(bytes.NewReader(sig), bytes.NewReader(p)); err != nil {
		return fmt.Errorf("signature not made by this key: %w", err)
	}
	var signed payload.Cosign
	if err := json.Unmarshal(p, &signed); err != nil {
		return fmt.Errorf("payload: %w", err)
	}
	if signed.Image.DigestStr() != d.DigestStr() {
		return fmt.Errorf("signs %s, not %s", signed.Image.DigestStr(), d.DigestStr())
	}
	if signed.ClaimedIdentity != d.Repository.Name() {
		return fmt.Errorf("signs %s for repository %s, not %s", d.DigestStr(), signed.ClaimedIdentity, d.Repository.Name())
	}
	return nil
}
