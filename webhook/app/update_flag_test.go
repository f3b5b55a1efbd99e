package app_test

import "flag"

// The golden files are rewritten by webhook/inject's tests; this package accepts -update too, so that
// `go test ./webhook/... -update` runs every package.
var _ = flag.Bool("update", false, "accepted for `go test ./webhook/... -update`; golden files are in webhook/inject")
