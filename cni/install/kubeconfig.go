package install

import (
	"errors"
	"fmt"
	"net/url"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Kubeconfig renders the plugin's kubeconfig: the API server's address and CA, and the node agent's service
// account token, inline (the plugin runs on the host, where the agent's mounted files are not). The token
// changes when the kubelet rotates it; the installer rewrites the file then.
func Kubeconfig(server string, caPEM []byte, token string) ([]byte, error) {
	u, err := url.Parse(server)
	switch {
	case err != nil || u.Scheme != "https" || u.Host == "":
		return nil, fmt.Errorf("the API server address %q is not an https URL: the node agent reads it from the in-cluster "+
			"configuration (KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT)", server)
	case len(caPEM) == 0:
		return nil, errors.New("the API server's CA is empty: mount the service account's ca.crt (automountServiceAccountToken: true)")
	case token == "":
		return nil, errors.New("the service account token is empty: mount the service account token (automountServiceAccountToken: true)")
	}
	const name = "podidentity-cni"
	cfg := clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{name: {Server: server, CertificateAuthorityData: caPEM}},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{name: {Token: token}},
		Contexts:       map[string]*clientcmdapi.Context{name: {Cluster: name, AuthInfo: name}},
		CurrentContext: name,
	}
	return clientcmd.Write(cfg)
}
