package redirect

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// stage is where a netlink error happened; the same errno means different things at different stages.
type stage string

const (
	stageConnect stage = "opening a netlink socket"
	stageRead    stage = "reading the nftables ruleset"
	stageWrite   stage = "writing the nftables ruleset"
)

// Reasons for a failure, as documented in init/README.md. Each says what to do.
var (
	// ErrNoNetAdmin: the kernel refused nftables access; the process lacks CAP_NET_ADMIN in the namespace.
	ErrNoNetAdmin = errors.New("permission denied: podidentity-init lacks CAP_NET_ADMIN in the pod's network " +
		"namespace; give the init container securityContext.capabilities.add: [\"NET_ADMIN\"] (the webhook " +
		"injects it: check that no policy or mutating webhook removed it)")
	// ErrNoNfnetlink: the kernel has no netfilter netlink interface at all.
	ErrNoNfnetlink = errors.New("the kernel has no netfilter netlink support (CONFIG_NETFILTER_NETLINK): " +
		"the node's kernel cannot run nftables; run identity-bearing pods on nodes whose kernel has nf_tables")
	// ErrNoNfTables: netfilter netlink is there but nf_tables, or an nf_tables feature the rules use (nat
	// chains, ct, reject), is not.
	ErrNoNfTables = errors.New("the kernel lacks nf_tables or one of the features the rules need (nf_tables, " +
		"nft_chain_nat/nf_nat, nft_ct, nft_reject_inet): load these modules on the node (modprobe) or use " +
		"nodes whose kernel has them")
)

// explain wraps err with the documented reason when the errno identifies one, so the message says what to do.
// The original error stays in the chain.
func explain(at stage, err error) error {
	var reason error
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		reason = ErrNoNetAdmin
	case errors.Is(err, unix.EPROTONOSUPPORT), errors.Is(err, unix.EAFNOSUPPORT):
		reason = ErrNoNfnetlink
	case at == stageRead && (errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP)):
		// A request to a netfilter subsystem the kernel does not have is refused with EINVAL (EOPNOTSUPP in
		// a batch).
		reason = ErrNoNfTables
	case at == stageWrite && (errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EOPNOTSUPP)):
		// The kernel answers ENOENT for a chain type or expression it has no module for.
		reason = ErrNoNfTables
	}
	if reason == nil {
		return fmt.Errorf("%s: %w", at, err)
	}
	return fmt.Errorf("%s: %w (%w)", at, reason, err)
}
