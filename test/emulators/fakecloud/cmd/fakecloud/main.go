// Command fakecloud runs the local cluster's emulated Azure (package fakecloud) until SIGTERM.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/podidentity/podidentity/test/emulators/fakecloud"
	"github.com/podidentity/podidentity/test/emulators/imds"
)

func main() {
	var cfg fakecloud.Config
	var dnsNames, dnsAnswer, appID, appSecret string
	flag.StringVar(&cfg.IMDSAddr, "imds-address", "169.254.169.254:80", "listen address of the node's IMDS")
	flag.StringVar(&cfg.AdminAddr, "admin-address", "127.0.0.1:18170", "listen address of the IMDS admin API")
	flag.StringVar(&cfg.ARMAddr, "arm-address", "", "listen address of ARM (HTTPS)")
	flag.StringVar(&cfg.ARMPublicURL, "arm-public-url", "", "URL clients use for ARM (default https://<arm-address>)")
	flag.StringVar(&cfg.AADAddr, "aad-address", "", "listen address of Azure AD (HTTPS)")
	flag.StringVar(&cfg.CertFile, "cert", "", "PEM serving certificate of ARM and Azure AD")
	flag.StringVar(&cfg.KeyFile, "key", "", "PEM key of --cert")
	flag.StringVar(&cfg.DNSAddr, "dns-address", "", "UDP listen address of the DNS server (empty: none)")
	flag.StringVar(&dnsNames, "dns-names", "login.microsoftonline.com", "comma-separated names the DNS server answers")
	flag.StringVar(&dnsAnswer, "dns-answer", "", "IPv4 address the DNS server answers them with")
	flag.StringVar(&cfg.TenantID, "tenant-id", "", "tenant of the emulated Azure AD and of IMDS tokens")
	flag.StringVar(&cfg.VMSSID, "vmss-id", "", "ARM id of the node's scale set")
	flag.StringVar(&cfg.InstanceID, "instance-id", "", "ARM id of the node's scale set instance")
	flag.StringVar(&appID, "app-client-id", "", "client id of the service principal Azure AD knows (the assigner's)")
	flag.StringVar(&appSecret, "app-secret", "", "its client secret")
	flag.StringVar(&cfg.IssuerCAFile, "issuer-ca-file", "", "PEM CA bundle Azure AD trusts when it fetches a service account issuer's discovery document and keys (the cluster's API server CA), for federated identities")
	flag.Parse()
	if cfg.ARMAddr == "" || cfg.AADAddr == "" || cfg.CertFile == "" || cfg.VMSSID == "" || cfg.TenantID == "" {
		fmt.Fprintln(os.Stderr, "fakecloud: --arm-address, --aad-address, --cert, --key, --tenant-id and --vmss-id are required")
		os.Exit(2)
	}
	if cfg.ARMPublicURL == "" {
		cfg.ARMPublicURL = "https://" + cfg.ARMAddr
	}
	if cfg.DNSAddr != "" {
		cfg.DNSNames = strings.Split(dnsNames, ",")
		if cfg.DNSAnswer = net.ParseIP(dnsAnswer); cfg.DNSAnswer == nil {
			fmt.Fprintln(os.Stderr, "fakecloud: --dns-answer must be an IPv4 address")
			os.Exit(2)
		}
	}
	if appID != "" {
		cfg.Apps = []imds.App{{TenantID: cfg.TenantID, ClientID: appID, ObjectID: appID, Secret: appSecret}}
	}
	cfg.Log = os.Stdout
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := fakecloud.Run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "fakecloud:", err)
		os.Exit(1)
	}
}
