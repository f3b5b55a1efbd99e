// Package pluginconf is the podidentity-cni plugin's configuration: its entry in the node's conflist. The
// plugin parses it from stdin; the node agent renders it into the conflist. One definition of the field names
// for both.
package pluginconf

import (
	"encoding/json"
	"fmt"
	"net/netip"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/internal/imdspolicy"
	"github.com/podidentity/podidentity/internal/redirect"
)

// PluginType is the plugin's "type": the binary's name in the CNI bin dir.
const PluginType = "podidentity-cni"

// Settings are the plugin's own fields of its conflist entry.
type Settings struct {
	// Kubeconfig is the file the node agent writes with its service account's token (required).
	Kubeconfig string `json:"kubeconfig"`
	// IMDSAddress, IMDSPort and SidecarPort are what the redirect and the fence use (defaults: internal/contract).
	IMDSAddress string `json:"imdsAddress,omitempty"`
	IMDSPort    uint16 `json:"imdsPort,omitempty"`
	SidecarPort uint16 `json:"sidecarPort,omitempty"`
	// SidecarImage is the image the webhook injects as podidentity-sidecar (required): only a pod whose
	// podidentity-sidecar container has exactly this image gets the redirect.
	SidecarImage string `json:"sidecarImage"`
	// InjectionLabel opts a namespace in with the value "enabled" (default podidentity.io/injection).
	InjectionLabel string `json:"injectionLabel,omitempty"`
	// ExemptNamespaces are never touched, and their pods start without any API call.
	ExemptNamespaces []string `json:"exemptNamespaces,omitempty"`
	// FenceScope is "all" (default) or "opted-in".
	FenceScope string `json:"fenceScope,omitempty"`
	// FailureDir, when set, receives one small file per failed ADD, which the node agent counts
	// (podidentity_node_cni_add_failures_total) and deletes.
	FailureDir string `json:"failureDir,omitempty"`
}

// Entry is the plugin's entry as the node agent writes it into the conflist's "plugins".
type Entry struct {
	Type string `json:"type"`
	Settings
}

// NewEntry is the conflist entry for s.
func NewEntry(s Settings) Entry { return Entry{Type: PluginType, Settings: s} }

// Config is what the plugin reads on stdin: the standard fields (cniVersion, name, prevResult) and its own.
type Config struct {
	types.PluginConf
	Settings
}

// Parse reads and validates the plugin's stdin and parses prevResult (nil when there is none).
func Parse(stdin []byte) (*Config, error) {
	var c Config
	if err := json.Unmarshal(stdin, &c); err != nil {
		return nil, fmt.Errorf("the plugin configuration is not valid JSON (%w): fix the podidentity-cni entry of the node's CNI conflist", err)
	}
	if err := version.ParsePrevResult(&c.PluginConf); err != nil {
		return nil, fmt.Errorf("the prevResult the runtime passed cannot be parsed (%w): the primary CNI plugin's result is not valid for cniVersion %q", err, c.CNIVersion)
	}
	if err := c.Settings.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Validate says which field is wrong, and how to fix it.
func (s Settings) Validate() error {
	if s.Kubeconfig == "" {
		return fmt.Errorf(`the podidentity-cni entry has no "kubeconfig": the podidentity-node DaemonSet writes the entry with it; reinstall the chart or fix the conflist`)
	}
	if _, err := s.Policy(); err != nil {
		return fmt.Errorf("the podidentity-cni entry: %w", err)
	}
	if _, err := s.Redirect(); err != nil {
		return fmt.Errorf("the podidentity-cni entry: %w", err)
	}
	return nil
}

// Policy is the decision's configuration, with defaults filled in.
func (s Settings) Policy() (imdspolicy.Policy, error) {
	scope, err := imdspolicy.ParseScope(s.FenceScope)
	if err != nil {
		return imdspolicy.Policy{}, fmt.Errorf(`"fenceScope": %w`, err)
	}
	p := imdspolicy.Policy{
		InjectionLabel:   s.InjectionLabel,
		SidecarImage:     s.SidecarImage,
		ExemptNamespaces: s.ExemptNamespaces,
		Scope:            scope,
	}
	if p.InjectionLabel == "" {
		p.InjectionLabel = contract.NamespaceInjectionLabel
	}
	if p.SidecarImage == "" {
		return imdspolicy.Policy{}, fmt.Errorf(`"sidecarImage" is empty: set it to the image the webhook injects as %s (the webhook's --sidecar-image)`,
			contract.SidecarContainerName)
	}
	return p, p.Validate()
}

// Redirect is the ruleset's configuration (no exemption: the node agent adds the sidecar's), with defaults
// filled in.
func (s Settings) Redirect() (redirect.Config, error) {
	cfg := redirect.DefaultConfig()
	if s.IMDSAddress != "" {
		addr, err := netip.ParseAddr(s.IMDSAddress)
		if err != nil {
			return redirect.Config{}, fmt.Errorf(`"imdsAddress" %q is not an IP address (the default is %s)`, s.IMDSAddress, contract.IMDSAddress)
		}
		cfg.IMDSAddress = addr
	}
	if s.IMDSPort != 0 {
		cfg.IMDSPort = s.IMDSPort
	}
	if s.SidecarPort != 0 {
		cfg.SidecarPort = s.SidecarPort
	}
	return cfg, cfg.Validate()
}
